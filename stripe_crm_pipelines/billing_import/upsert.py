"""Match a page of Stripe customers to CRM contacts and write them in one bulk round trip.

Per page the import makes one query (the account's contacts whose ``stripe_customer_id`` is on
the page, and those of the import's type whose ``email_key`` is) and one unordered
``bulk_write``:

* a customer matches a contact by ``stripe_customer_id``, else by ``email_key`` (the trimmed,
  lower-cased email, see :func:`~stripe_crm_pipelines.billing_import.mapping.normalize_email`);
* a match is updated: with mappings, the mapped fields, ``email`` and ``old_field_values``;
  without, only ``stripe_customer_id`` (as the seed does);
* no match and ``new_contact`` creates the contact with an upsert keyed by ``email_key`` (or by
  ``stripe_customer_id`` when Stripe has no email), so two imports of one account converge on
  one contact through the unique indexes instead of creating two;
* no match and not ``new_contact``: skipped;
* no match, but a contact of the account's other type already holds the customer's Stripe id
  (a business contact whose payment link created the customer): skipped, not created again as a
  contact of this type. The lookup finds such contacts in the same query.

Every customer is planned as a :class:`PlannedChange` (``add`` or ``update``, with the value
before and after of each field it changes) or a :class:`SkippedCustomer` with its reason. A dry
run (``UpsertTarget.dry_run``) stops there: nothing is written and the plan gives the counts and
a preview. Otherwise the plan's changes go to ``contact_import_changes`` in one ``insert_many``
just before the contacts' ``bulk_write``, so an import can be reverted (see ``revert``) even if
its run dies between the two writes.

A second customer with an email (or contact) already seen in this import is a duplicate: the
first one seen, the newest, wins. A contact is seen by the Stripe id and email key it had before
this import updated it, so where one batch ends and the next begins never changes the outcome.
One failing write is an import error for that customer; the rest of the batch still lands
(unordered bulk, errors mapped back by index).

Every write carries ``parent_account`` and ``type``, so contacts of other accounts or of the
other type are never written; contacts of the other type are read only to see whether they
already hold a customer's Stripe id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

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
PREVIEW_SIZE = 50
"""Planned changes a dry run shows, across the whole import."""
BACKFILL_BATCH_SIZE = 5000
"""Contacts given their email key per bulk write."""
BACKFILL_READ_SIZE = 50_000
"""Contacts the email-key backfill reads at once (an id and an email each: a few MB), so memory
does not grow with the account; each read is one query of the account's unkeyed contacts."""
BOOKKEEPING_FIELDS = frozenset({"email_key", "old_field_values"})
"""Fields the import keeps for itself: logged for a revert, left out of the preview."""

SKIP_NO_MATCH = "no matching contact and new_contact is false"
SKIP_CONTACT_GONE = "the matched contact was deleted while the import ran"


def skip_linked_reason(contact_type: str) -> str:
    """Why a customer already linked to a contact of the other type is not created again."""
    return f"already linked to a {contact_type} contact of the account"


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
    dry_run: bool = False
    """Plan only: write no contact, no email key and no change log."""
    import_id: ObjectId | None = None
    """The import request; with it, every change is logged in ``contact_import_changes``."""

    def scope(self) -> dict[str, Any]:
        """The filter every contact write of this import starts from."""
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


@dataclass(frozen=True)
class SkippedCustomer:
    """A customer the import left alone, and why."""

    stripe_customer_id: str
    email: str | None
    reason: str
    contact_id: ObjectId | None = None
    """The contact that already holds the customer, when that is the reason."""

    def as_document(self) -> dict[str, Any]:
        return {
            "stripe_customer_id": self.stripe_customer_id,
            "email": self.email,
            "reason": self.reason,
            "contact_id": self.contact_id,
        }

    def preview(self) -> dict[str, Any]:
        return {
            "stripe_customer_id": self.stripe_customer_id,
            "email": self.email,
            "action": "skip",
            "changes": {},
            "reason": self.reason,
        }


class FieldChange(NamedTuple):
    """One field's value before and after the import; ``existed`` is False when it was absent
    (a named tuple: an import makes one per field it writes)."""

    before: Any
    after: Any
    existed: bool


