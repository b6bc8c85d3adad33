"""``stripe_sync_state``: one document per account and contact type that is kept in step.

This module is the one owner of these documents. A ``keep_in_sync`` import that completes writes
the state (:func:`record_full_import`), with the events cursor taken when that import started;
``billing_sync_sensor`` reads the states that are due (:func:`due_sync_states`); a sync run counts
its attempt (:func:`start_sync_attempt`), then moves the cursor after its writes
(:func:`advance_cursor`), records why it failed (:func:`record_sync_error`), or queues a full
import when its cursor is too old (:func:`queue_resync`). ``enabled: false`` pauses a state
(:func:`set_enabled`).

A state holds what a resync request needs to be queued exactly as the CRM would have written it
(``mappings``, ``new_contact``, ``deletion_policy``, ``user_id``, ``parent_account``,
``client_id``), never a Stripe key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import queue
from stripe_crm_pipelines.billing_import.requests import CONTACT_TYPES, IMPORT_SOURCE

SYNC_STATE = store.SYNC_STATES
"""The collection of sync states; :func:`stripe_crm_pipelines.store.ensure_indexes` keeps one
per account and contact type."""
DEFAULT_SYNC_INTERVAL_SECONDS = 300
DELETION_POLICIES = ("keep", "archive")
DEFAULT_DELETION_POLICY = "keep"
RESYNC_REASON = "resync"
IMPORT_TYPES = {contact_type: import_type for import_type, contact_type in CONTACT_TYPES.items()}
"""``person`` → ``contacts``, ``business`` → ``companies``: the request type of a contact type."""


@dataclass(frozen=True)
class EventsCursor:
    """Where the next sync starts reading the account's events.

    ``event_id`` is the newest event already applied; every event after it is read. Without one
    (the account had no events when the cursor was taken), every event created at or after
    ``created`` (epoch seconds) is read. ``created`` also dates the cursor: Stripe keeps events
    for 30 days, so a cursor older than that may have lost changes.
    """

    event_id: str | None
    created: int

    def as_document(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "created": self.created}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> EventsCursor:
        event_id = document.get("event_id")
        return cls(
            event_id=event_id if isinstance(event_id, str) else None,
            created=int(document["created"]),
        )


@dataclass(frozen=True)
class SyncState:
    """A ``stripe_sync_state`` document, parsed."""

    id: ObjectId
    account_id: ObjectId
    contact_type: str
    """``person`` or ``business``."""
    mappings: dict[str, Any]
    """The request's raw ``{stripe_key: crm_field}`` object, as the import validated it."""
    new_contact: bool
    deletion_policy: str
    user_id: ObjectId
    parent_account: ObjectId | None
    client_id: ObjectId | None
    events_cursor: EventsCursor
    sync_interval_seconds: int
    enabled: bool
    attempts: int
    last_full_import_at: datetime | None
    last_synced_at: datetime | None
    last_attempt_at: datetime | None
    last_error: str | None
    resync_import_id: ObjectId | None

    @property
    def import_type(self) -> str:
        """``contacts`` or ``companies``: the ``type`` of this state's import requests."""
        return IMPORT_TYPES[self.contact_type]

    def is_due(self, now: datetime) -> bool:
        """Enabled, no resync waiting, and neither synced nor tried within its interval."""
        if not self.enabled or self.resync_import_id is not None:
            return False
        times = [t for t in (self.last_synced_at, self.last_attempt_at) if t is not None]
        if not times:
            return True
        return max(_aware(t) for t in times) + timedelta(seconds=self.sync_interval_seconds) <= now


