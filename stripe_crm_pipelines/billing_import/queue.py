"""The import request (a ``queues`` document) and every change made to it.

This module is the only one that writes a ``queues`` document. A billing import request moves
through these states:

* **pending** (``status: pending``, ``in_progress: false``), as the CRM writes it; the sensor lists
  these (:func:`pending_requests`);
* **claimed** by one run (:func:`claim`: ``in_progress``, ``claimed_by_run``, ``claimed_at``,
  ``attempts`` + 1), atomically, so a request is processed by one run only; while the run imports
  it stamps ``heartbeat_at`` (:func:`heartbeat`) and saves its progress after every batch
  (:func:`save_checkpoint`);
* **completed** (:func:`complete`), **failed** or **cancelled** (:func:`close`, :func:`fail`,
  :func:`cancel`): closed with its ``contact_import_results`` document, kept for audit;
* back to **pending** (:func:`requeue`) when its run died: the checkpoint becomes ``resume_from``,
  so the next run continues where the dead one stopped;
* back to **pending** without counting the attempt when its run lets it go: :func:`release`
  (another import or sync of the same account was found working, so it waits for a later run)
  and :func:`hand_off` (a small-import batch found the account large: the request keeps its
  checkpoint as ``resume_from`` and is marked ``own_run`` for a run of its own).

The CRM may set ``status: cancelled`` on a claimed request; the running import notices through
its heartbeat and closes it ``cancelled``. Every write after the claim is conditional on
``claimed_by_run``: a run that lost its claim (taken for dead and replaced) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.requests import (
    CONTACT_TYPES,
    IMPORT_SOURCE,
    ImportRequest,
    InvalidImportRequest,
    parse_import_request,
)
from stripe_crm_pipelines.billing_import.results import (
    ImportOutcome,
    result_document,
    save_result,
)

PENDING = "pending"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
CLOSED_STATUSES = (FAILED, CANCELLED)
"""How :func:`close` may end a request (:func:`complete` is the third way)."""

PENDING_FILTER: dict[str, Any] = {"source": IMPORT_SOURCE, "status": PENDING, "in_progress": False}
"""Requests waiting for a run."""
CLAIMED_FILTER: dict[str, Any] = {
    "source": IMPORT_SOURCE,
    "in_progress": True,
    "status": {"$in": [PENDING, CANCELLED]},
    "claimed_by_run": {"$type": "string"},
}
"""Requests a run of this project holds. ``in_progress`` without ``claimed_by_run`` is a claim
by another system (the Node.js queue manager): never ours to touch."""


class NotClaimable(Exception):
    """The request cannot be claimed (missing, not a billing import, held by another run, or not
    pending); it was left unchanged. The message says which."""


class ClaimRejected(Exception):
    """The claimed request is invalid; it was closed ``failed`` with :attr:`message`."""

    def __init__(self, message: str, outcome: ImportOutcome, result_id: ObjectId | None):
        super().__init__(message)
        self.message = message
        self.outcome = outcome
        self.result_id = result_id


class ClaimLost(Exception):
    """The run no longer holds the request: another run took it over (this one was taken for
    dead), or it was closed. Nothing was written."""


@dataclass(frozen=True)
class Checkpoint:
    """An import's progress, saved on its request after every written batch."""

    run_id: str
    """The run that saved it."""
    created_lte: int | None
    """The listing's snapshot: customers created up to this second. None: the server refused
    the ``created`` filter, so the listing goes on without a snapshot."""
    cursor: str | None
    """The last customer written; the listing resumes after it. None: nothing left to list."""
    outcome: ImportOutcome
    """The counts so far."""
    cursor_created: int | None = None
    """The ``created`` second of the cursor customer, to list again from if it is deleted."""

    def as_document(self, saved_at: datetime) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "cursor": self.cursor,
            "cursor_created": self.cursor_created,
            "created_lte": self.created_lte,
            "saved_at": saved_at,
            "outcome": self.outcome.checkpoint(),
        }

    @classmethod
    def from_document(cls, document: object) -> Checkpoint | None:
        """The checkpoint a request holds; None when it has none or one this project did not
        write (the import then starts over, which rewrites the same contacts)."""
        if not isinstance(document, Mapping) or not isinstance(document.get("outcome"), Mapping):
            return None
        created_lte, cursor = document.get("created_lte"), document.get("cursor")
        if not isinstance(created_lte, int | None) or not isinstance(cursor, str | None):
            return None
        cursor_created = document.get("cursor_created")
        return cls(
            run_id=str(document.get("run_id")),
            created_lte=created_lte,
            cursor=cursor,
            outcome=ImportOutcome.resume(dict(document["outcome"])),
            cursor_created=cursor_created if isinstance(cursor_created, int) else None,
        )


