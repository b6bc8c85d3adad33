"""Match a page of Stripe customers to CRM contacts and write them in one bulk round trip.

Per page the import makes one query (the account's contacts of the import's type whose
``stripe_customer_id`` or ``email_key`` is on the page) and one unordered ``bulk_write``:

* a customer matches a contact by ``stripe_customer_id``, else by ``email_key`` (the trimmed,
  lower-cased email, see :func:`~stripe_crm_pipelines.billing_import.mapping.normalize_email`);
* a match is updated: with mappings, the mapped fields, ``email`` and ``old_field_values``;
  without, only ``stripe_customer_id`` (as the seed does);
* no match and ``new_contact`` creates the contact with an upsert keyed by ``email_key`` (or by
  ``stripe_customer_id`` when Stripe has no email), so two imports of one account converge on
  one contact through the unique indexes instead of creating two;
* no match and not ``new_contact``: skipped.

A second customer with an email (or contact) already seen in this import is a duplicate: the
first one seen, the newest, wins. A contact is seen by the Stripe id and email key it had before
this import updated it, so where one batch ends and the next begins never changes the outcome.
One failing write is an import error for that customer; the rest of the batch still lands
(unordered bulk, errors mapped back by index).

Every filter carries ``parent_account`` and ``type``, so contacts of other accounts or of the
other type are never read or written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from stripe_crm_pipelines.billing_import.mapping import (
    FieldMapping,
    map_customer,
    normalize_email,
    old_field_values,
    set_fields,
)
from stripe_crm_pipelines.errors import DUPLICATE_KEY

CONTACT_SOURCE = "stripe"
SAMPLE_SIZE = 5
BACKFILL_BATCH_SIZE = 5000
"""Contacts given their email key per bulk write."""


@dataclass(frozen=True)
class UpsertTarget:
    """Whose contacts an import writes, and how."""

    account_id: ObjectId
    """The requesting account; contacts store it as ``parent_account``."""
    contact_type: str
    """``person`` or ``business``."""
    user_id: ObjectId
    """The user who asked for the import: ``owner`` and ``created_by`` of new contacts."""
    new_contact: bool
    mappings: tuple[FieldMapping, ...]

    def scope(self) -> dict[str, Any]:
        """The filter every contact query and write of this import starts from."""
        return {"parent_account": self.account_id, "type": self.contact_type}


@dataclass(frozen=True)
class ImportErrorEntry:
    """One customer the import could not write: an ``importerrors`` entry of the result."""

    message: str
    email: str | None
    stripe_customer_id: str | None

    def as_document(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "email": self.email,
            "stripe_customer_id": self.stripe_customer_id,
        }


@dataclass(frozen=True)
class DuplicateCustomer:
    """A customer not applied because an earlier (newer) one already wrote its contact."""

    stripe_customer_id: str
    email: str | None
    duplicate_of: str

    def as_document(self) -> dict[str, Any]:
        return {
            "stripe_customer_id": self.stripe_customer_id,
            "email": self.email,
            "duplicate_of": self.duplicate_of,
        }


@dataclass
class SeenCustomers:
    """What earlier pages of this import wrote; lives in the run, one per import."""

    by_email_key: dict[str, str] = field(default_factory=dict)
    """email_key → id of the first customer seen with it."""
    by_contact_id: dict[ObjectId, str] = field(default_factory=dict)
    """existing contact ``_id`` → id of the customer that updated it."""
    claimed_keys: dict[tuple[str, str], str] = field(default_factory=dict)
    """(``stripe_customer_id`` or ``email_key``, value) an updated contact had before this import
    changed it → id of the customer that updated it. An older customer that would have matched
    the contact by it is a duplicate, in the same batch or in a later one (whose lookup no longer
    finds the contact by a changed key), so where batches begin does not change the outcome."""

    def claimed_by(self, customer_id: str, email_key: str | None) -> str | None:
        """The customer that already took the contact this customer matched at the start."""
        owner = self.claimed_keys.get(("stripe_customer_id", customer_id))
        if owner is None and email_key is not None:
            owner = self.claimed_keys.get(("email_key", email_key))
        return owner

    def claim(self, contact: Mapping[str, Any], customer_id: str) -> None:
        self.by_contact_id[contact["_id"]] = customer_id
        for key in ("stripe_customer_id", "email_key"):
            if isinstance(contact.get(key), str):
                self.claimed_keys.setdefault((key, contact[key]), customer_id)


@dataclass
class BatchResult:
    """What one page did to the contacts."""

    added: int = 0
    updated: int = 0
    skipped: int = 0
    errors: list[ImportErrorEntry] = field(default_factory=list)
    duplicates: list[DuplicateCustomer] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    """Up to :data:`SAMPLE_SIZE` of the contact values written, for run metadata."""


@dataclass
class UpsertPlan:
    """The bulk operations for one page and the customer behind each one, by position."""

    operations: list[UpdateOne] = field(default_factory=list)
    customers: list[tuple[str, str | None]] = field(default_factory=list)
    """(stripe_customer_id, email) of ``operations[i]``."""
    skipped: int = 0
    errors: list[ImportErrorEntry] = field(default_factory=list)
    duplicates: list[DuplicateCustomer] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class BackfillResult:
    """Contacts given an ``email_key`` before matching, and the ones whose email was taken."""

    updated: int
    conflicts: int


def upsert_customers(
    contacts, customers: Sequence[Mapping[str, Any]], target: UpsertTarget, seen: SeenCustomers
) -> BatchResult:
    """Match and write one page of customers: one ``find`` and one unordered ``bulk_write``."""
    existing = find_existing_contacts(contacts, customers, target)
    plan = plan_upserts(customers, existing, target, seen)
    return execute_plan(contacts, plan)


def recall_page(
    contacts, customers: Sequence[Mapping[str, Any]], target: UpsertTarget, seen: SeenCustomers
) -> None:
    """Record in ``seen`` what a page already written by an earlier attempt holds; no writes."""
    plan_upserts(customers, find_existing_contacts(contacts, customers, target), target, seen)


def find_existing_contacts(
    contacts, customers: Sequence[Mapping[str, Any]], target: UpsertTarget
) -> list[dict[str, Any]]:
    """The contacts of the target's account and type that any of ``customers`` could match."""
    customer_ids = [customer["id"] for customer in customers if customer.get("id")]
    email_keys = sorted(
        {key for customer in customers if (key := normalize_email(customer.get("email")))}
    )
    alternatives: list[dict[str, Any]] = []
    if customer_ids:
        alternatives.append({"stripe_customer_id": {"$in": customer_ids}})
    if email_keys:
        alternatives.append({"email_key": {"$in": email_keys}})
    if not alternatives:
        return []
    projection = {"_id": 1, "email": 1, "email_key": 1, "stripe_customer_id": 1}
    for mapping in target.mappings:
        projection[mapping.crm_path[0]] = 1
    return list(contacts.find({**target.scope(), "$or": alternatives}, projection))