def record_full_import(
    db,
    *,
    account_id: ObjectId,
    import_type: str,
    user_id: ObjectId,
    mappings: Mapping[str, Any] | None,
    new_contact: bool,
    deletion_policy: str | None,
    events_cursor: EventsCursor,
    finished_at: datetime,
    parent_account: ObjectId | None = None,
    client_id: ObjectId | None = None,
    import_id: ObjectId | None = None,
    sync_interval_seconds: int | None = None,
) -> ObjectId:
    """Start (or restart) keeping an account's contacts of one type in step after a completed
    ``keep_in_sync`` import; returns the state's id.

    ``events_cursor`` must be the one taken when the import started
    (:func:`~stripe_crm_pipelines.billing_sync.events.events_cursor_at_start`), so changes made
    while the import ran are applied by the first sync. The state replaces any earlier one of
    the same account and type (its error and waiting resync included); a pause
    (``enabled: false``) stays, and so does a custom ``sync_interval_seconds`` unless the request
    sets one (``sync_interval_seconds``, default :data:`DEFAULT_SYNC_INTERVAL_SECONDS`). The
    first sync is due at once.
    """
    contact_type = CONTACT_TYPES[import_type]
    policy = deletion_policy or DEFAULT_DELETION_POLICY
    if policy not in DELETION_POLICIES:
        raise ValueError(f"deletion_policy: {policy!r} is not one of {DELETION_POLICIES}")
    if sync_interval_seconds is not None and sync_interval_seconds < 1:
        raise ValueError(f"sync_interval_seconds: must be positive, got {sync_interval_seconds}")
    interval = {"sync_interval_seconds": sync_interval_seconds} if sync_interval_seconds else {}
    on_insert = {} if interval else {"sync_interval_seconds": DEFAULT_SYNC_INTERVAL_SECONDS}
    saved = db[SYNC_STATE].find_one_and_update(
        {"account_id": account_id, "type": contact_type},
        {
            "$set": {
                **interval,
                "mappings": dict(mappings or {}),
                "new_contact": new_contact,
                "deletion_policy": policy,
                "user_id": user_id,
                "parent_account": parent_account,
                "client_id": client_id,
                "import_id": import_id,
                "events_cursor": events_cursor.as_document(),
                "last_full_import_at": finished_at,
                "last_synced_at": None,
                "last_attempt_at": None,
                "last_error": None,
                "resync_import_id": None,
                "updated_at": finished_at,
            },
            "$setOnInsert": {
                "enabled": True,
                **on_insert,
                "attempts": 0,
                "created_at": finished_at,
            },
        },
        upsert=True,
        projection={"_id": 1},
        return_document=ReturnDocument.AFTER,
    )
    return saved["_id"]


class InvalidSyncState(ValueError):
    """A state document the sync cannot use (a person edited it badly); the message names the
    state and the field."""


def parse_sync_state(document: Mapping[str, Any]) -> SyncState:
    """A state document as typed values; fields a person may leave out get their defaults.

    Raises :class:`InvalidSyncState` naming the field that is missing or of the wrong kind.
    """
    try:
        return _parse_sync_state(document)
    except InvalidSyncState:
        raise
    except KeyError as error:
        raise InvalidSyncState(
            f"Sync state {document.get('_id')}: field {error} is missing"
        ) from None
    except (TypeError, ValueError) as error:
        raise InvalidSyncState(f"Sync state {document.get('_id')}: {error}") from None


def _parse_sync_state(document: Mapping[str, Any]) -> SyncState:
    name = f"Sync state {document.get('_id')}"
    interval = document.get("sync_interval_seconds")
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 1
    ):
        raise InvalidSyncState(
            f"{name}: sync_interval_seconds must be a number of seconds, at least 1, not "
            f"{interval!r}"
        )
    if document.get("type") not in IMPORT_TYPES:
        expected = " or ".join(repr(contact_type) for contact_type in IMPORT_TYPES)
        raise InvalidSyncState(f"{name}: type must be {expected}, not {document.get('type')!r}")
    for field_name in ("last_synced_at", "last_attempt_at", "last_full_import_at"):
        value = document.get(field_name)
        if value is not None and not isinstance(value, datetime):
            raise InvalidSyncState(f"{name}: {field_name} must be a date, not {value!r}")
    enabled = document.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidSyncState(f"{name}: enabled must be true or false, not {enabled!r}")
    cursor = document["events_cursor"]
    if not isinstance(cursor, Mapping):
        raise InvalidSyncState(f"{name}: events_cursor must be a document, not {cursor!r}")
    return SyncState(
        id=document["_id"],
        account_id=document["account_id"],
        contact_type=document["type"],
        mappings=dict(document.get("mappings") or {}),
        new_contact=bool(document.get("new_contact")),
        deletion_policy=document.get("deletion_policy") or DEFAULT_DELETION_POLICY,
        user_id=document["user_id"],
        parent_account=document.get("parent_account"),
        client_id=document.get("client_id"),
        events_cursor=EventsCursor.from_document(cursor),
        sync_interval_seconds=int(interval) if interval else DEFAULT_SYNC_INTERVAL_SECONDS,
        enabled=enabled,
        attempts=int(document.get("attempts") or 0),
        last_full_import_at=document.get("last_full_import_at"),
        last_synced_at=document.get("last_synced_at"),
        last_attempt_at=document.get("last_attempt_at"),
        last_error=document.get("last_error"),
        resync_import_id=document.get("resync_import_id"),
    )


def load_sync_state(db, account_id: ObjectId, contact_type: str) -> SyncState | None:
    document = db[SYNC_STATE].find_one({"account_id": account_id, "type": contact_type})
    return None if document is None else parse_sync_state(document)