@dataclass(frozen=True)
class Claim:
    """A request claimed by a run, parsed once."""

    request: ImportRequest
    run_id: str
    claimed_at: datetime
    resume_from: Checkpoint | None
    """Where a dead earlier attempt stopped, if it wrote anything."""


class ClaimState(Enum):
    """What a heartbeat found."""

    HELD = "held"
    CANCEL_REQUESTED = "cancel_requested"
    """Still held, but the CRM set the request to ``cancelled``."""
    LOST = "lost"


@dataclass(frozen=True)
class HeldRequest:
    """A request a run of this project holds, as recovery needs to judge it."""

    import_id: ObjectId
    run_id: str
    attempts: int
    cancel_requested: bool
    claimed_at: datetime | None
    heartbeat_at: datetime | None
    outcome: ImportOutcome
    """The counts its last checkpoint saved, else zeros."""
    account_id: ObjectId | None = None


def pending_requests(db, fields: Mapping[str, int]) -> list[dict[str, Any]]:
    """The pending billing requests, newest first (as the seed), with ``fields`` only."""
    return list(
        db[store.QUEUES].find(PENDING_FILTER, dict(fields)).sort([("createdAt", -1), ("_id", -1)])
    )


def claim(db, import_id: ObjectId, run_id: str, now: datetime | None = None) -> Claim:
    """Claim a pending request for ``run_id`` atomically and parse it.

    Raises :class:`NotClaimable` (nothing changed) when it is not pending, and
    :class:`ClaimRejected` after closing it ``failed`` when it cannot be parsed. A claim retried
    after a lost reply finds its own first try.
    """
    now = now or datetime.now(UTC)
    document = db[store.QUEUES].find_one_and_update(
        {"_id": import_id, **PENDING_FILTER},
        {
            "$set": {"in_progress": True, "claimed_by_run": run_id, "claimed_at": now},
            "$inc": {"attempts": 1},
            "$unset": {"checkpoint": "", "error": ""},
        },
        return_document=ReturnDocument.AFTER,
    )
    if document is None:
        document = db[store.QUEUES].find_one(
            {"_id": import_id, "in_progress": True, "claimed_by_run": run_id}
        )
    if document is None:
        raise NotClaimable(_not_claimable(db, import_id))
    try:
        request = parse_import_request(document)
    except InvalidImportRequest as error:
        message = f"Invalid import request: {error}"
        outcome = outcome_so_far(document)
        outcome.finish()
        result_id = fail(db, import_id, run_id, outcome, message)
        raise ClaimRejected(message, outcome, result_id) from None
    claimed_at = document["claimed_at"] if isinstance(document.get("claimed_at"), datetime) else now
    return Claim(
        request=request,
        run_id=run_id,
        claimed_at=claimed_at,
        resume_from=Checkpoint.from_document(document.get("resume_from")),
    )


def saved_checkpoint(db, import_id: ObjectId, run_id: str) -> Checkpoint | None:
    """The checkpoint ``run_id`` saved itself (an earlier try of the same op); raises
    :class:`ClaimLost` when the run no longer holds the request."""
    document = db[store.QUEUES].find_one(
        {"_id": import_id, "in_progress": True, "claimed_by_run": run_id}, {"checkpoint": 1}
    )
    if document is None:
        raise ClaimLost(f"Import request {import_id} is no longer claimed by this run")
    # The claim cleared any older checkpoint: one saved since is this run's own.
    return Checkpoint.from_document(document.get("checkpoint"))