def plan_upserts(
    customers: Iterable[Mapping[str, Any]],
    existing: Iterable[Mapping[str, Any]],
    target: UpsertTarget,
    seen: SeenCustomers,
) -> UpsertPlan:
    """Decide, per customer, update / create / skip / duplicate / error. No I/O."""
    by_customer_id: dict[str, Mapping[str, Any]] = {}
    by_email_key: dict[str, Mapping[str, Any]] = {}
    for contact in existing:
        if isinstance(contact.get("stripe_customer_id"), str):
            by_customer_id.setdefault(contact["stripe_customer_id"], contact)
        if isinstance(contact.get("email_key"), str):
            by_email_key.setdefault(contact["email_key"], contact)

    plan = UpsertPlan()
    now = datetime.now(UTC)
    for customer in customers:
        customer_id = customer.get("id")
        try:
            mapped = map_customer(customer, target.mappings)
        except Exception as error:
            plan.errors.append(
                ImportErrorEntry(
                    message=f"Could not map the Stripe customer: {error}",
                    email=_email_of(customer),
                    stripe_customer_id=customer_id,
                )
            )
            continue
        customer_id = mapped["stripe_customer_id"]
        email = mapped["email"] if isinstance(mapped["email"], str) else None
        email_key = normalize_email(email)

        if email_key is not None and email_key in seen.by_email_key:
            plan.duplicates.append(
                DuplicateCustomer(customer_id, email, seen.by_email_key[email_key])
            )
            continue
        if (owner := seen.claimed_by(customer_id, email_key)) is not None:
            plan.duplicates.append(DuplicateCustomer(customer_id, email, owner))
            continue
        contact = by_customer_id.get(customer_id)
        if contact is None and email_key is not None:
            contact = by_email_key.get(email_key)
        if contact is not None and contact["_id"] in seen.by_contact_id:
            plan.duplicates.append(
                DuplicateCustomer(customer_id, email, seen.by_contact_id[contact["_id"]])
            )
            continue

        if contact is not None:
            update = _update_existing(contact, mapped, email_key, target)
            operation = UpdateOne({"_id": contact["_id"], **target.scope()}, update)
            seen.claim(contact, customer_id)
        elif target.new_contact:
            operation, update = _create(mapped, email_key, target, now)
        else:
            plan.skipped += 1
            continue
        if email_key is not None:
            seen.by_email_key[email_key] = customer_id
        plan.operations.append(operation)
        plan.customers.append((customer_id, email))
        if len(plan.samples) < SAMPLE_SIZE:
            plan.samples.append(
                {
                    "action": "update" if contact is not None else "create",
                    **update["$set"],
                }
            )
    return plan


