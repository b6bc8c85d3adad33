"""One incremental sync of an account's contacts of one type: the engine, free of Dagster.

:func:`run_sync` reads the customer events after the state's cursor
(:mod:`~stripe_crm_pipelines.billing_sync.events`), writes each changed customer's newest state
with the import's own matching and bulk writes (:mod:`~stripe_crm_pipelines.billing_import.upsert`),
applies deletions by the state's ``deletion_policy``, and only then moves the cursor. A crash
between the writes and the cursor re-reads the same events next time; applying them again
changes nothing, because a customer whose contact already holds its values is left alone
(``old_field_values`` included) and an archived contact is not archived twice.

Deletion policies: ``keep`` leaves the contact of a deleted customer as it is; ``archive`` sets
``stripe_deleted: true`` and ``stripe_deleted_at`` (when Stripe deleted it). Nothing is ever
deleted from the CRM. An archived contact that a live customer writes again (a new customer
with its email), by a sync or an import, loses both fields in that same write.

Every run writes a ``contact_import_results`` document named ``stripe-sync`` with its counts and
the Stripe requests it used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import stripe
from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.mapping import (
    get_path,
    map_customer,
    parse_mappings,
    set_fields,
)
from stripe_crm_pipelines.billing_import.upsert import (
    PlannedChange,
    SeenCustomers,
    UpsertPlan,
    UpsertTarget,
    backfill_email_keys,
    execute_plan,
    find_existing_contacts,
    plan_upserts,
)
from stripe_crm_pipelines.billing_sync.events import (
    CustomerChange,
    StaleCursor,
    cursor_after_quiet_read,
    read_customer_events,
)
from stripe_crm_pipelines.billing_sync.state import (
    SyncState,
    advance_cursor,
    queue_resync,
    record_sync_error,
)
from stripe_crm_pipelines.errors import is_transient
from stripe_crm_pipelines.resources.stripe import RequestStats, stripe_error_message

SYNC_RESULT_NAME = "stripe-sync"
MAX_LISTED_ERRORS = 1000
SYNC_STATUSES = ("completed", "failed", "resync_queued")


@dataclass
class SyncOutcome:
    """What one sync did; the counts of its ``contact_import_results`` document."""

    account_id: ObjectId
    contact_type: str
    user_id: ObjectId
    run_id: str
    started_at: datetime
    status: str = "completed"
    """One of :data:`SYNC_STATUSES`."""
    finished_at: datetime | None = None
    events_read: int = 0
    customers_changed: int = 0
    records_added: int = 0
    records_updated: int = 0
    records_unchanged: int = 0
    """Customers whose contact already held their newest state (an event applied before)."""
    records_skipped: int = 0
    records_archived: int = 0
    deletions_kept: int = 0
    """Deleted customers whose contact stays as it is (``deletion_policy: keep``)."""
    duplicates: int = 0
    import_errors_count: int = 0
    importerrors: list[dict[str, Any]] = field(default_factory=list)
    stripe_requests: int = 0
    stripe_retries: int = 0
    error: str | None = None
    transient: bool = False
    """Whether the failure may go away by itself (the run may retry)."""
    resync_import_id: ObjectId | None = None
    written_customer_ids: list[str] = field(default_factory=list)
    """Customers this sync expects a contact for: written, or already up to date (not known, so
    empty, when ``resumed``)."""
    failure: BaseException | None = field(default=None, repr=False)
    """The unexpected exception behind a failure (not a Stripe or MongoDB error), for the run
    page's traceback; never saved."""
    resumed: bool = False
    """Read back from the result an earlier attempt of the run saved (:func:`finished_sync`)."""

    @property
    def duration_seconds(self) -> float:
        end = self.finished_at or datetime.now(UTC)
        return round((end - self.started_at).total_seconds(), 3)

    def counts(self) -> dict[str, int]:
        """The counts the result document, the run page and the asset catalog all show."""
        return {
            "events_read": self.events_read,
            "customers_changed": self.customers_changed,
            "records_added": self.records_added,
            "records_updated": self.records_updated,
            "records_unchanged": self.records_unchanged,
            "records_skipped": self.records_skipped,
            "records_archived": self.records_archived,
            "deletions_kept": self.deletions_kept,
            "duplicates": self.duplicates,
            "import_errors_count": self.import_errors_count,
            "stripe_requests": self.stripe_requests,
        }

    def result_document(self) -> dict[str, Any]:
        """The ``contact_import_results`` document of this sync."""
        document: dict[str, Any] = {
            "status": self.status,
            "name": SYNC_RESULT_NAME,
            "type": self.contact_type,
            **self.counts(),
            "stripe_retries": self.stripe_retries,
            "importerrors": list(self.importerrors),
            "user_id": self.user_id,
            "account_id": str(self.account_id),
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        if self.error is not None:
            document["error"] = self.error
        if self.resync_import_id is not None:
            document["resync_import_id"] = self.resync_import_id
        return document


def run_sync(
    db,
    client: stripe.StripeClient,
    state: SyncState,
    *,
    run_id: str,
    stats: RequestStats,
    now: float | None = None,
) -> SyncOutcome:
    """Sync one state: read events after its cursor, write the changes, then move the cursor.

    Never raises: a failure (Stripe, MongoDB, or an event or mapping this code cannot read) is
    recorded on the state (``last_error``) and in the result, with the cursor left where it was;
    a stale cursor queues a full import (``reason: 'resync'``). ``stats`` is the request
    counter ``client`` was built with
    (:meth:`~stripe_crm_pipelines.resources.StripeResource.client`), for the reads accounting;
    ``now`` (epoch seconds) is the clock the cursor's age is judged by.
    """
    outcome = new_outcome(state, run_id)
    try:
        read = read_customer_events(client, state.events_cursor, now=now)
        outcome.events_read = read.events_read
        outcome.customers_changed = len(read.changes)
        apply_changes(db, state, read.changes, outcome)
        finished = datetime.now(UTC)
        cursor = read.cursor or cursor_after_quiet_read(state.events_cursor, now)
        # The result first: a retry after the cursor moved reads it back (finished_sync); one
        # after a save but not the move re-applies events already applied, which changes nothing.
        _count_requests(outcome, stats)
        finish(db, outcome)
        advance_cursor(db, state.id, cursor, finished)
        return outcome
    except StaleCursor as stale:
        outcome.status = "resync_queued"
        outcome.error = f"Events cursor is stale: {stale}"
        outcome.resync_import_id = queue_resync(db, state, outcome.error, datetime.now(UTC))
    except (stripe.StripeError, PyMongoError) as error:
        outcome.status = "failed"
        outcome.transient = is_transient(error)
        outcome.error = describe_failure(error)
        record_sync_error(db, state.id, outcome.error, datetime.now(UTC))
    except Exception as error:
        # An event page or mapping this code cannot read (it will not read better next time):
        # recorded where people look, the cursor unmoved.
        outcome.status = "failed"
        outcome.error = f"Sync failed unexpectedly: {type(error).__name__}: {error}"
        outcome.failure = error
        record_sync_error(db, state.id, outcome.error, datetime.now(UTC))
    _count_requests(outcome, stats)
    finish(db, outcome)
    return outcome


def _count_requests(outcome: SyncOutcome, stats: RequestStats) -> None:
    outcome.stripe_requests = stats.requests
    outcome.stripe_retries = stats.retries


def finished_sync(db, state: SyncState, run_id: str) -> SyncOutcome | None:
    """The outcome an earlier attempt of run ``run_id`` saved once it had written its changes
    (just before moving the cursor) or queued a resync, read back from its result; None if no
    attempt got that far. A retry of the
    run records that outcome rather than syncing again: the events are behind the cursor now,
    and a second pass would replace the result with an empty one. The customers it wrote are
    not in the result: the outcome is ``resumed``, without them."""
    document = db[store.IMPORT_RESULTS].find_one(
        {
            "name": SYNC_RESULT_NAME,
            "run_id": run_id,
            "account_id": str(state.account_id),
            "type": state.contact_type,
            "status": {"$in": ["completed", "resync_queued"]},
        }
    )
    if document is None:
        return None
    outcome = new_outcome(state, run_id)
    for name in outcome.counts():
        setattr(outcome, name, document.get(name, 0))
    outcome.status = document["status"]
    outcome.started_at = document["started_at"]
    outcome.finished_at = document["finished_at"]
    outcome.stripe_retries = document.get("stripe_retries", 0)
    outcome.importerrors = list(document.get("importerrors", []))
    outcome.error = document.get("error")
    outcome.resync_import_id = document.get("resync_import_id")
    outcome.resumed = True
    return outcome


def record_failed_sync(db, state: SyncState, message: str, *, run_id: str) -> SyncOutcome:
    """A sync that could not start (no usable Stripe key): the state and a result say why."""
    outcome = new_outcome(state, run_id)
    outcome.status = "failed"
    outcome.error = message
    record_sync_error(db, state.id, message, datetime.now(UTC))
    finish(db, outcome)
    return outcome


def new_outcome(state: SyncState, run_id: str) -> SyncOutcome:
    return SyncOutcome(
        account_id=state.account_id,
        contact_type=state.contact_type,
        user_id=state.user_id,
        run_id=run_id,
        started_at=datetime.now(UTC),
    )


def finish(db, outcome: SyncOutcome) -> ObjectId:
    """Stamp the end and save the result, once per run even when a step is retried."""
    outcome.finished_at = datetime.now(UTC)
    document = outcome.result_document()
    saved = db[store.IMPORT_RESULTS].find_one_and_replace(
        {
            "name": SYNC_RESULT_NAME,
            "run_id": outcome.run_id,
            "account_id": document["account_id"],
            "type": outcome.contact_type,
        },
        document,
        projection={"_id": 1},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return saved["_id"]


def apply_changes(
    db, state: SyncState, changes: Sequence[CustomerChange], outcome: SyncOutcome
) -> None:
    """Write the customers' newest states and apply deletions; counts go to ``outcome``.

    Live customers are matched and written as an import writes them (contacts without an email
    key get theirs, then one query and one unordered bulk write), the most recently changed
    first so that, as in an import, the newest of two customers with one email wins. Customers
    whose contact (of the state's type) already holds their values are not written at all, but
    they are planned with the others first, so an older customer sharing their email stays a
    duplicate: the same events applied twice change nothing.
    """
    contacts = db[store.CONTACTS]
    target = UpsertTarget(
        account_id=state.account_id,
        contact_type=state.contact_type,
        user_id=state.user_id,
        new_contact=state.new_contact,
        mappings=parse_mappings(state.mappings),
    )
    live = [change.customer for change in reversed(changes) if not change.deleted]
    if live:
        # Contacts the CRM created since the last run have no email key yet; give it to them
        # first, as an import does, so a customer with their email matches them.
        backfill_email_keys(contacts, target)
        existing = find_existing_contacts(contacts, live, target)
        plan = plan_upserts(live, existing, target, SeenCustomers())
        unchanged = _drop_unchanged(plan, existing, live, target)
        outcome.records_unchanged += len(unchanged)
        outcome.written_customer_ids.extend(unchanged)
        result = execute_plan(contacts, plan)
        failed = {error.stripe_customer_id for error in result.errors}
        outcome.written_customer_ids.extend(
            change.stripe_customer_id
            for change in plan.planned
            if change.stripe_customer_id not in failed
        )
        outcome.records_added += result.added
        outcome.records_updated += result.updated
        outcome.records_skipped += result.skipped
        outcome.duplicates += len(result.duplicates)
        outcome.import_errors_count += len(result.errors)
        room = MAX_LISTED_ERRORS - len(outcome.importerrors)
        outcome.importerrors.extend(error.as_document() for error in result.errors[:room])
    deleted = [change for change in changes if change.deleted]
    if state.deletion_policy == "archive":
        outcome.records_archived += archive_contacts(contacts, target, deleted)
    else:
        outcome.deletions_kept += len(deleted)


def _drop_unchanged(
    plan: UpsertPlan,
    existing: Sequence[Mapping[str, Any]],
    customers: Sequence[Mapping[str, Any]],
    target: UpsertTarget,
) -> list[str]:
    """Take the updates of contacts that already hold their customer's values out of ``plan``;
    the ids of those customers."""
    contacts = {c["_id"]: c for c in existing if c.get("type") == target.contact_type}
    by_id = {customer["id"]: customer for customer in customers}
    kept: list[tuple[UpdateOne, PlannedChange]] = []
    unchanged: list[str] = []
    for operation, change in zip(plan.operations, plan.planned, strict=True):
        contact = contacts.get(change.contact_id) if change.action == "update" else None
        customer = by_id.get(change.stripe_customer_id)
        if (
            contact is not None
            and customer is not None
            and holds_customer(contact, customer, target)
        ):
            unchanged.append(change.stripe_customer_id)
        else:
            kept.append((operation, change))
    plan.operations = [operation for operation, _ in kept]
    plan.planned = [change for _, change in kept]
    return unchanged


def holds_customer(
    contact: Mapping[str, Any], customer: Mapping[str, Any], target: UpsertTarget
) -> bool:
    """Whether ``contact`` already has every value a sync of ``customer`` would write; an
    archived contact does not (the write makes it live again)."""
    if contact.get("stripe_deleted"):
        return False
    try:
        values = set_fields(map_customer(customer, target.mappings))
    except ValueError:
        return False
    if not target.mappings:
        return contact.get("stripe_customer_id") == values["stripe_customer_id"]
    if values.get("email") is None:
        values.pop("email", None)
    return all(get_path(contact, path) == value for path, value in values.items())


def archive_contacts(contacts, target: UpsertTarget, deleted: Sequence[CustomerChange]) -> int:
    """Mark the contacts of deleted customers ``stripe_deleted`` (once); returns how many."""
    operations = [
        UpdateOne(
            {
                **target.scope(),
                "stripe_customer_id": change.customer_id,
                "stripe_deleted": {"$ne": True},
            },
            {
                "$set": {
                    "stripe_deleted": True,
                    "stripe_deleted_at": datetime.fromtimestamp(change.created, UTC),
                }
            },
        )
        for change in deleted
    ]
    if not operations:
        return 0
    try:
        outcome = contacts.bulk_write(operations, ordered=False).bulk_api_result
    except BulkWriteError as error:
        outcome = error.details
    return outcome.get("nMatched", 0)


def describe_failure(error: Exception) -> str:
    """A failure message for the state and the run page; never contains a key."""
    if isinstance(error, stripe.AuthenticationError | stripe.PermissionError):
        return f"Stripe rejected the account's billing key: {stripe_error_message(error)}"
    if isinstance(error, stripe.StripeError) and is_transient(error):
        return f"Stripe is unavailable: {stripe_error_message(error)}"
    if isinstance(error, stripe.StripeError):
        return f"Stripe refused the events listing: {stripe_error_message(error)}"
    return f"MongoDB error: {type(error).__name__}: {error}"