@dataclass(frozen=True)
class PlannedChange:
    """What the import does (or, in a dry run, would do) to one contact."""

    stripe_customer_id: str
    email: str | None
    action: str
    """``add`` or ``update``."""
    contact_id: ObjectId
    """The contact updated, or the ``_id`` the new contact gets."""
    changes: dict[str, FieldChange]
    """Per field (a dotted path) whose value changes. A field under an object the contact did
    not have is given as that object, so restoring it removes the object again."""
    created: dict[str, Any] | None = None
    """For ``add``: the whole new contact but its ``_id``, to tell later whether it was edited."""

    def preview(self) -> dict[str, Any]:
        """The dry-run preview entry: ``changes`` is ``{field: [before, after]}``."""
        return {
            "stripe_customer_id": self.stripe_customer_id,
            "email": self.email,
            "action": self.action,
            "changes": {
                path: [change.before, change.after]
                for path, change in self.changes.items()
                if path not in BOOKKEEPING_FIELDS
            },
        }

    def log_document(self, import_id: ObjectId) -> dict[str, Any] | None:
        """The ``contact_import_changes`` document; None for an update that changes nothing."""
        document: dict[str, Any] = {
            "import_id": import_id,
            "contact_id": self.contact_id,
            "action": self.action,
            "stripe_customer_id": self.stripe_customer_id,
            "email": self.email,
        }
        if self.action == "add":
            document["created"] = self.created
            return document
        if not self.changes:
            return None
        document["changes"] = [
            {"field": path, "after": change.after}
            | ({"before": change.before} if change.existed else {})
            for path, change in self.changes.items()
        ]
        return document


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
    unkeyed: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Dry runs only: contacts without an ``email_key`` by the key the backfill would have given
    them (a dry run writes none), so they are matched by email as in a real run."""

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
    """What one page did to the contacts (in a dry run: would have done)."""

    added: int = 0
    updated: int = 0
    skipped: int = 0
    errors: list[ImportErrorEntry] = field(default_factory=list)
    duplicates: list[DuplicateCustomer] = field(default_factory=list)
    skipped_customers: list[SkippedCustomer] = field(default_factory=list)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    """Reason → customers skipped for it; sums to ``skipped``."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    """Up to :data:`SAMPLE_SIZE` of the contact values written, for run metadata."""
    preview: list[dict[str, Any]] = field(default_factory=list)
    """Up to :data:`PREVIEW_SIZE` planned changes (see :meth:`PlannedChange.preview`)."""


@dataclass
class UpsertPlan:
    """The bulk operations for one page and the change behind each one, by position."""

    operations: list[UpdateOne] = field(default_factory=list)
    planned: list[PlannedChange] = field(default_factory=list)
    """The change ``operations[i]`` makes."""
    skipped: list[SkippedCustomer] = field(default_factory=list)
    errors: list[ImportErrorEntry] = field(default_factory=list)
    duplicates: list[DuplicateCustomer] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)
    """Up to :data:`PREVIEW_SIZE` entries, adds, updates and skips in customer order."""

    def add_preview(self, entry: PlannedChange | SkippedCustomer) -> None:
        if len(self.preview) < PREVIEW_SIZE:
            self.preview.append(entry.preview())


@dataclass(frozen=True)
class BackfillResult:
    """Contacts given an ``email_key`` before matching, and the ones whose email was taken."""

    updated: int
    conflicts: int


def upsert_customers(
    contacts,
    customers: Sequence[Mapping[str, Any]],
    target: UpsertTarget,
    seen: SeenCustomers,
    change_log=None,
) -> BatchResult:
    """Match and write one page of customers: one ``find`` and one unordered ``bulk_write``.

    ``change_log`` is the ``contact_import_changes`` collection: with it (and
    ``target.import_id``) the page's changes are logged in one ``insert_many`` first. A dry run
    plans only and returns what it would have written.
    """
    existing = find_existing_contacts(contacts, customers, target, seen)
    plan = plan_upserts(customers, existing, target, seen)
    if target.dry_run:
        return planned_result(plan)
    return execute_plan(contacts, plan, change_log, target.import_id)


def recall_page(
    contacts, customers: Sequence[Mapping[str, Any]], target: UpsertTarget, seen: SeenCustomers
) -> None:
    """Record in ``seen`` what a page already written by an earlier attempt holds; no writes."""
    plan_upserts(customers, find_existing_contacts(contacts, customers, target, seen), target, seen)


def find_existing_contacts(
    contacts,
    customers: Sequence[Mapping[str, Any]],
    target: UpsertTarget,
    seen: SeenCustomers | None = None,
) -> list[dict[str, Any]]:
    """The contacts of the account any of ``customers`` could match, in one query.

    Those of the target's type by Stripe id or email key, and those of any other type by Stripe
    id (a customer they hold is not created again). In a dry run, also the contacts ``seen``
    knows by the email key they would have been given.
    """
    customer_ids = [customer["id"] for customer in customers if customer.get("id")]
    email_keys = sorted(
        {
            key
            for customer in customers
            if (key := normalize_email(_matched_email(customer, target)))
        }
    )
    alternatives: list[dict[str, Any]] = []
    if customer_ids:
        alternatives.append({"stripe_customer_id": {"$in": customer_ids}})
    if email_keys:
        alternatives.append({"type": target.contact_type, "email_key": {"$in": email_keys}})
    if not alternatives:
        return []
    found = list(
        contacts.find(
            {"parent_account": target.account_id, "$or": alternatives}, _projection(target)
        )
    )
    _rekey_stale(contacts, found, target)
    if seen is not None and seen.unkeyed:
        found.extend(seen.unkeyed[key] for key in email_keys if key in seen.unkeyed)
    return found


def _matched_email(customer: Mapping[str, Any], target: UpsertTarget) -> Any:
    """The email a customer is matched by: the value mapped onto the contact's ``email`` when a
    mapping writes it (as planning uses), else the customer's own."""
    if not any(mapping.crm_path == ("email",) for mapping in target.mappings):
        return customer.get("email")
    try:
        return map_customer(customer, target.mappings)["email"]
    except Exception:  # planning reports the mapping error for this customer
        return customer.get("email")


