"""Queue a billing import request by hand, as the CRM would: build it, validate it, insert it.

Used by ``python -m stripe_crm_pipelines.imports queue`` and the ``queue_billing_import`` job. The
request is checked with :func:`~.requests.parse_import_request`, the same validation the run's
claim applies, so a request that would fail its run is refused before it is queued. A queued
request is picked up by ``billing_import_sensor`` like any other: same tags, same
one-import-per-Stripe-account limit, same audit trail.

Fields the CRM fills and the caller did not give come from the account, in this order:

* ``user_id``: the caller's, else the account document's ``owner``, else the ``user_id`` of the
  account's newest billing import request; refused when none of them exists.
* ``parent_account``: the account document's ``parent_account``, else the newest request's, else
  the account itself.
* ``client_id``: the account document's ``client_id``, else the newest request's, else none.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pymongo
from bson import ObjectId

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.requests import (
    IMPORT_SOURCE,
    InvalidImportRequest,
    parse_import_request,
)
from stripe_crm_pipelines.stripe_keys import StripeKeyError, load_billing_credentials

QUEUED_BY_CLI = "cli"
QUEUED_BY_LAUNCHPAD = "launchpad"


def build_import_request(
    db,
    *,
    account_id: str | ObjectId,
    import_type: str,
    queued_by: str,
    mappings: Mapping[str, str] | None = None,
    new_contact: bool = True,
    dry_run: bool = False,
    keep_in_sync: bool = False,
    deletion_policy: str = "keep",
    max_customers: int | None = None,
    user_id: str | ObjectId | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """A pending ``queues`` document for ``account_id``, validated as the claim will validate it.

    Raises :class:`InvalidImportRequest` naming the field when the request would fail, when the
    account does not exist, or when it has no usable billing Stripe key (the sensor would leave
    such a request pending, unnoticed).
    """
    account = _account(db, _object_id("account_id", account_id))
    newest = (
        db[store.QUEUES].find_one(
            {"account_id": account["_id"], "source": IMPORT_SOURCE},
            sort=[("createdAt", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)],
        )
        or {}
    )
    user = _object_id("user_id", user_id) or account.get("owner") or newest.get("user_id")
    if user is None:
        raise InvalidImportRequest(
            f"user_id: account {account['_id']} names no owner and has no earlier import "
            "request to take it from; give the user who queues the import"
        )
    document: dict[str, Any] = {
        "_id": ObjectId(),
        "status": "pending",
        "source": IMPORT_SOURCE,
        "in_progress": False,
        "type": import_type,
        "account_id": account["_id"],
        "user_id": user,
        "parent_account": (
            account.get("parent_account") or newest.get("parent_account") or account["_id"]
        ),
        "client_id": account.get("client_id") or newest.get("client_id"),
        "mappings": dict(mappings or {}),
        "new_contact": new_contact,
        "dry_run": dry_run,
        "keep_in_sync": keep_in_sync,
        "deletion_policy": deletion_policy,
        "queued_by": queued_by,
        "createdAt": now or dt.datetime.now(dt.UTC),
    }
    if max_customers is not None:
        document["max_customers"] = max_customers
    parse_import_request(document)
    try:
        load_billing_credentials(db, account["_id"])
    except StripeKeyError as error:
        raise InvalidImportRequest(
            f"account_id: {error}; the import would wait until one is connected"
        ) from None
    return document


def _account(db, account_id: ObjectId) -> Mapping[str, Any]:
    account = db[store.ACCOUNTS].find_one({"_id": account_id})
    if account is None:
        raise InvalidImportRequest(f"account_id: no account {account_id} in {store.ACCOUNTS}")
    return account


def _object_id(name: str, value: str | ObjectId | None) -> ObjectId | None:
    if value is None or isinstance(value, ObjectId):
        return value
    if isinstance(value, str) and ObjectId.is_valid(value.strip()):
        return ObjectId(value.strip())
    raise InvalidImportRequest(f"{name}: {value!r} is not an ObjectId (24 hexadecimal characters)")
