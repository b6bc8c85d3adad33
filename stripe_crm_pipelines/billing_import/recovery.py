"""What becomes of an import request whose run stopped without closing it.

A request is *claimed* (``in_progress``, ``claimed_by_run``) while its run imports. When that run
ends without closing it (its process was killed, it failed outside the import's own error
handling, someone terminated it, it vanished from the Dagster instance) the request would stay in
progress for ever. The sensors notice (``sensor``: ``billing_import_sensor`` checks every held
request's run every 30 s, the run-failure and run-cancel sensors react within seconds), describe
the run with plain :class:`RunFacts`, and hand the request here:

* :func:`why_stale` says whether the run can no longer finish it: finished, missing from the
  instance, or started but silent, with no heartbeat for :data:`STALE_AFTER_SECONDS` (its process
  died without Dagster noticing, which the default run launcher cannot see);
* :func:`decide_recovery` is the one place that chooses what happens: a request whose run was
  cancelled, or that the CRM set to ``cancelled``, is closed ``cancelled``; any other request is
  put back to ``pending`` for another attempt until it has had :data:`MAX_ATTEMPTS` (the seed's
  ``attempts: 3``), then closed ``failed`` with the reason;
* :func:`recover_request` applies the decision through ``queue``. A re-queued request keeps its
  checkpoint (as ``resume_from``), so the next run continues where the dead one stopped. Every
  change is conditional on ``claimed_by_run``, so two sensors acting on the same request at once
  change it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from stripe_crm_pipelines.billing_import import queue
from stripe_crm_pipelines.billing_import.queue import HeldRequest

MAX_ATTEMPTS = 3
"""Runs an import request gets before a dead run fails it for good."""
STALE_AFTER_SECONDS = 300.0
"""A started run whose request has had no heartbeat (or claim) for this long is dead. Generous:
a run is also silent between its claim and the import op starting (up to a minute on a busy
host). A false alarm costs only time: the replaced run sees it lost the claim and stops, and the
next one resumes from the checkpoint."""


@dataclass(frozen=True)
class RunFacts:
    """What the orchestrator knows of the run holding a request."""

    run_id: str
    status: str
    """The run's status as the orchestrator names it (``STARTED``, ``FAILURE``, …)."""
    finished: bool
    """The run has ended (succeeded, failed or cancelled)."""
    started: bool
    """The run's process has started and not ended."""
    cancelled: bool
    """Someone terminated the run."""


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
        return RecoveryDecision(queue.CANCELLED, cause)
    if attempts < MAX_ATTEMPTS:
        return RecoveryDecision(
            queue.PENDING, f"{cause}; attempt {attempts} of {MAX_ATTEMPTS}, queued again"
        )
    return RecoveryDecision(queue.FAILED, f"{cause}; gave up after {attempts} attempts")


def why_stale(request: HeldRequest, run: RunFacts | None, now: datetime) -> str | None:
    """Why the run holding ``request`` can no longer finish it; None while it still can.
    ``run`` None: the run is missing from the instance."""
    if run is None:
        return f"Run {request.run_id} is missing from the Dagster instance"
    if run.finished:
        return f"Run {run.run_id} ended ({run.status}) before finishing the import"
    if run.started:
        silent = now - last_sign_of_life(request, default=now)
        if silent > timedelta(seconds=STALE_AFTER_SECONDS):
            return (
                f"Run {run.run_id} has given no sign of life for {int(silent.total_seconds())} s "
                "(no heartbeat); its process is gone"
            )
    return None


def last_sign_of_life(request: HeldRequest, *, default: datetime) -> datetime:
    """When the claiming run last showed it was alive: its latest heartbeat, else its claim."""
    stamps = [moment for moment in (request.heartbeat_at, request.claimed_at) if moment]
    return max(stamps, default=default)


def recover_request(
    db, request: HeldRequest, *, cause: str, run_cancelled: bool, now: datetime
) -> str | None:
    """Apply :func:`decide_recovery` to a request whose run died. Returns what was done, or None
    when the request had changed hands meanwhile (someone else recovered it)."""
    decision = decide_recovery(
        attempts=request.attempts,
        run_cancelled=run_cancelled,
        cancel_requested=request.cancel_requested,
        cause=cause,
    )
    if decision.status == queue.PENDING:
        if queue.requeue(db, request.import_id, request.run_id, cause, now):
            return f"Import request {request.import_id} queued again: {decision.reason}"
        # The CRM may have cancelled it since it was read: then it is closed cancelled.
        current = queue.held_request(db, request.import_id, request.run_id)
        if current is None or not current.cancel_requested:
            return None
        return recover_request(db, current, cause=cause, run_cancelled=run_cancelled, now=now)
    outcome = request.outcome
    outcome.finish(now)
    result_id = queue.close(
        db,
        request.import_id,
        request.run_id,
        outcome,
        status=decision.status,
        message=decision.reason,
    )
    if result_id is None:
        return None
    return f"Import request {request.import_id} marked {decision.status}: {decision.reason}"
