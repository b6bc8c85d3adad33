"""Recover import requests whose run stopped without closing them; stop imports on request.

A request is *claimed* (``in_progress``, ``claimed_by_run``) while its run imports. When that run
ends without closing it (its process was killed, it failed outside the import's own error
handling, someone terminated it, it vanished from the Dagster instance) the request would stay in
progress for ever. Three places notice, and all of them hand the request to
:func:`recover_request`:

* ``billing_import_sensor`` (every 30 s) checks every claimed request's run
  (:func:`recover_stale_claims`): finished, missing from the instance, or started but silent,
  with no heartbeat for :data:`STALE_AFTER_SECONDS` (its process died without Dagster noticing,
  which the default run launcher cannot see; the sensor then marks the run failed, which also
  frees the account's concurrency slot);
* ``billing_import_failure_sensor`` and ``billing_import_cancel_sensor`` react to a run failing
  or being cancelled within seconds.

:func:`decide_recovery` is the one place that chooses what happens: a request whose run was
cancelled, or that the CRM set to ``cancelled``, is closed ``cancelled``; any other request is
put back to ``pending`` for another attempt until it has had :data:`MAX_ATTEMPTS` (the seed's
``attempts: 3``), then closed ``failed`` with the reason. A re-queued request keeps its
checkpoint (as ``resume_from``), so the next run continues where the dead one stopped.

Every change is a conditional update on ``claimed_by_run``, so two of the places acting on the
same request at once change it once.

While an import runs, :class:`ClaimWatch` beats the claim's heartbeat from a background thread
and notices when the request has been set to ``cancelled``; the page loop asks it, between
pages, whether to stop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, Failure, get_dagster_logger

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.requests import IMPORT_SOURCE
from stripe_crm_pipelines.billing_import.results import (
    ImportOutcome,
    failed_request_update,
    outcome_of_document,
    result_document,
    save_result,
)

MAX_ATTEMPTS = 3
"""Runs an import request gets before a dead run fails it for good."""
HEARTBEAT_SECONDS = 5.0
"""How often a running import stamps ``heartbeat_at`` on its request and looks for a cancel."""
STALE_AFTER_SECONDS = 300.0
"""A started run whose request has had no heartbeat (or claim) for this long is dead. Generous:
a run is also silent between its claim and the import op starting (up to a minute on a busy
host). A false alarm costs only time: the replaced run sees it lost the claim and stops, and the
next one resumes from the checkpoint."""

CANCELLED = "cancelled"
CLAIMED_FILTER: dict[str, Any] = {
    "source": IMPORT_SOURCE,
    "in_progress": True,
    "status": {"$in": ["pending", CANCELLED]},
    "claimed_by_run": {"$type": "string"},
}
"""Requests a run of this project holds. ``in_progress`` without ``claimed_by_run`` is a claim
by another system (the Node.js queue manager): never ours to recover."""


class ImportCancelled(Exception):
    """The request was set to ``cancelled`` while its import ran."""


@dataclass(frozen=True)
class RecoveryDecision:
    """What becomes of a request whose run can no longer finish it."""

    status: str
    """``pending`` (another attempt), ``failed`` or ``cancelled``."""
    reason: str


def decide_recovery(
    *, attempts: int, run_cancelled: bool, cancel_requested: bool, cause: str
) -> RecoveryDecision:
    """Retry, fail or cancel a request whose run died: the one place that decides.

    ``attempts`` counts the runs that claimed the request (the dead one included).
    """
    if run_cancelled or cancel_requested:
        return RecoveryDecision(CANCELLED, cause)
    if attempts < MAX_ATTEMPTS:
        return RecoveryDecision(
            "pending", f"{cause}; attempt {attempts} of {MAX_ATTEMPTS}, queued again"
        )
    return RecoveryDecision("failed", f"{cause}; gave up after {attempts} attempts")


def attempts_of(request: Mapping[str, Any]) -> int:
    """The request's ``attempts`` (runs that claimed it), 0 when absent or not a count."""
    value = request.get("attempts")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    return int(value)


