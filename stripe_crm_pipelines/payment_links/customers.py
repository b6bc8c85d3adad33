"""Find the Stripe customer of a CRM contact, or create it, and link it to the contact."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import stripe
from pymongo.errors import DuplicateKeyError

from stripe_crm_pipelines import store
from stripe_crm_pipelines.payment_links.invoice import (
    PaymentLinkConfigError,
    PaymentLinkRequest,
    contact_display_name,
    contact_name,
    customer_search_query,
)
from stripe_crm_pipelines.resources.crm_api import CrmApiResource, TokenSubject

# Creates a customer from Stripe parameters under an idempotency key; returns its id.
CustomerCreator = Callable[[dict[str, Any], str], str]

_ADDRESS_FIELDS = (
    ("line1", ("street", "line1")),
    ("line2", ("line2",)),
    ("city", ("city",)),
    ("state", ("state_province", "state")),
    ("postal_code", ("postal_code", "zip")),
    ("country", ("country",)),
)


@dataclass(frozen=True)
class ResolvedCustomer:
    """The Stripe customer a payment link bills, and how it was found."""

    customer_id: str
    contact_name: str
    found_by: str  # "contact", "search", "list" or "created"
    linked: bool


def load_contact(db, account_id, contact_id) -> dict | None:
    """The contact ``contact_id`` if it belongs to ``account_id`` (else ``None``)."""
    return db[store.CONTACTS].find_one({"_id": contact_id, "parent_account": account_id})


def contact_email(contact: Mapping[str, Any]) -> str | None:
    return _text(contact.get("email"))


def contact_phone(contact: Mapping[str, Any]) -> str | None:
    phone = contact.get("phone")
    if isinstance(phone, list):
        phone = next((p for p in phone if isinstance(p, str) and p.strip()), None)
    return _text(phone)


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def customer_params(contact: Mapping[str, Any], *, account_id: str) -> dict[str, Any]:
    """Stripe customer parameters from a contact; each field only when the contact has it."""
    params: dict[str, Any] = {
        "metadata": {"crm_contact_id": str(contact["_id"]), "crm_account_id": account_id}
    }
    if name := contact_name(contact):
        params["name"] = name
    if email := contact_email(contact):
        params["email"] = email
    if phone := contact_phone(contact):
        params["phone"] = phone
    if address := stripe_address(contact.get("address")):
        params["address"] = address
    return params


def stripe_address(address: Any) -> dict[str, str] | None:
    """A Stripe address from a CRM one (``street``, ``state_province``/``state``, ``zip``…)."""
    if not isinstance(address, Mapping):
        return None
    result = {}
    for stripe_field, crm_fields in _ADDRESS_FIELDS:
        value = next((v for f in crm_fields if (v := _text(address.get(f)))), None)
        if value:
            result[stripe_field] = value
    return result or None


def find_customer(
    client: stripe.StripeClient, contact: Mapping[str, Any]
) -> tuple[str, str] | None:
    """``(customer_id, found_by)`` of the contact's Stripe customer, or ``None``.

    Tries the contact's ``stripe_customer_id`` (if the customer still exists), then a search by
    email or phone, then a list by email, which sees customers search has not indexed yet. A
    customer found by the phone alone is taken only if it has no email, or the contact has none:
    one with another email is another person, and billing it would bill them.
    """
    linked_id = _text(contact.get("stripe_customer_id"))
    if linked_id and _customer_exists(client, linked_id):
        return linked_id, "contact"
    email = contact_email(contact)
    query = customer_search_query(email, contact_phone(contact))
    if query is not None:
        found = client.v1.customers.search(params={"query": query, "limit": 10}).data
        if (match := _best_match(found, email)) is not None:
            return match.id, "search"
    if email:
        listed = client.v1.customers.list(params={"email": email, "limit": 10}).data
        if (match := _best_match(listed, email)) is not None:
            return match.id, "list"
    return None


def _customer_exists(client: stripe.StripeClient, customer_id: str) -> bool:
    try:
        customer = client.v1.customers.retrieve(customer_id)
    except stripe.InvalidRequestError as error:
        if error.http_status == 404 or error.code == "resource_missing":
            return False
        raise
    return not getattr(customer, "deleted", False)


def _best_match(customers: list, email: str | None):
    """The first customer whose email equals ``email`` (case-insensitively), else the first
    without an email; with no ``email``, the first customer. None if no customer fits."""
    if not email:
        return customers[0] if customers else None
    emails = [(getattr(customer, "email", None) or "").strip().lower() for customer in customers]
    for customer, customer_email in zip(customers, emails, strict=True):
        if customer_email == email.lower():
            return customer
    return next((c for c, e in zip(customers, emails, strict=True) if not e), None)


def stripe_customer_creator(client: stripe.StripeClient) -> CustomerCreator:
    """Create customers directly in Stripe with the account's client."""

    def create(params: dict[str, Any], idempotency_key: str) -> str:
        customer = client.v1.customers.create(
            params=params, options={"idempotency_key": idempotency_key}
        )
        return customer.id

    return create