def save_checkpoint(db, import_id: ObjectId, checkpoint: Checkpoint) -> None:
    """Save the progress of the run holding the request; raises :class:`ClaimLost` if it no
    longer does."""
    saved = db[store.QUEUES].update_one(
        {"_id": import_id, "in_progress": True, "claimed_by_run": checkpoint.run_id},
        {"$set": {"checkpoint": checkpoint.as_document(datetime.now(UTC))}},
    )
    if saved.matched_count == 0:
        raise ClaimLost(f"Import request {import_id} is no longer claimed by this run; stopped")


def heartbeat(db, import_id: ObjectId, run_id: str) -> ClaimState:
    """Stamp ``heartbeat_at`` on a held request and read its status, in one round trip."""
    request = db[store.QUEUES].find_one_and_update(
        {"_id": import_id, "in_progress": True, "claimed_by_run": run_id},
        {"$set": {"heartbeat_at": datetime.now(UTC)}},
        projection={"status": 1},
    )
    if request is None:
        return ClaimState.LOST
    if request.get("status") == CANCELLED:
        return ClaimState.CANCEL_REQUESTED
    return ClaimState.HELD


def complete(
    db, import_id: ObjectId, run_id: str, outcome: ImportOutcome
) -> tuple[ObjectId | None, bool]:
    """Record a finished import's ``completed`` result and close its request ``completed``.

    A request the CRM set to ``cancelled`` after the last batch boundary, when every customer
    was written, is completed all the same, with :data:`CANCELLED_TOO_LATE` (a dry run:
    :data:`DRY_RUN_CANCELLED_TOO_LATE`) as the ``note`` of the request and the result.

    Returns the result's id and whether the request was closed; ``(None, False)`` when the run
    no longer holds it (recovery queued it again or closed it): the request is left unchanged
    and no result is written, so the request's own result stays the only one. Safe to repeat:
    the request this run completed matches again, and the result is written once per run.
    """
    finished_at = outcome.finished_at or datetime.now(UTC)
    before = db[store.QUEUES].find_one_and_update(
        {
            "_id": import_id,
            "claimed_by_run": run_id,
            "$or": [{"in_progress": True}, {"status": COMPLETED}],
        },
        {
            "$set": {
                "status": COMPLETED,
                "in_progress": False,
                "finished_at": finished_at,
            },
            "$unset": {"error": "", "resume_from": ""},
        },
        projection={"status": 1, "note": 1, "dry_run": 1},
    )
    if before is None:
        return None, False
    document = result_document(outcome, status=COMPLETED, run_id=run_id)
    note = before.get("note")
    if before.get("status") == CANCELLED:
        # The CRM asked to cancel after the last batch boundary: everything was written.
        note = DRY_RUN_CANCELLED_TOO_LATE if before.get("dry_run") else CANCELLED_TOO_LATE
        db[store.QUEUES].update_one({"_id": import_id}, {"$set": {"note": note}})
    if note in (CANCELLED_TOO_LATE, DRY_RUN_CANCELLED_TOO_LATE):
        document["note"] = note
    result_id = _record_result(db, {"_id": import_id, "claimed_by_run": run_id}, document)
    return result_id, True


CANCELLED_TOO_LATE = (
    "Cancel requested after every customer was written: the import completed; revert it to undo"
)
"""The ``note`` of a request (and its result) cancelled after its import's last write."""
DRY_RUN_CANCELLED_TOO_LATE = (
    "Cancel requested after the dry run had planned every customer: it completed, writing nothing"
)