def inherited_checkpoint(request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint a dead attempt left for the next run to resume from, if any."""
    checkpoint = request.get("resume_from")
    return dict(checkpoint) if isinstance(checkpoint, Mapping) else None


def why_stale(request: Mapping[str, Any], run: DagsterRun | None, now: datetime) -> str | None:
    """Why the run holding ``request`` can no longer finish it; None while it still can."""
    run_id = request["claimed_by_run"]
    if run is None:
        return f"Run {run_id} is missing from the Dagster instance"
    if run.is_finished:
        return f"Run {run_id} ended ({run.status.value}) before finishing the import"
    if run.status == DagsterRunStatus.STARTED:
        silent = now - last_sign_of_life(request, default=now)
        if silent > timedelta(seconds=STALE_AFTER_SECONDS):
            return (
                f"Run {run_id} has given no sign of life for {int(silent.total_seconds())} s "
                "(no heartbeat); its process is gone"
            )
    return None


def last_sign_of_life(request: Mapping[str, Any], *, default: datetime) -> datetime:
    """When the claiming run last showed it was alive: its latest heartbeat, else its claim."""
    stamps = [
        _aware(value)
        for value in (request.get("heartbeat_at"), request.get("claimed_at"))
        if isinstance(value, datetime)
    ]
    return max(stamps, default=default)


def recover_stale_claims(db, instance: DagsterInstance, now: datetime | None = None) -> list[str]:
    """Recover every claimed request whose run can no longer finish it; says what it did."""
    now = now or datetime.now(UTC)
    done: list[str] = []
    for request in db[store.QUEUES].find(CLAIMED_FILTER):
        run = instance.get_run_by_id(request["claimed_by_run"])
        cause = why_stale(request, run, now)
        if cause is None:
            continue
        if run is not None and not run.is_finished:
            # Dead without Dagster knowing: say so on the run, which also frees its slot in the
            # per-account concurrency limit for the next attempt.
            instance.report_run_failed(run, f"{cause}. Marked failed by billing_import_sensor.")
        message = recover_request(
            db,
            request,
            cause=cause,
            run_cancelled=run is not None and run.status == DagsterRunStatus.CANCELED,
            now=now,
        )
        if message is not None:
            done.append(message)
    return done


def recover_run(db, run: DagsterRun, cause: str, now: datetime | None = None) -> str | None:
    """Recover the request ``run`` still holds (if any) now that the run has ended."""
    request = db[store.QUEUES].find_one({**CLAIMED_FILTER, "claimed_by_run": run.run_id})
    if request is None:
        return None
    return recover_request(
        db,
        request,
        cause=cause,
        run_cancelled=run.status == DagsterRunStatus.CANCELED,
        now=now or datetime.now(UTC),
    )


def recover_request(
    db, request: Mapping[str, Any], *, cause: str, run_cancelled: bool, now: datetime
) -> str | None:
    """Apply :func:`decide_recovery` to a request whose run died. Returns what was done, or None
    when the request had changed hands meanwhile (someone else recovered it)."""
    run_id = request["claimed_by_run"]
    decision = decide_recovery(
        attempts=attempts_of(request),
        run_cancelled=run_cancelled,
        cancel_requested=request.get("status") == CANCELLED,
        cause=cause,
    )
    if decision.status == "pending":
        requeued = db[store.QUEUES].find_one_and_update(
            {**CLAIMED_FILTER, "_id": request["_id"], "claimed_by_run": run_id},
            requeue_update(run_id, cause, now),
        )
        if requeued is None:
            return None
        return f"Import request {request['_id']} queued again: {decision.reason}"
    outcome = outcome_of_document(dict(request))
    outcome.finish(now)
    result_id = close_claimed_request(
        db, request["_id"], run_id, outcome, status=decision.status, message=decision.reason
    )
    if result_id is None:
        return None
    return f"Import request {request['_id']} marked {decision.status}: {decision.reason}"


def requeue_update(run_id: str, cause: str, now: datetime) -> dict[str, Any]:
    """Put a request back to pending for another run; its checkpoint becomes ``resume_from``."""
    return {
        "$set": {
            "status": "pending",
            "in_progress": False,
            "last_error": cause,
            "requeued_at": now,
        },
        "$unset": {"claimed_by_run": "", "claimed_at": "", "heartbeat_at": ""},
        "$rename": {"checkpoint": "resume_from"},
        "$push": {"failed_attempts": {"run_id": run_id, "error": cause, "at": now}},
    }


def close_claimed_request(
    db,
    import_id: ObjectId,
    run_id: str,
    outcome: ImportOutcome,
    *,
    status: str,
    message: str,
) -> ObjectId | None:
    """Close a request ``run_id`` still holds as ``failed`` or ``cancelled`` and write its
    import result with the counts so far. None (and nothing written) if the run no longer
    holds it."""
    finished_at = outcome.finished_at or datetime.now(UTC)
    closed = db[store.QUEUES].update_one(
        {"_id": import_id, "in_progress": True, "claimed_by_run": run_id},
        failed_request_update(message, finished_at, None, status=status),
    )
    if closed.matched_count == 0:
        return None
    result_id = save_result(
        db, result_document(outcome, status=status, run_id=run_id, error=message)
    )
    db[store.QUEUES].update_one({"_id": import_id}, {"$set": {"result_id": result_id}})
    return result_id


class ClaimWatch:
    """While an import runs: stamp ``heartbeat_at`` on its request every
    :data:`HEARTBEAT_SECONDS` and notice a cancel request or a lost claim.

    ``connect`` opens the database; the background thread opens its own (the embedded store's
    connections belong to the thread that opened them). Use as a context manager and call
    :meth:`raise_if_stopped` between pages.
    """

    def __init__(self, connect: Callable[[], Any], import_id: ObjectId, run_id: str):
        self._connect = connect
        self._import_id = import_id
        self._run_id = run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_stopped, daemon=True)
        self.cancel_requested = False
        self.claim_lost = False

    def __enter__(self) -> ClaimWatch:
        self.beat(self._connect())
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_SECONDS + 5)

    def beat(self, db) -> None:
        """Stamp the heartbeat and read the request's status, in one round trip."""
        request = db[store.QUEUES].find_one_and_update(
            {"_id": self._import_id, "in_progress": True, "claimed_by_run": self._run_id},
            {"$set": {"heartbeat_at": datetime.now(UTC)}},
            projection={"status": 1},
        )
        if request is None:
            self.claim_lost = True
        elif request.get("status") == CANCELLED:
            self.cancel_requested = True

    def raise_if_stopped(self) -> None:
        """Raise :class:`ImportCancelled` if the request was cancelled, or a ``Failure`` if
        another run holds it now (this one was taken for dead and replaced)."""
        if self.claim_lost:
            raise Failure(
                description=f"Import request {self._import_id} is no longer claimed by this "
                "run; stopped",
                allow_retries=False,
            )
        if self.cancel_requested:
            raise ImportCancelled(f"Import request {self._import_id} was cancelled")

    def _beat_until_stopped(self) -> None:
        db = None
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                db = db or self._connect()
                self.beat(db)
            except Exception as error:  # the import itself will meet a lasting store failure
                get_dagster_logger(__name__).warning(
                    f"Heartbeat of import {self._import_id} failed: {type(error).__name__}"
                )


def termination_requested(instance: DagsterInstance, run_id: str) -> bool:
    """Whether someone asked Dagster to terminate the run (from the UI or the API), as opposed
    to its worker being interrupted by the machine (preemption, shutdown)."""
    run = instance.get_run_by_id(run_id)
    return run is not None and run.status in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
