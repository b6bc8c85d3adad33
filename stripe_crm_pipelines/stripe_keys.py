"""The CRM's Stripe keys: which ``stripe_key`` document serves billing, read without leaking it.

Shared by every capability that calls Stripe for an account (the contact import and sync,
payment links). Each caller turns :class:`StripeKeyError` into its own failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId

from stripe_crm_pipelines import store

BILLING_APP = "billing"
"""The ``connected_apps`` entry of a key that may be used for billing."""


class StripeKeyError(ValueError):
    """An account has no usable billing Stripe key; the message names the field, never the key."""


@dataclass(frozen=True)
class StripeCredentials:
    """A connected account's Stripe key; the key itself never appears in repr, str or errors."""

    secret_key: str = field(repr=False)
    stripe_account: str | None

    def __repr__(self) -> str:
        return f"StripeCredentials(secret_key='***', stripe_account={self.stripe_account!r})"

    __str__ = __repr__


def billing_key_filter(account_id: ObjectId) -> dict[str, Any]:
    """The ``stripe_key`` documents of ``account_id`` connected for billing."""
    return {"account_id": account_id, "connected_apps": BILLING_APP}


def load_billing_credentials(db, account_id: ObjectId) -> StripeCredentials:
    """The billing key of ``account_id``; raises :class:`StripeKeyError` when there is none."""
    return parse_stripe_credentials(
        db[store.STRIPE_KEYS].find_one(billing_key_filter(account_id)), account_id
    )


def parse_stripe_credentials(
    document: Mapping[str, Any] | None, account_id: object
) -> StripeCredentials:
    """The key and connected account of a ``stripe_key`` document (None: no key connected)."""
    if document is None:
        raise StripeKeyError(f"account {account_id} has no Stripe key connected for billing")
    where = f"stripe_key of account {account_id}"
    token = document.get("token")
    if token is None:
        raise StripeKeyError(f"{where}: token is missing")
    if not isinstance(token, Mapping):
        raise StripeKeyError(f"{where}: token must be an object, got {_type_name(token)}")
    secret_key = token.get("access_token")
    if not isinstance(secret_key, str) or not secret_key.strip():
        raise StripeKeyError(f"{where}: token.access_token {_unusable(secret_key)}")
    stripe_account = token.get("stripe_user_id")
    if not isinstance(stripe_account, str) or not stripe_account.strip():
        raise StripeKeyError(f"{where}: token.stripe_user_id {_unusable(stripe_account)}")
    return StripeCredentials(secret_key=secret_key.strip(), stripe_account=stripe_account.strip())


def _unusable(value: object) -> str:
    """Why a credential field cannot be used, never showing its value."""
    if value is None:
        return "is missing"
    if isinstance(value, str):
        return "is empty"
    return f"must be a string, got {_type_name(value)}"


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def connected_accounts_of(db, account_ids: Iterable[ObjectId]) -> dict[ObjectId, str | None]:
    """Accounts with a billing Stripe key → their connected account id (never the key)."""
    keys = db[store.STRIPE_KEYS].find(
        {"account_id": {"$in": list(account_ids)}, "connected_apps": BILLING_APP},
        {"_id": 0, "account_id": 1, "token.stripe_user_id": 1},
    )
    accounts: dict[ObjectId, str | None] = {}
    for key in keys:
        token = key.get("token")
        stripe_account = token.get("stripe_user_id") if isinstance(token, Mapping) else None
        accounts.setdefault(
            key["account_id"], stripe_account if isinstance(stripe_account, str) else None
        )
    return accounts