def close(
    db,
    import_id: ObjectId,
    run_id: str,
    outcome: ImportOutcome,
    *,
    status: str,
    message: str,
) -> ObjectId | None:
    """Close a request ``run_id`` holds as ``failed`` or ``cancelled`` with ``message`` and
    record its result with the counts so far. None (and nothing written) if the run no longer
    holds it."""
    if status not in CLOSED_STATUSES:
        raise ValueError(f"status must be one of {CLOSED_STATUSES}, got {status!r}")
    held = {"_id": import_id, "in_progress": True, "claimed_by_run": run_id}
    closed = db[store.QUEUES].update_one(
        held,
        {
            "$set": {
                "status": status,
                "in_progress": False,
                "error": message,
                "finished_at": outcome.finished_at or datetime.now(UTC),
                "result_id": None,
            },
            "$unset": {"resume_from": ""},
        },
    )
    if closed.matched_count == 0:
        return None
    return _record_result(
        db,
        {"_id": import_id, "claimed_by_run": run_id},
        result_document(outcome, status=status, run_id=run_id, error=message),
    )


def _record_result(db, request: Mapping[str, Any], document: dict[str, Any]) -> ObjectId:
    """Save a closed request's result (once per run) and point the request matching
    ``request`` at it; the result's id."""
    result_id = save_result(db, document)
    db[store.QUEUES].update_one(request, {"$set": {"result_id": result_id}})
    return result_id


def fail(
    db, import_id: ObjectId, run_id: str, outcome: ImportOutcome, message: str
) -> ObjectId | None:
    """:func:`close` the request ``failed``."""
    return close(db, import_id, run_id, outcome, status=FAILED, message=message)


def cancel(
    db, import_id: ObjectId, run_id: str, outcome: ImportOutcome, message: str
) -> ObjectId | None:
    """:func:`close` the request ``cancelled``."""
    return close(db, import_id, run_id, outcome, status=CANCELLED, message=message)


def request_document(db, import_id: ObjectId) -> Mapping[str, Any] | None:
    """The request as stored (to read what a finished import was asked for)."""
    return db[store.QUEUES].find_one({"_id": import_id})


def enqueue(db, document: Mapping[str, Any]) -> ObjectId:
    """Insert a pending request built by :mod:`~stripe_crm_pipelines.billing_import.new_requests`
    (queued by a person, as the CRM would); returns its id."""
    return db[store.QUEUES].insert_one(dict(document)).inserted_id


def mark_reverted(db, import_id: ObjectId, at: datetime, result_id: ObjectId) -> None:
    """Stamp a completed request as reverted by ``result_id`` (it stays, for audit)."""
    db[store.QUEUES].update_one(
        {"_id": import_id}, {"$set": {"reverted_at": at, "revert_result_id": result_id}}
    )


def requeue(db, import_id: ObjectId, run_id: str, cause: str, now: datetime) -> bool:
    """Put a request a dead run held back to pending for another run; its checkpoint becomes
    ``resume_from``. False (nothing changed) if ``run_id`` no longer holds it, or the CRM has
    set it to ``cancelled`` (see :func:`held_request`)."""
    requeued = db[store.QUEUES].update_one(
        {**CLAIMED_FILTER, "status": PENDING, "_id": import_id, "claimed_by_run": run_id},
        {
            "$set": {
                "status": PENDING,
                "in_progress": False,
                "last_error": cause,
                "requeued_at": now,
            },
            "$unset": {"claimed_by_run": "", "claimed_at": "", "heartbeat_at": ""},
            "$rename": {"checkpoint": "resume_from"},
            "$push": {"failed_attempts": {"run_id": run_id, "error": cause, "at": now}},
        },
    )
    return requeued.matched_count > 0


def release(db, import_id: ObjectId, run_id: str, reason: str, now: datetime | None = None) -> bool:
    """Give a request ``run_id`` just claimed back, untouched, for a later run: it becomes
    pending, the attempt is not counted and ``releases`` goes up (so the sensor's next run key
    differs). False (nothing changed) if the run no longer holds it."""
    return _let_go(
        db,
        import_id,
        run_id,
        {"last_released": {"at": now or datetime.now(UTC), "run_id": run_id, "reason": reason}},
        keep_checkpoint=False,
    )