def crm_api_customer_creator(
    crm_api: CrmApiResource,
    request: PaymentLinkRequest,
    contact: Mapping[str, Any],
    account: Mapping[str, Any] | None,
) -> CustomerCreator:
    """Create customers through the CRM API with a token for the request's account.

    The token's subject is resolved only when a customer is created, so a missing user or
    client (:class:`PaymentLinkConfigError`) only matters when it is needed.
    """

    def create(params: dict[str, Any], idempotency_key: str) -> str:
        subject = token_subject(request, contact, account)
        customer = crm_api.create_billing_customer(params, subject, idempotency_key=idempotency_key)
        return customer["id"]

    return create


def link_contact(db, contact: Mapping[str, Any], customer_id: str) -> bool:
    """Set ``stripe_customer_id`` on this contact only; ``False`` if another contact holds it."""
    try:
        db[store.CONTACTS].update_one(
            {"_id": contact["_id"], "parent_account": contact["parent_account"]},
            {"$set": {"stripe_customer_id": customer_id}},
        )
    except DuplicateKeyError:
        return False
    return True


def find_or_create_customer(
    client: stripe.StripeClient,
    db,
    contact: Mapping[str, Any],
    *,
    create: CustomerCreator,
    idempotency_key: str,
) -> ResolvedCustomer:
    """The contact's Stripe customer, created (through ``create``) when none is found.

    The contact is linked to the customer whenever it does not point at it yet.
    """
    found = find_customer(client, contact)
    if found is None:
        params = customer_params(contact, account_id=str(contact["parent_account"]))
        customer_id, found_by = create(params, idempotency_key), "created"
    else:
        customer_id, found_by = found
    linked = contact.get("stripe_customer_id") == customer_id or link_contact(
        db, contact, customer_id
    )
    return ResolvedCustomer(
        customer_id=customer_id,
        contact_name=contact_display_name(contact),
        found_by=found_by,
        linked=linked,
    )


def token_subject(
    request: PaymentLinkRequest, contact: Mapping[str, Any], account: Mapping[str, Any] | None
) -> TokenSubject:
    """Whom the CRM API token speaks for, as the billing import's token does.

    The user is the request's ``user_id``, else the contact's owner (or creator); the client is
    the request's ``client_id``, else the account's; the parent account is the account's
    ``parent_account``, else the account itself.
    """
    account = account or {}
    user_id = request.user_id or contact.get("owner") or contact.get("created_by")
    client_id = request.client_id or account.get("client_id")
    missing = [
        (name, why)
        for name, value, why in (
            ("user_id", user_id, "the contact has no owner"),
            ("client_id", client_id, "the account has no client_id"),
        )
        if not value
    ]
    if missing:
        raise PaymentLinkConfigError(
            [
                (name, f"required to create customers through API_BASE_URL ({why})")
                for name, why in missing
            ]
        )
    return TokenSubject(
        user_id=str(user_id),
        account_id=str(request.account_id),
        parent_account=str(account.get("parent_account") or request.account_id),
        client_id=str(client_id),
    )