def _rekey_stale(contacts, found: list[dict[str, Any]], target: UpsertTarget) -> None:
    """Contacts whose email was edited since they got their key (the CRM does not keep
    ``email_key``) must not match by the old email: give them the key of their email now, or
    none if another contact holds it (a dry run only corrects what it read)."""
    stale = [
        contact
        for contact in found
        if contact.get("type") == target.contact_type
        and isinstance(contact.get("email_key"), str)
        and normalize_email(contact.get("email")) != contact["email_key"]
    ]
    if not stale:
        return
    for contact in stale:
        old, contact["email_key"] = contact["email_key"], normalize_email(contact.get("email"))
        if target.dry_run:
            continue
        key = contact["email_key"]
        update = {"$set": {"email_key": key}} if key else {"$unset": {"email_key": ""}}
        try:
            contacts.update_one({"_id": contact["_id"], "email_key": old}, update)
        except DuplicateKeyError:
            # Another contact has that email: this one matches by its Stripe id only.
            contacts.update_one({"_id": contact["_id"]}, {"$unset": {"email_key": ""}})
            contact["email_key"] = None


def plan_upserts(
    customers: Iterable[Mapping[str, Any]],
    existing: Iterable[Mapping[str, Any]],
    target: UpsertTarget,
    seen: SeenCustomers,
) -> UpsertPlan:
    """Decide, per customer, update / create / skip / duplicate / error. No I/O."""
    by_customer_id: dict[str, Mapping[str, Any]] = {}
    by_email_key: dict[str, Mapping[str, Any]] = {}
    linked_elsewhere: dict[str, Mapping[str, Any]] = {}
    for contact in existing:
        customer_id = contact.get("stripe_customer_id")
        if contact.get("type", target.contact_type) != target.contact_type:
            if isinstance(customer_id, str):
                linked_elsewhere.setdefault(customer_id, contact)
            continue
        if isinstance(customer_id, str):
            by_customer_id.setdefault(customer_id, contact)
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
            planned = PlannedChange(
                customer_id, email, "update", contact["_id"], field_changes(contact, update["$set"])
            )
            seen.claim(contact, customer_id)
        elif (holder := linked_elsewhere.get(customer_id)) is not None:
            skip = SkippedCustomer(
                customer_id, email, skip_linked_reason(holder["type"]), holder["_id"]
            )
            plan.skipped.append(skip)
            plan.add_preview(skip)
            continue
        elif target.new_contact:
            operation, update, planned = _create(customer_id, email, mapped, email_key, target, now)
        else:
            skip = SkippedCustomer(customer_id, email, SKIP_NO_MATCH)
            plan.skipped.append(skip)
            plan.add_preview(skip)
            continue
        if email_key is not None:
            seen.by_email_key[email_key] = customer_id
        plan.operations.append(operation)
        plan.planned.append(planned)
        plan.add_preview(planned)
        if len(plan.samples) < SAMPLE_SIZE:
            plan.samples.append(
                {
                    "action": "update" if contact is not None else "create",
                    **update["$set"],
                }
            )
    return plan