def hand_off(
    db, import_id: ObjectId, run_id: str, reason: str, now: datetime | None = None
) -> bool:
    """Pass a request ``run_id`` started on to a run of its own: it becomes pending with
    ``own_run: true``, its checkpoint becomes ``resume_from`` (the next run continues after what
    was written) and the attempt is not counted. False if the run no longer holds it."""
    return _let_go(
        db,
        import_id,
        run_id,
        {
            "own_run": True,
            "last_released": {"at": now or datetime.now(UTC), "run_id": run_id, "reason": reason},
        },
        keep_checkpoint=True,
    )


def _let_go(
    db, import_id: ObjectId, run_id: str, fields: dict[str, Any], *, keep_checkpoint: bool
) -> bool:
    update: dict[str, Any] = {
        "$set": {"status": PENDING, "in_progress": False, **fields},
        "$unset": {"claimed_by_run": "", "claimed_at": "", "heartbeat_at": ""},
        "$inc": {"attempts": -1, "releases": 1},
    }
    if keep_checkpoint:
        update["$rename"] = {"checkpoint": "resume_from"}
    else:
        update["$unset"]["checkpoint"] = ""
    released = db[store.QUEUES].update_one(
        {**CLAIMED_FILTER, "status": PENDING, "_id": import_id, "claimed_by_run": run_id}, update
    )
    return released.matched_count > 0


def others_working_on(
    db, account_id: ObjectId, run_id: str, request_id: ObjectId | None = None
) -> list[ObjectId]:
    """Requests of ``account_id`` that runs other than ``run_id`` hold, and, given the
    ``request_id`` that run holds, any other request of the account it holds too (a batch run
    given two requests of one account)."""
    mine = (
        {"claimed_by_run": run_id}
        if request_id is None
        else {
            "claimed_by_run": run_id,
            "_id": request_id,
        }
    )
    return [
        document["_id"]
        for document in db[store.QUEUES].find(
            {**CLAIMED_FILTER, "account_id": account_id, "$nor": [mine]}, {"_id": 1}
        )
    ]


MAX_UNCLAIMED_RUNS = 3
"""Runs that may end without claiming a request (terminated while queued, failed to start,
failed before the claim) before the request is failed with the reason."""


def relaunch_unclaimed(
    db, import_id: ObjectId, run_id: str, run_status: str, now: datetime | None = None
) -> str | None:
    """A pending request whose run ended before claiming it: count that run, and launch it again
    under a new run key (``releases`` goes up; the daemon never launches a key twice), or after
    :data:`MAX_UNCLAIMED_RUNS` such runs fail it with the reason and a result. Says what was
    done; None if the request is no longer pending."""
    now = now or datetime.now(UTC)
    ended = f"Run {run_id} ended ({run_status}) before it claimed the request"
    request = db[store.QUEUES].find_one_and_update(
        {**PENDING_FILTER, "_id": import_id},
        {
            "$set": {"last_error": ended},
            "$inc": {"releases": 1},
            "$push": {"unclaimed_runs": {"run_id": run_id, "status": run_status, "at": now}},
        },
        return_document=ReturnDocument.AFTER,
    )
    if request is None:
        return None
    count = len(request["unclaimed_runs"])
    if count < MAX_UNCLAIMED_RUNS:
        return f"Import request {import_id}: {ended}; launched again"
    message = f"{ended}; gave up after {count} runs that ended before claiming it"
    failed = db[store.QUEUES].update_one(
        {**PENDING_FILTER, "_id": import_id},
        {"$set": {"status": FAILED, "error": message, "finished_at": now}},
    )
    if failed.matched_count == 0:
        return None
    outcome = outcome_so_far(request)
    outcome.finish(now)
    _record_result(
        db,
        {"_id": import_id},
        result_document(outcome, status=FAILED, run_id=run_id, error=message),
    )
    return f"Import request {import_id} marked failed: {message}"