def due_sync_states(
    db, now: datetime, invalid: list[InvalidSyncState] | None = None
) -> list[SyncState]:
    """The enabled states whose next sync is due, longest waiting first.

    A state that cannot be parsed is left out (the others still sync), its reason saved as its
    ``last_error`` and appended to ``invalid``."""
    due = []
    for document in db[SYNC_STATE].find({"enabled": {"$ne": False}, "resync_import_id": None}):
        try:
            state = parse_sync_state(document)
        except InvalidSyncState as error:
            if document.get("last_error") != str(error):
                db[SYNC_STATE].update_one(
                    {"_id": document["_id"]},
                    {"$set": {"last_error": str(error), "updated_at": now}},
                )
            if invalid is not None:
                invalid.append(error)
            continue
        if state.is_due(now):
            due.append(state)
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(due, key=lambda s: _aware(s.last_synced_at or s.last_attempt_at or epoch))


def start_sync_attempt(db, state_id: ObjectId, run_id: str, now: datetime) -> None:
    """Count a sync run's attempt, so the sensor asks for the next one under a new run key."""
    db[SYNC_STATE].update_one(
        {"_id": state_id},
        {"$set": {"last_attempt_at": now, "sync_run_id": run_id}, "$inc": {"attempts": 1}},
    )


def skip_unstarted_attempt(
    db, state_id: ObjectId, run_id: str, message: str, now: datetime
) -> None:
    """Count the attempt of a run that ended before it started (terminated while queued, failed
    to start, failed before the op counted it), with the reason on the state: the next run has a
    new run key, and comes when the state is due again."""
    db[SYNC_STATE].update_one(
        {"_id": state_id},
        {
            "$set": {
                "last_attempt_at": now,
                "sync_run_id": run_id,
                "last_error": message,
                "updated_at": now,
            },
            "$inc": {"attempts": 1},
        },
    )


def advance_cursor(db, state_id: ObjectId, cursor: EventsCursor, synced_at: datetime) -> None:
    """Move the cursor past events whose changes are written; the sync succeeded."""
    db[SYNC_STATE].update_one(
        {"_id": state_id},
        {
            "$set": {
                "events_cursor": cursor.as_document(),
                "last_synced_at": synced_at,
                "last_error": None,
                "updated_at": synced_at,
            }
        },
    )


def record_sync_error(db, state_id: ObjectId, message: str, at: datetime) -> None:
    """Say on the state why its last sync failed; the cursor stays, so nothing is skipped."""
    db[SYNC_STATE].update_one(
        {"_id": state_id}, {"$set": {"last_error": message, "updated_at": at}}
    )


def set_enabled(db, account_id: ObjectId, contact_type: str, enabled: bool) -> bool:
    """Pause (``False``) or resume syncing; returns whether such a state exists."""
    changed = db[SYNC_STATE].update_one(
        {"account_id": account_id, "type": contact_type}, {"$set": {"enabled": enabled}}
    )
    return changed.matched_count == 1


def queue_resync(db, state: SyncState, reason: str, now: datetime) -> ObjectId:
    """Queue a full ``keep_in_sync`` import of the state's account and type (``reason:
    'resync'``) and hold the state's syncs until it completes; returns the request's id.

    The request has the fields of a request the CRM writes, with the state's mappings,
    ``new_contact`` and ``deletion_policy``. ``reason`` becomes the state's ``last_error``, so
    the gap is never silent. A resync request already waiting for the state is reused.
    """
    if state.resync_import_id is not None:
        waiting = db[store.QUEUES].find_one(
            {"_id": state.resync_import_id, "status": "pending"}, {"_id": 1}
        )
        if waiting is not None:
            return waiting["_id"]
    import_id = queue.enqueue(
        db,
        {
            "status": "pending",
            "source": IMPORT_SOURCE,
            "in_progress": False,
            "type": state.import_type,
            "account_id": state.account_id,
            "user_id": state.user_id,
            "parent_account": state.parent_account,
            "client_id": state.client_id,
            "mappings": dict(state.mappings),
            "new_contact": state.new_contact,
            "keep_in_sync": True,
            "deletion_policy": state.deletion_policy,
            "reason": RESYNC_REASON,
            "queued_by": "sync",
            "createdAt": now,
        },
    )
    db[SYNC_STATE].update_one(
        {"_id": state.id},
        {
            "$set": {
                "resync_import_id": import_id,
                "last_error": f"{reason}; full import {import_id} queued (reason 'resync')",
                "updated_at": now,
            }
        },
    )
    return import_id


def _aware(moment: datetime) -> datetime:
    """Stores without ``tz_aware`` hand back naive UTC datetimes."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