def planned_result(plan: UpsertPlan) -> BatchResult:
    """What a plan would write, without writing it (a dry run)."""
    result = _unwritten_result(plan)
    result.added = sum(1 for planned in plan.planned if planned.action == "add")
    result.updated = len(plan.planned) - result.added
    return result


def execute_plan(
    contacts, plan: UpsertPlan, change_log=None, import_id: ObjectId | None = None
) -> BatchResult:
    """Write a plan with one unordered ``bulk_write``; failed operations become import errors.

    With ``change_log`` and ``import_id``, the plan's changes are logged first in one
    ``insert_many``; the entries of operations that then fail are taken out again.
    """
    result = _unwritten_result(plan)
    if not plan.operations:
        return result
    log_ids: list[ObjectId | None] = [None] * len(plan.planned)
    if change_log is not None and import_id is not None:
        log_ids = _log_changes(change_log, plan.planned, import_id)
    try:
        outcome = contacts.bulk_write(plan.operations, ordered=False).bulk_api_result
    except BulkWriteError as error:
        outcome = error.details
    write_errors = outcome.get("writeErrors", [])
    for write_error in write_errors:
        planned = plan.planned[write_error["index"]]
        result.errors.append(
            ImportErrorEntry(
                message=_write_error_message(write_error),
                email=planned.email,
                stripe_customer_id=planned.stripe_customer_id,
            )
        )
    failed_logs = [log_ids[e["index"]] for e in write_errors if log_ids[e["index"]] is not None]
    if failed_logs:
        change_log.delete_many({"_id": {"$in": failed_logs}})
    result.added = outcome.get("nUpserted", 0)
    result.updated = outcome.get("nMatched", 0)
    # An update whose contact was deleted while the import ran matched nothing: not written.
    gone = len(plan.operations) - len(write_errors) - result.added - result.updated
    if gone:
        result.skipped += gone
        result.skip_reasons[SKIP_CONTACT_GONE] = gone
    return result


def _unwritten_result(plan: UpsertPlan) -> BatchResult:
    reasons: dict[str, int] = {}
    for skip in plan.skipped:
        reasons[skip.reason] = reasons.get(skip.reason, 0) + 1
    return BatchResult(
        skipped=len(plan.skipped),
        errors=list(plan.errors),
        duplicates=list(plan.duplicates),
        skipped_customers=list(plan.skipped),
        skip_reasons=reasons,
        samples=list(plan.samples),
        preview=list(plan.preview),
    )


def _log_changes(
    change_log, planned: list[PlannedChange], import_id: ObjectId
) -> list[ObjectId | None]:
    """Insert the log entries of a batch in one round trip; their ids, by operation."""
    ids: list[ObjectId | None] = []
    documents = []
    for change in planned:
        document = change.log_document(import_id)
        if document is None:
            ids.append(None)
            continue
        document["_id"] = ObjectId()
        ids.append(document["_id"])
        documents.append(document)
    if documents:
        change_log.insert_many(documents, ordered=False)
    return ids


def backfill_email_keys(
    contacts, target: UpsertTarget, seen: SeenCustomers | None = None
) -> BackfillResult:
    """Give the target's contacts that other tools created (no ``email_key``) their key.

    A second contact with the same email cannot take the key (unique index); it is counted as a
    conflict and the import matches the first one. A dry run writes nothing: it counts what it
    would do and keeps those contacts in ``seen`` so they still match by email.
    """
    projection = _projection(target) if target.dry_run else {"_id": 1, "email": 1}
    updated = conflicts = 0
    batch: list[UpdateOne] = []
    would_key = seen.unkeyed if seen is not None else {}
    for contact in _pages(
        contacts, {**target.scope(), "email": {"$type": "string"}, "email_key": None}, projection
    ):
        email_key = normalize_email(contact["email"])
        if email_key is None:
            continue
        if target.dry_run:
            if email_key in would_key:
                conflicts += 1
            else:
                would_key[email_key] = {**contact, "email_key": email_key}
                updated += 1
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