def releases_of(request: Mapping[str, Any]) -> int:
    """How often runs let the request go unprocessed (:func:`release`, :func:`hand_off`)."""
    value = request.get("releases")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def run_key(request: Mapping[str, Any]) -> str:
    """The key of the request's next run of its own: ``<id>:<attempts>``, with ``+<releases>``
    once a run let it go, so that the run after a release is not taken for the one before."""
    key = f"{request['_id']}:{attempts_of(request)}"
    releases = releases_of(request)
    return f"{key}+{releases}" if releases else key


def held_requests(db) -> Iterator[HeldRequest]:
    """Every request a run of this project holds."""
    for document in db[store.QUEUES].find(CLAIMED_FILTER):
        yield _held(document)


def request_held_by(db, run_id: str) -> HeldRequest | None:
    """The request ``run_id`` holds, if any (the first, for a run holding several)."""
    held = requests_held_by(db, run_id)
    return held[0] if held else None


def requests_held_by(db, run_id: str) -> list[HeldRequest]:
    """Every request ``run_id`` holds (a small-import batch holds several)."""
    return [_held(d) for d in db[store.QUEUES].find({**CLAIMED_FILTER, "claimed_by_run": run_id})]


def attempts_of(request: Mapping[str, Any]) -> int:
    """The request's ``attempts`` (runs that claimed it), 0 when absent or not a count."""
    value = request.get("attempts")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    return int(value)


def outcome_so_far(document: Mapping[str, Any]) -> ImportOutcome:
    """The counts of a request that never got going (malformed, or its run died): those its
    checkpoint saved (or the one an earlier attempt left to resume from), else zeros,
    identified as far as its fields allow."""
    for name in ("checkpoint", "resume_from"):
        checkpoint = document.get(name)
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("outcome"), Mapping):
            return ImportOutcome.resume(dict(checkpoint["outcome"]))
    import_type = document.get("type")
    return ImportOutcome(
        import_id=str(document["_id"]),
        account_id=str(document.get("account_id")),
        user_id=str(document.get("user_id")),
        contact_type=CONTACT_TYPES.get(import_type, str(import_type))
        if isinstance(import_type, str)
        else str(import_type),
        started_at=datetime.now(UTC),
        dry_run=document.get("dry_run") is True,
    )


def held_request(db, import_id: ObjectId, run_id: str) -> HeldRequest | None:
    """The request as ``run_id`` holds it now, or None if that run no longer holds it."""
    document = db[store.QUEUES].find_one(
        {**CLAIMED_FILTER, "_id": import_id, "claimed_by_run": run_id}
    )
    return _held(document) if document is not None else None


def _held(document: Mapping[str, Any]) -> HeldRequest:
    return HeldRequest(
        import_id=document["_id"],
        run_id=document["claimed_by_run"],
        attempts=attempts_of(document),
        cancel_requested=document.get("status") == CANCELLED,
        account_id=document.get("account_id")
        if isinstance(document.get("account_id"), ObjectId)
        else None,
        claimed_at=_moment(document.get("claimed_at")),
        heartbeat_at=_moment(document.get("heartbeat_at")),
        outcome=outcome_so_far(document),
    )


def _moment(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _not_claimable(db, import_id: ObjectId) -> str:
    document = db[store.QUEUES].find_one(
        {"_id": import_id}, {"status": 1, "in_progress": 1, "claimed_by_run": 1, "source": 1}
    )
    if document is None:
        return f"Import request {import_id} does not exist"
    if document.get("source") != IMPORT_SOURCE:
        return (
            f"Queue document {import_id} is not a billing import "
            f"(source {document.get('source')!r})"
        )
    if document.get("in_progress"):
        return (
            f"Import request {import_id} is already in progress "
            f"(claimed by run {document.get('claimed_by_run') or 'unknown'}); not processed twice"
        )
    return f"Import request {import_id} is {document.get('status')!r}, not pending; nothing to do"
