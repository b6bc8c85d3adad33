"""Many small imports in one process: each request claimed, imported and recorded on its own.

Most accounts have a few hundred customers at most, and requests come in bursts. A run of its own
per request costs a process start (seconds of CPU) for well under a second of work, so
``billing_import_sensor`` gives such requests to one ``billing_import_batch`` run per tick, which
imports them here, several at a time. Each import keeps everything a run of its own gives it:

* its own atomic claim (:func:`queue.claim`, owned by the batch's run id), heartbeat, checkpoints
  and ``contact_import_results`` document, and the same failure handling (a transient error is
  tried again from the checkpoint, up to :data:`TRIES` times; anything else closes the request
  ``failed`` with the reason);
* one import at a time per account: after claiming, an import looks for anything else working on
  the account, namely another claimed request of it, or a queued or running import or sync run
  tagged with its connected Stripe account (``busy``, given by the caller). Finding one, it lets
  the request go untouched (:func:`queue.release`) for a later run. Runs of their own and syncs
  announce themselves before they look too (their run exists before their op starts), so of two
  that meet, at least one steps back;
* an account that turns out large (more than ``hand_off_after`` customers) is not finished here:
  its progress is checkpointed and the request handed to a run of its own
  (:func:`queue.hand_off`), which resumes after what was written.

Nothing here depends on Dagster: the op in :mod:`.batch_job` passes the store, the Stripe client
and ``busy``, and records the catalog events of the imports that completed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

from stripe_crm_pipelines.billing_import import importer, queue, recovery
from stripe_crm_pipelines.billing_import.batches import FetchSettings
from stripe_crm_pipelines.billing_import.importer import (
    ImportCancelled,
    ImportFailed,
    ImportHandedOff,
    StripeClientFactory,
)
from stripe_crm_pipelines.billing_import.queue import ClaimLost, NotClaimable
from stripe_crm_pipelines.billing_import.results import ImportOutcome

LOG = logging.getLogger(__name__)

COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
RELEASED = "released"
"""Let go untouched: something else was working on the account."""
HANDED_OFF = "handed off"
"""The account is large: continued by a run of its own."""
SKIPPED = "skipped"
"""Not claimable (no longer pending): another run took it, or the CRM closed it."""

TRIES = 3
"""Tries of one import after transient errors, the first included (as a run of its own)."""
RETRY_DELAY_SECONDS = 2.0


@dataclass(frozen=True)
class BatchSettings:
    """How a batch imports its requests."""

    parallel: int = 8
    """Imports at once (threads). Each waits mostly on Stripe; accounts have separate rate
    limits."""
    hand_off_after: int | None = 1000
    """Customers after which an import with more to list is handed to a run of its own."""
    fetch: FetchSettings = field(default_factory=lambda: FetchSettings(concurrency=1))
    """Small accounts are listed sequentially: no window is worth its extra request."""


@dataclass
class BatchEntry:
    """What became of one request of the batch."""

    import_id: str
    status: str
    message: str = ""
    account_id: str | None = None
    outcome: ImportOutcome | None = None
    result_id: ObjectId | None = None

    def describe(self) -> str:
        """One log line: the request, its account, how it ended and its counts."""
        line = f"Import {self.import_id} (account {self.account_id}): {self.status}"
        if self.outcome is not None:
            outcome = self.outcome
            line += (
                f", {outcome.customers_fetched} customers: {outcome.records_added} added, "
                f"{outcome.records_updated} updated, {outcome.records_skipped} skipped, "
                f"{outcome.duplicates} duplicates, {outcome.import_errors_count} errors"
            )
        return f"{line}; {self.message}" if self.message else line


class _ImportLog:
    """What one import of a batch says in the run's log: its warnings and errors, each naming
    the import. Its progress lines would be hundreds per run; :meth:`BatchEntry.describe` sums
    each import up in one line instead."""

    def __init__(self, log: logging.Logger | Any, import_id: ObjectId):
        self._log = log
        self._prefix = f"Import {import_id}: "

    def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        pass

    debug = info

    def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log.warning(self._prefix + message, *args, **kwargs)

    def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log.error(self._prefix + message, *args, **kwargs)

    def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log.exception(self._prefix + message, *args, **kwargs)


def import_batch(
    import_ids: Sequence[ObjectId],
    run_id: str,
    *,
    connect: Callable[[], Any],
    stripe_client: StripeClientFactory,
    busy: Callable[[Any, queue.Claim], str | None],
    settings: BatchSettings = BatchSettings(),
    log: logging.Logger = LOG,
) -> list[BatchEntry]:
    """Import each request on its own, ``settings.parallel`` at a time; one entry per request,
    in the given order.

    ``connect`` opens the database in the calling thread (each import runs in a thread of its
    own, and the embedded store's connections belong to their thread). ``busy(db, claim)`` names
    what else works on the claimed request's account, or returns None.

    If the calling thread is interrupted (the run is terminated), requests not started yet stay
    pending, untouched; imports under way finish, and the exception goes on.
    """
    stopping = threading.Event()

    def one(import_id: ObjectId) -> BatchEntry:
        if stopping.is_set():
            return BatchEntry(str(import_id), SKIPPED, "The run stopped before this import began")
        try:
            entry = _import_one(
                connect,
                import_id,
                run_id,
                stripe_client,
                busy,
                settings,
                _ImportLog(log, import_id),
            )
        except Exception as error:  # one import's surprise must not stop the others
            message = f"Import failed: {type(error).__name__}: {error}"
            log.exception(f"Import {import_id}: {message}")
            _recover_left_claimed(connect, import_id, run_id, message, log)
            return BatchEntry(str(import_id), FAILED, message)
        log.info(entry.describe())
        return entry

    with ThreadPoolExecutor(
        max_workers=max(1, min(settings.parallel, len(import_ids))),
        thread_name_prefix="import",
    ) as pool:
        try:
            return list(pool.map(one, import_ids))
        except BaseException:
            stopping.set()
            raise


def _recover_left_claimed(
    connect: Callable[[], Any], import_id: ObjectId, run_id: str, cause: str, log: logging.Logger
) -> None:
    """Recover a request this run still holds after its import failed unexpectedly, as if a run
    of its own had failed (queued again, up to three attempts): the batch run goes on with the
    others, so nothing else would, and a claim left without a heartbeat would have the whole
    run taken for dead. If the store cannot be reached either, the sensor recovers it later."""
    try:
        db = connect()
        held = queue.held_request(db, import_id, run_id)
        if held is not None:
            done = recovery.recover_request(
                db, held, cause=f"Run {run_id}: {cause}", run_cancelled=False, now=datetime.now(UTC)
            )
            if done is not None:
                log.warning(done)
    except Exception as error:  # the store is failing too; the sensor recovers it later
        log.warning(f"Import {import_id} is left claimed ({type(error).__name__}: {error})")


def _import_one(
    connect: Callable[[], Any],
    import_id: ObjectId,
    run_id: str,
    stripe_client: StripeClientFactory,
    busy: Callable[[Any, queue.Claim], str | None],
    settings: BatchSettings,
    log: logging.Logger,
) -> BatchEntry:
    db = connect()
    try:
        claimed = importer.claim_import(db, import_id, run_id, log=log)
    except NotClaimable as error:
        log.info(f"Import {import_id} skipped: {error}")
        return BatchEntry(str(import_id), SKIPPED, str(error))
    except ImportFailed as failed:
        return _ended(import_id, FAILED, failed.message, failed.outcome, failed.result_id)
    account_id = str(claimed.request.account_id)
    other = busy(db, claimed.claim)
    if other is not None:
        reason = f"{other} works on account {account_id}; left pending for a later run"
        queue.release(db, import_id, run_id, reason)
        log.info(f"Import {import_id} released: {reason}")
        return BatchEntry(str(import_id), RELEASED, reason, account_id)
    for attempt in range(1, TRIES + 1):
        try:
            outcome = importer.run_import(
                db,
                claimed,
                stripe_client,
                settings=settings.fetch,
                connect=connect,
                may_retry=attempt < TRIES,
                hand_off_after=settings.hand_off_after,
                log=log,
            )
        except ImportFailed as failed:
            if not failed.transient:
                return _ended(import_id, FAILED, failed.message, failed.outcome, failed.result_id)
            log.warning(f"{failed.message}; trying again from its checkpoint")
            time.sleep(RETRY_DELAY_SECONDS * attempt)
            continue
        except ImportCancelled as cancelled:
            return _ended(
                import_id, CANCELLED, cancelled.message, cancelled.outcome, cancelled.result_id
            )
        except ImportHandedOff as handed:
            reason = f"more than {settings.hand_off_after} customers: {handed}"
            queue.hand_off(db, import_id, run_id, reason)
            log.info(f"Import {import_id} handed to a run of its own: {reason}")
            return BatchEntry(str(import_id), HANDED_OFF, reason, account_id)
        except ClaimLost as lost:
            return BatchEntry(str(import_id), SKIPPED, str(lost), account_id)
        result_id, closed = queue.complete(db, import_id, run_id, outcome)
        if not closed:
            message = f"Import request {import_id} is no longer claimed by this run; left unchanged"
            return BatchEntry(str(import_id), SKIPPED, message, account_id)
        if importer.keep_in_sync(db, outcome) is not None:
            log.info(f"Account {account_id} is kept in step from now on")
        return _ended(import_id, COMPLETED, "", outcome, result_id)
    raise AssertionError("unreachable: the last try does not retry")  # pragma: no cover


def _ended(
    import_id: ObjectId,
    status: str,
    message: str,
    outcome: ImportOutcome,
    result_id: ObjectId | None,
) -> BatchEntry:
    return BatchEntry(str(import_id), status, message, outcome.account_id, outcome, result_id)
