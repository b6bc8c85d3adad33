"""Whether an account's contacts are sound: the queries behind the catalog's asset checks.

* no two contacts of an account and type share a Stripe customer id;
* no two share a normalised email (``email_key``, the trimmed, lower-cased email);
* every customer an import or sync fetched has a contact, unless it was skipped.

Each query is bounded (an aggregation, or one ``find`` on the given ids) and returns at most
:data:`MAX_EXAMPLES` examples along with the exact count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId

from stripe_crm_pipelines import store

MAX_EXAMPLES = 20


@dataclass(frozen=True)
class HealthCheck:
    """One check's verdict for one account and contact type."""

    name: str
    passed: bool
    description: str
    count: int = 0
    """Offending keys (or customers)."""
    examples: list[Any] = field(default_factory=list)


def duplicate_values(db, account_id: ObjectId, key: str) -> tuple[int, list[dict[str, Any]]]:
    """How many values of ``key`` more than one contact of the same account and type holds, and
    up to :data:`MAX_EXAMPLES` of them as ``{type, value, contacts}``."""
    groups = db[store.CONTACTS].aggregate(
        [
            {"$match": {"parent_account": account_id, key: {"$type": "string"}}},
            {"$group": {"_id": {"type": "$type", "value": f"${key}"}, "contacts": {"$sum": 1}}},
            {"$match": {"contacts": {"$gt": 1}}},
        ]
    )
    shared = [{**group["_id"], "contacts": group["contacts"]} for group in groups]
    return len(shared), shared[:MAX_EXAMPLES]


def duplicate_values_by_account(
    db, account_ids: Collection[ObjectId], key: str
) -> dict[ObjectId, list[dict[str, Any]]]:
    """:func:`duplicate_values` for several small accounts (a batch of imports): each account's
    shared values (``{type, value, contacts}``, all of them) by account; accounts without any
    absent. One indexed read of the key per account, counted here: for a few hundred contacts
    that is cheaper than a grouping on the server, on every store."""
    shared: dict[ObjectId, list[dict[str, Any]]] = {}
    for account_id in account_ids:
        counts = Counter(
            (contact.get("type"), contact[key])
            for contact in db[store.CONTACTS].find(
                {"parent_account": account_id, key: {"$type": "string"}},
                {"_id": 0, "type": 1, key: 1},
            )
        )
        values = [
            {"type": contact_type, "value": value, "contacts": contacts}
            for (contact_type, value), contacts in counts.items()
            if contacts > 1
        ]
        if values:
            shared[account_id] = values
    return shared


def customers_without_contact(
    db, account_id: ObjectId, contact_type: str, customer_ids: Collection[str]
) -> list[str]:
    """The customers among ``customer_ids`` that no contact of the account and type holds."""
    if not customer_ids:
        return []
    found = {
        contact["stripe_customer_id"]
        for contact in db[store.CONTACTS].find(
            {
                "parent_account": account_id,
                "type": contact_type,
                "stripe_customer_id": {"$in": list(customer_ids)},
            },
            {"_id": 0, "stripe_customer_id": 1},
        )
    }
    return [customer_id for customer_id in customer_ids if customer_id not in found]


UNIQUE_KEYS = (
    ("unique_stripe_customer_ids", "stripe_customer_id", "Stripe customer id"),
    ("unique_emails", "email_key", "normalised email"),
)
"""(check name, contact field, what the field is) of the uniqueness checks."""


def uniqueness_checks(db, account_id: ObjectId) -> list[HealthCheck]:
    """The two uniqueness checks of an account's contacts, each type on its own."""
    return [
        _uniqueness_check(name, what, *duplicate_values(db, account_id, key))
        for name, key, what in UNIQUE_KEYS
    ]


def uniqueness_checks_by_account(
    db, account_ids: Collection[ObjectId]
) -> dict[ObjectId, list[HealthCheck]]:
    """:func:`uniqueness_checks` of several small accounts (see
    :func:`duplicate_values_by_account`)."""
    checks: dict[ObjectId, list[HealthCheck]] = {account_id: [] for account_id in account_ids}
    for name, key, what in UNIQUE_KEYS:
        shared = duplicate_values_by_account(db, account_ids, key)
        for account_id in account_ids:
            values = shared.get(account_id, [])
            checks[account_id].append(
                _uniqueness_check(name, what, len(values), values[:MAX_EXAMPLES])
            )
    return checks


def _uniqueness_check(name: str, what: str, count: int, examples: list[Any]) -> HealthCheck:
    description = (
        f"No two contacts of one type share a {what}"
        if count == 0
        else f"{count} {what}(s) shared by several contacts of one type"
    )
    return HealthCheck(name, count == 0, description, count, examples)


def fetched_customers_check(
    db, account_id: ObjectId, contact_type: str, customer_ids: Collection[str]
) -> HealthCheck:
    """Every customer the run expects a contact for (fetched and not skipped) has one."""
    missing = customers_without_contact(db, account_id, contact_type, customer_ids)
    description = (
        f"All {len(customer_ids)} customer(s) the run wrote have a {contact_type} contact"
        if not missing
        else f"{len(missing)} of {len(customer_ids)} customer(s) the run wrote have no contact"
    )
    return HealthCheck(
        "fetched_customers_have_contacts",
        not missing,
        description,
        len(missing),
        missing[:MAX_EXAMPLES],
    )