def execute_plan(contacts, plan: UpsertPlan) -> BatchResult:
    """Write a plan with one unordered ``bulk_write``; failed operations become import errors."""
    result = BatchResult(
        skipped=plan.skipped,
        errors=list(plan.errors),
        duplicates=list(plan.duplicates),
        samples=list(plan.samples),
    )
    if not plan.operations:
        return result
    try:
        outcome = contacts.bulk_write(plan.operations, ordered=False).bulk_api_result
    except BulkWriteError as error:
        outcome = error.details
    write_errors = outcome.get("writeErrors", [])
    for write_error in write_errors:
        customer_id, email = plan.customers[write_error["index"]]
        result.errors.append(
            ImportErrorEntry(
                message=_write_error_message(write_error),
                email=email,
                stripe_customer_id=customer_id,
            )
        )
    result.added = outcome.get("nUpserted", 0)
    result.updated = outcome.get("nMatched", 0)
    # An update whose contact was deleted while the import ran matched nothing: not written.
    result.skipped += len(plan.operations) - len(write_errors) - result.added - result.updated
    return result


def backfill_email_keys(contacts, target: UpsertTarget) -> BackfillResult:
    """Give the target's contacts that other tools created (no ``email_key``) their key.

    A second contact with the same email cannot take the key (unique index); it is counted as a
    conflict and the import matches the first one.
    """
    cursor = contacts.find(
        {**target.scope(), "email": {"$type": "string"}, "email_key": None},
        {"_id": 1, "email": 1},
    )
    updated = conflicts = 0
    batch: list[UpdateOne] = []
    for contact in cursor:
        email_key = normalize_email(contact["email"])
        if email_key is None:
            continue
        batch.append(
            UpdateOne({"_id": contact["_id"], **target.scope()}, {"$set": {"email_key": email_key}})
        )
        if len(batch) >= BACKFILL_BATCH_SIZE:
            done, failed = _write_backfill(contacts, batch)
            updated, conflicts, batch = updated + done, conflicts + failed, []
    if batch:
        done, failed = _write_backfill(contacts, batch)
        updated, conflicts = updated + done, conflicts + failed
    return BackfillResult(updated=updated, conflicts=conflicts)


def _write_backfill(contacts, batch: list[UpdateOne]) -> tuple[int, int]:
    try:
        outcome = contacts.bulk_write(batch, ordered=False).bulk_api_result
    except BulkWriteError as error:
        outcome = error.details
        others = [e for e in outcome["writeErrors"] if e.get("code") != DUPLICATE_KEY]
        if others:
            raise
    conflicts = len(outcome.get("writeErrors", []))
    return len(batch) - conflicts, conflicts


def _update_existing(
    contact: Mapping[str, Any],
    mapped: dict[str, Any],
    email_key: str | None,
    target: UpsertTarget,
) -> dict[str, Any]:
    if not target.mappings:
        return {"$set": {"stripe_customer_id": mapped["stripe_customer_id"]}}
    values = set_fields(mapped)
    if values.get("email") is None:
        # Stripe has no email for this customer: keep the contact's.
        values.pop("email", None)
    else:
        values["email_key"] = email_key
    values = _settable(values, contact)
    values["old_field_values"] = old_field_values(contact, target.mappings)
    return {"$set": values}


def _create(
    mapped: dict[str, Any], email_key: str | None, target: UpsertTarget, now: datetime
) -> tuple[UpdateOne, dict[str, Any]]:
    values = set_fields(mapped)
    if email_key is not None:
        key = {"email_key": email_key}
    else:
        values.pop("email", None)
        key = {"stripe_customer_id": values.pop("stripe_customer_id")}
    update: dict[str, Any] = {
        "$setOnInsert": {
            "owner": target.user_id,
            "created_by": target.user_id,
            "source": CONTACT_SOURCE,
            "createdAt": now,
        }
    }
    update["$set"] = values
    return UpdateOne({**target.scope(), **key}, update, upsert=True), {"$set": {**key, **values}}


def _settable(values: dict[str, Any], contact: Mapping[str, Any]) -> dict[str, Any]:
    """``$set`` paths that work on this contact.

    ``$set: {"address.street": …}`` fails when the contact's ``address`` is null or not an
    object; such paths are folded into one ``$set`` of the whole parent.
    """
    settable: dict[str, Any] = {}
    for path, value in values.items():
        segments = path.split(".")
        blocked = _non_object_prefix(contact, segments)
        if blocked is None:
            settable[path] = value
            continue
        node = settable.setdefault(".".join(segments[:blocked]), {})
        for segment in segments[blocked:-1]:
            node = node.setdefault(segment, {})
        node[segments[-1]] = value
    return settable


def _non_object_prefix(contact: Mapping[str, Any], segments: list[str]) -> int | None:
    """Length of the shortest proper prefix of ``segments`` that holds a non-object value."""
    value: Any = contact
    for depth, segment in enumerate(segments[:-1], start=1):
        if segment not in value:
            return None
        value = value[segment]
        if not isinstance(value, Mapping):
            return depth
    return None


def _write_error_message(write_error: Mapping[str, Any]) -> str:
    if write_error.get("code") == DUPLICATE_KEY:
        return (
            "Another contact of this account already has this email or Stripe customer id "
            f"({write_error.get('errmsg', 'duplicate key')})"
        )
    return f"Contact write failed: {write_error.get('errmsg', 'unknown error')}"


def _email_of(customer: Mapping[str, Any]) -> str | None:
    email = customer.get("email")
    return email if isinstance(email, str) else None