def _pages(contacts, query: dict[str, Any], projection: dict[str, int]) -> Iterator[dict]:
    """The documents of ``query`` in ``_id`` order, :data:`BACKFILL_READ_SIZE` a read, so
    memory does not grow with the account (a retried read holds its whole answer)."""
    after: ObjectId | None = None
    size = BACKFILL_READ_SIZE
    while True:
        page_query = query if after is None else {**query, "_id": {"$gt": after}}
        # One more than a page: the last read is the one that finds nothing after it, without
        # a read of its own when the account has exactly a page.
        page = list(contacts.find(page_query, projection, sort=[("_id", 1)], limit=size + 1))
        yield from page[:size]
        if len(page) <= size:
            return
        after = page[size - 1]["_id"]


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


def field_changes(contact: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, FieldChange]:
    """The fields a ``$set`` of ``values`` changes on ``contact``, with their values before.

    A path under an object the contact lacks is reported at that object (``address`` rather
    than ``address.city`` when the contact had no address), so that restoring ``before``
    removes what the ``$set`` created. Unchanged fields are left out.
    """
    changes: dict[str, FieldChange] = {}
    for path, value in values.items():
        segments = path.split(".")
        present, before = _present_depth(contact, segments)
        if present == len(segments):
            if before != value:
                changes[path] = FieldChange(before=before, after=value, existed=True)
            continue
        unit = ".".join(segments[: present + 1])
        if present + 1 == len(segments):
            changes[unit] = FieldChange(before=None, after=value, existed=False)
            continue
        after = changes.setdefault(unit, FieldChange(before=None, after={}, existed=False)).after
        for segment in segments[present + 1 : -1]:
            after = after.setdefault(segment, {})
        after[segments[-1]] = value
    return changes


def _present_depth(document: Mapping[str, Any], segments: list[str]) -> tuple[int, Any]:
    """How many leading segments of a path ``document`` has, and the value the last one holds."""
    value: Any = document
    for depth, segment in enumerate(segments):
        if not isinstance(value, Mapping) or segment not in value:
            return depth, None
        value = value[segment]
    return len(segments), value


def _projection(target: UpsertTarget) -> dict[str, int]:
    """What planning reads of a contact: its keys, its type and every field the import sets."""
    projection = {
        "_id": 1,
        "type": 1,
        "email": 1,
        "email_key": 1,
        "stripe_customer_id": 1,
        "old_field_values": 1,
        "stripe_deleted": 1,
    }
    for mapping in target.mappings:
        projection[mapping.crm_path[0]] = 1
    return projection


def _update_existing(
    contact: Mapping[str, Any],
    mapped: dict[str, Any],
    email_key: str | None,
    target: UpsertTarget,
) -> dict[str, Any]:
    """The update that writes ``mapped`` onto ``contact``. A contact a sync archived
    (``stripe_deleted``) that a live customer now writes is live again, in the same write."""
    if not target.mappings:
        update: dict[str, Any] = {"$set": {"stripe_customer_id": mapped["stripe_customer_id"]}}
    else:
        values = set_fields(mapped)
        if values.get("email") is None:
            # Stripe has no email for this customer: keep the contact's.
            values.pop("email", None)
        else:
            values["email_key"] = email_key
        values = _settable(values, contact)
        values["old_field_values"] = old_field_values(contact, target.mappings)
        update = {"$set": values}
    if contact.get("stripe_deleted"):
        update["$unset"] = {"stripe_deleted": "", "stripe_deleted_at": ""}
    return update


def _create(
    customer_id: str,
    email: str | None,
    mapped: dict[str, Any],
    email_key: str | None,
    target: UpsertTarget,
    now: datetime,
) -> tuple[UpdateOne, dict[str, Any], PlannedChange]:
    values = set_fields(mapped)
    if email_key is not None:
        key = {"email_key": email_key}
    else:
        values.pop("email", None)
        key = {"stripe_customer_id": values.pop("stripe_customer_id")}
    contact_id = ObjectId()
    on_insert = {
        "owner": target.user_id,
        "created_by": target.user_id,
        "source": CONTACT_SOURCE,
        "createdAt": now,
    }
    update = {"$setOnInsert": {"_id": contact_id, **on_insert}, "$set": values}
    created = {**target.scope(), **key, **on_insert}
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = created
        for segment in parents:
            node = node.setdefault(segment, {})
        node[leaf] = value
    planned = PlannedChange(
        customer_id,
        email,
        "add",
        contact_id,
        {
            name: FieldChange(None, value, existed=False)
            for name, value in {**key, **values}.items()
        },
        created=created,
    )
    return (
        UpdateOne({**target.scope(), **key}, update, upsert=True),
        {"$set": {**key, **values}},
        planned,
    )


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
