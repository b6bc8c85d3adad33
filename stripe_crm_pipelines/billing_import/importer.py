"""The billing contact import as plain functions: claim a request, then import its customers.

:func:`claim_import` claims the request (``queue``) and checks it can run. :func:`run_import`
does the work: it lists the connected account's Stripe customers (``batches``) and, batch by
batch, maps, matches and writes them (``upsert``), then checkpoints the counts and cursor on the
request. A retried or re-queued import resumes after its checkpoint, first re-reading (without
writing) what was already written so a later customer with an imported email still counts as a
duplicate.

How an import ends, whoever runs it (a Dagster op, a test, a script):

* it returns its :class:`~stripe_crm_pipelines.billing_import.results.ImportOutcome` (the caller
  records it with :func:`queue.complete`);
* :class:`ImportFailed`: the request is closed ``failed`` with the message, unless the error is
  transient and the caller may try again (``transient`` true, the request left claimed with its
  checkpoint);
* :class:`ImportCancelled`: the CRM set the request to ``cancelled``, or the run was terminated;
  the request is closed ``cancelled`` with the counts so far (a run terminated in the middle
  of a bulk write on the embedded store says so: that batch is not counted, and some of its
  contacts may have been written);
* :class:`~stripe_crm_pipelines.billing_import.queue.ClaimLost`: another run holds the request
  now; nothing is written.

Any other interruption (the process exiting) leaves the request claimed for recovery to queue it
again. Nothing here depends on Dagster; log lines go to the ``log`` the caller passes.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

import stripe
from bson import ObjectId
from pymongo.errors import PyMongoError

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import queue
from stripe_crm_pipelines.billing_import.batches import (
    CustomerBatch,
    CustomerListing,
    FetchSettings,
    customer_batches,
)
from stripe_crm_pipelines.billing_import.queue import Checkpoint, ClaimLost, ClaimState
from stripe_crm_pipelines.billing_import.rate_limit import bucket_for_key
from stripe_crm_pipelines.billing_import.requests import ImportRequest, parse_import_request
from stripe_crm_pipelines.billing_import.results import LISTING_WITHOUT_SNAPSHOT, ImportOutcome
from stripe_crm_pipelines.billing_import.upsert import (
    SeenCustomers,
    UpsertPlan,
    UpsertTarget,
    backfill_email_keys,
    execute_plan,
    find_existing_contacts,
    plan_upserts,
    planned_result,
    recall_page,
)
from stripe_crm_pipelines.billing_sync.events import events_cursor_at_start
from stripe_crm_pipelines.billing_sync.state import EventsCursor, record_full_import
from stripe_crm_pipelines.errors import is_transient
from stripe_crm_pipelines.resources.stripe import RequestStats, stripe_error_message
from stripe_crm_pipelines.stripe_keys import StripeKeyError, load_billing_credentials

DEFAULT_MAX_CUSTOMERS = 50_000
"""Safety cap of one import (seed issue 8) when neither the request nor the caller sets one."""
LOG_EVERY_PAGES = 10
HEARTBEAT_SECONDS = 5.0
"""How often a running import stamps ``heartbeat_at`` on its request and looks for a cancel."""
GC_YOUNG_THRESHOLD = 20_000
"""Allocations between two young-generation collections while an import runs (Python's
default: 700); see :func:`collection_set_aside`."""
EXPECTED_ERRORS = (stripe.StripeError, PyMongoError)
"""Errors the failure message fully describes; anything else keeps its traceback."""

LOG = logging.getLogger(__name__)


class ImportFailed(Exception):
    """The import stopped on an error; :attr:`message` says why (never the Stripe key).

    ``transient``: the error may go away and the request is still claimed, to be tried again
    from its checkpoint. Otherwise the request was closed ``failed`` and :attr:`result_id` is its
    result (None if the run no longer held it).
    """

    def __init__(
        self,
        message: str,
        outcome: ImportOutcome,
        *,
        transient: bool = False,
        result_id: ObjectId | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.outcome = outcome
        self.transient = transient
        self.result_id = result_id


class ImportCancelled(Exception):
    """The import stopped on request; the request was closed ``cancelled`` with the counts so
    far (:attr:`result_id` is its result)."""

    def __init__(self, message: str, outcome: ImportOutcome, result_id: ObjectId | None):
        super().__init__(message)
        self.message = message
        self.outcome = outcome
        self.result_id = result_id


class ImportHandedOff(Exception):
    """The import stopped after ``hand_off_after`` customers with more to list; the request is
    still claimed, with its checkpoint, for the caller to pass on (:func:`queue.hand_off`)."""

    def __init__(self, outcome: ImportOutcome):
        super().__init__(f"Stopped after {_progress(outcome)} to continue in a run of its own")
        self.outcome = outcome


class StripeClientFactory(Protocol):
    """Builds the Stripe client of a connected account (``StripeResource.client``)."""

    def __call__(
        self,
        secret_key: str,
        stripe_account: str | None,
        *,
        stats: RequestStats | None = None,
        before_request: Callable[[], None] | None = None,
    ) -> stripe.StripeClient: ...


@dataclass(frozen=True)
class ClaimedImport:
    """A claimed request and how many customers its import may take."""

    claim: queue.Claim
    max_customers: int

    @property
    def request(self) -> ImportRequest:
        return self.claim.request


def claim_import(
    db,
    import_id: ObjectId,
    run_id: str,
    *,
    max_customers: int | None = None,
    log: logging.Logger = LOG,
) -> ClaimedImport:
    """Claim the request for ``run_id`` and check its account still exists.

    ``max_customers`` overrides the request's own limit. Raises
    :class:`~stripe_crm_pipelines.billing_import.queue.NotClaimable` (nothing changed) or
    :class:`ImportFailed` (the request closed ``failed``: invalid, or its account is gone).
    On a MongoDB without the unique contact indexes that this user may not create, raises
    :class:`~stripe_crm_pipelines.store.MissingIndexesError` before the claim, naming the
    command that creates them; the request stays pending.
    """
    store.ensure_contact_indexes(db)
    try:
        claim = queue.claim(db, import_id, run_id)
    except queue.ClaimRejected as rejected:
        log.error(f"Import {import_id} failed: {rejected.message}")
        raise ImportFailed(
            rejected.message, rejected.outcome, result_id=rejected.result_id
        ) from None
    request = claim.request
    limit = max_customers or request.max_customers or DEFAULT_MAX_CUSTOMERS
    if db[store.ACCOUNTS].find_one({"_id": request.account_id}, {"_id": 1}) is None:
        message = f"Account {request.account_id} no longer exists"
        _fail(db, claim, _new_outcome(claim, limit), message, log)
    log.info(
        f"Claimed import {import_id} (attempt {request.attempts}): {request.import_type} → "
        f"{request.contact_type} contacts of account {request.account_id}, "
        f"{len(request.mappings)} mapped field(s), new_contact={request.new_contact}, "
        f"at most {limit} customers{', dry run: no writes' if request.dry_run else ''}"
    )
    return ClaimedImport(claim=claim, max_customers=limit)


def run_import(
    db,
    claimed: ClaimedImport,
    stripe_client: StripeClientFactory,
    *,
    settings: FetchSettings | None = None,
    connect: Callable[[], Any] | None = None,
    may_retry: bool = False,
    termination_requested: Callable[[], bool] = lambda: False,
    hand_off_after: int | None = None,
    log: logging.Logger = LOG,
) -> ImportOutcome:
    """Import the claimed request's Stripe customers into contacts; the counts when done.

    ``hand_off_after``: once this many customers are written and the listing has more, stop
    after the batch's checkpoint and raise :class:`ImportHandedOff` (the request stays claimed).

    ``settings.requests_per_second`` None means the key's default rate. ``connect`` opens the
    database for the heartbeat thread (default: ``db`` itself). ``may_retry``: a transient
    error leaves the request claimed for another try (:class:`ImportFailed` with ``transient``)
    instead of failing it. ``termination_requested`` tells an interrupt that stops the run on
    purpose (the import is then closed ``cancelled``) from one that kills the process.
    """
    claim = claimed.claim
    # This run's own checkpoint (an earlier try of the same op), else a dead attempt's.
    checkpoint = queue.saved_checkpoint(db, claim.request.id, claim.run_id) or claim.resume_from
    if checkpoint is not None:
        outcome = checkpoint.outcome
        log.info(
            f"Resuming after page {outcome.pages_fetched} "
            f"({outcome.customers_fetched} customers already imported)"
        )
    else:
        outcome = _new_outcome(claim, claimed.max_customers)
    try:
        credentials = load_billing_credentials(db, claim.request.account_id)
    except StripeKeyError as error:
        _fail(db, claim, outcome, str(error), log)

    stats = RequestStats()
    writing = _Writing()
    settings = settings or FetchSettings()
    limiter = bucket_for_key(credentials.secret_key, settings.requests_per_second)
    client = stripe_client(
        credentials.secret_key,
        credentials.stripe_account,
        stats=stats,
        before_request=limiter.acquire,
    )
    try:
        with (
            collection_set_aside(),
            ClaimWatch(connect or (lambda: db), claim.request.id, claim.run_id, log) as watch,
        ):
            watch.raise_if_stopped()
            if claim.request.keep_in_sync and outcome.events_cursor is None:
                outcome.events_cursor = events_cursor_at_start(client).as_document()
            _sync_batches(
                db,
                connect or (lambda: db),
                claim,
                outcome,
                client,
                checkpoint,
                watch,
                replace(settings, requests_per_second=limiter.rate),
                log,
                writing,
                hand_off_after,
            )
    except ClaimLost:
        raise
    except _HandOff:
        outcome.record_requests(stats)
        raise ImportHandedOff(outcome) from None
    except _CancelRequested:
        outcome.record_requests(stats)
        message = f"Cancelled on request after {_progress(outcome)}"
        result_id = _close(db, claim, outcome, queue.CANCELLED, message)
        log.error(f"Import {claim.request.id} cancelled: {message}")
        raise ImportCancelled(message, outcome, result_id) from None
    except Exception as error:
        outcome.record_requests(stats)
        message = _scrub(_failure_message(error), credentials.secret_key)
        if is_transient(error) and may_retry:
            raise ImportFailed(message, outcome, transient=True) from None
        unexpected = not isinstance(error, EXPECTED_ERRORS)
        _fail(db, claim, outcome, message, log, cause=error if unexpected else None)
    except BaseException:
        if termination_requested():
            outcome.record_requests(stats)
            message = f"Run terminated; import cancelled after {_progress(outcome)}"
            if writing.customers:
                message += (
                    f", while the next {writing.customers} customers were being written: some of "
                    "their contacts may have been written, each logged in "
                    f"{store.IMPORT_CHANGES}"
                )
            _close(db, claim, outcome, queue.CANCELLED, message)
            log.warning(f"Import {claim.request.id} cancelled: {message}")
        raise

    outcome.record_requests(stats)
    outcome.finish()
    log.info(
        f"Synced {outcome.customers_fetched} customers over {outcome.pages_fetched} page(s): "
        f"{outcome.records_added} added, {outcome.records_updated} updated, "
        f"{outcome.records_skipped} skipped, {outcome.duplicates} duplicates, "
        f"{outcome.import_errors_count} errors"
    )
    return outcome


_collector_lock = threading.Lock()
_collector_users = 0
_collector_thresholds: tuple[int, int, int] | None = None


@contextmanager
def collection_set_aside() -> Iterator[None]:
    """While an import runs, Python's cyclic garbage collector leaves alone the objects the
    process held before it (``gc.freeze``) and runs less often (a first-generation threshold of
    :data:`GC_YOUNG_THRESHOLD`). An import allocates millions of short-lived objects; with
    Dagster's modules in the process, each full collection otherwise paused every thread, the
    Stripe fetch included, for about 0.2 s, several times per 10,000 customers.

    The collector's settings belong to the process, and a batch run has several imports going
    at once: the first import in sets them, the last one out restores them."""
    global _collector_users, _collector_thresholds
    with _collector_lock:
        if _collector_users == 0:
            _collector_thresholds = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(
                max(_collector_thresholds[0], GC_YOUNG_THRESHOLD), *_collector_thresholds[1:]
            )
        _collector_users += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_users -= 1
            if _collector_users == 0 and _collector_thresholds is not None:
                gc.set_threshold(*_collector_thresholds)
                gc.unfreeze()


class _CancelRequested(Exception):
    """The CRM set the request to ``cancelled`` while it ran."""


class _HandOff(Exception):
    """The import reached ``hand_off_after`` with more customers to list."""


class ClaimWatch:
    """While an import runs: beat the claim's heartbeat every :data:`HEARTBEAT_SECONDS` from a
    background thread and notice a cancel request or a lost claim.

    ``connect`` opens the database; the background thread opens its own (the embedded store's
    connections belong to the thread that opened them). Use as a context manager and call
    :meth:`raise_if_stopped` between batches.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        import_id: ObjectId,
        run_id: str,
        log: logging.Logger = LOG,
    ):
        self._connect = connect
        self._import_id = import_id
        self._run_id = run_id
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_stopped, daemon=True)
        self.state = ClaimState.HELD

    def __enter__(self) -> ClaimWatch:
        self.state = queue.heartbeat(self._connect(), self._import_id, self._run_id)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # The import does not wait for a beat under way (a store round trip, often just as a
        # 10,000-customer import ends): that beat only stamps a request this run still holds in
        # progress, and the thread ends after it.
        self._stop.set()

    def raise_if_stopped(self) -> None:
        """Raise :class:`ClaimLost` if another run holds the request now (this one was taken for
        dead and replaced), or stop the import if the request was cancelled."""
        if self.state is ClaimState.LOST:
            raise ClaimLost(
                f"Import request {self._import_id} is no longer claimed by this run; stopped"
            )
        if self.state is ClaimState.CANCEL_REQUESTED:
            raise _CancelRequested(f"Import request {self._import_id} was cancelled")

    def _beat_until_stopped(self) -> None:
        db = None
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                db = db or self._connect()
                self.state = queue.heartbeat(db, self._import_id, self._run_id)
            except Exception as error:  # the import itself will meet a lasting store failure
                self._log.warning(
                    f"Heartbeat of import {self._import_id} failed: {type(error).__name__}"
                )


def _sync_batches(
    db,
    connect: Callable[[], Any],
    claim: queue.Claim,
    outcome: ImportOutcome,
    client: stripe.StripeClient,
    checkpoint: Checkpoint | None,
    watch: ClaimWatch,
    settings: FetchSettings,
    log: logging.Logger,
    writing: _Writing,
    hand_off_after: int | None = None,
) -> None:
    """Fetch → map → match → bulk write → checkpoint, one batch at a time (a page, or
    ``settings.batch_size`` customers once the walk fans out); between batches, stop if ``watch``
    says the request was cancelled or taken over, or hand off past ``hand_off_after``.

    A batch is matched and planned here while the one before it is written and checkpointed by
    a :class:`_BatchWriter` (planning needs nothing of the write before it: a customer whose
    contact an earlier batch wrote is a duplicate by what ``seen`` holds). With
    ``hand_off_after``, each batch is written before the next is planned, so the import stops
    right after the batch that reaches it."""
    contacts = db[store.CONTACTS]
    target = claim.request.upsert_target
    seen = SeenCustomers()
    limit = outcome.max_customers or DEFAULT_MAX_CUSTOMERS
    if checkpoint is None:
        created_lte, cursor, cursor_created = int(time.time()), None, None
    else:
        created_lte, cursor = checkpoint.created_lte, checkpoint.cursor
        cursor_created = checkpoint.cursor_created
        if cursor is None:
            return
        if claim.request.dry_run:
            # A dry run wrote no email key: it matches by the would-be keys, on every attempt.
            backfill_email_keys(contacts, target, seen)
        _recall_written(client, contacts, target, seen, created_lte, cursor, outcome, settings)
    # Listing starts at once: pages arrive while existing contacts get their email keys.
    with (
        customer_batches(
            client,
            created_lte=created_lte,
            starting_after=cursor,
            starting_after_created=cursor_created,
            max_customers=limit - outcome.customers_fetched,
            settings=settings,
        ) as listing,
        _BatchWriter(db, connect, claim, outcome, created_lte, limit, writing, log) as writer,
    ):
        if checkpoint is None:
            outcome.add_backfill(backfill_email_keys(contacts, target, seen))
            if outcome.email_keys_backfilled or outcome.email_key_conflicts:
                log.info(
                    f"Gave {outcome.email_keys_backfilled} existing contact(s) a normalised "
                    f"email key ({outcome.email_key_conflicts} share an email with another "
                    "contact)"
                )
        for batch in listing:
            existing = find_existing_contacts(contacts, batch.customers, target, seen)
            writer.write(batch, plan_upserts(batch.customers, existing, target, seen), listing)
            watch.raise_if_stopped()
            if hand_off_after is not None:
                writer.wait()
                if not writer.finished and outcome.customers_fetched >= hand_off_after:
                    raise _HandOff
    if outcome.created_filter_refused:
        log.warning(
            f"Stripe refused the `created` filter: {LISTING_WITHOUT_SNAPSHOT}; customers "
            "created during the import may or may not be included"
        )
    if outcome.limit_reached:
        log.warning(
            f"Stopped at the limit of {limit} customers; the account has more customers in Stripe"
        )


@dataclass
class _Writing:
    """The batch a :class:`_BatchWriter` is writing. A run terminated in the middle of a bulk
    write (on the embedded store the write is in the interrupted thread) may have written some of
    its contacts, which the import's counts do not include; its message says so."""

    customers: int = 0
    """Customers of the batch being written; 0 between writes and in a dry run."""


class _BatchWriter:
    """Writes planned batches and checkpoints them, in order, on a thread of its own (with its
    own connection from ``connect``), one batch at a time: :meth:`write` waits for the batch
    before to be written and raises its error. The outcome is counted here, batch by batch.
    Leaving the ``with`` block waits for the last batch (and raises its error, unless the
    block is already failing).

    On the embedded store (:func:`store.prefers_one_writer`) it writes in the calling thread,
    with ``db``: there a connection re-reads and re-indexes a whole collection after another
    connection wrote to it, so a writer thread would have the import's next query of
    ``contacts`` read every contact of the store again, batch after batch and import after
    import."""

    def __init__(
        self,
        db,
        connect: Callable[[], Any],
        claim: queue.Claim,
        outcome: ImportOutcome,
        created_lte: int | None,
        limit: int,
        writing: _Writing,
        log: logging.Logger,
    ) -> None:
        self._connect = connect
        self._writing = writing
        self._claim = claim
        self._outcome = outcome
        self._created_lte = created_lte
        self._limit = limit
        self._log = log
        inline = store.prefers_one_writer(db)
        self._db = db if inline else None
        self._executor = (
            None
            if inline
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-writer")
        )
        self._pending: Future[None] | None = None
        self.finished = False
        """Whether the last batch written left nothing to list (or reached the limit)."""

    def __enter__(self) -> _BatchWriter:
        if self._executor is not None:
            # Start the thread before the first write: an interrupt (a terminated run) landing
            # while the first write started its thread would leave that write out of the wait
            # on leaving, its batch written but not counted.
            self._executor.submit(lambda: None).result()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        try:
            if self._pending is not None:
                wait([self._pending])
                if exc_type is None:
                    self._pending.result()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)

    def write(self, batch: CustomerBatch, plan: UpsertPlan, listing: CustomerListing) -> None:
        if self._executor is None:
            self._write(batch, plan, listing.snapshot)
            return
        self.wait()
        self._pending = self._executor.submit(self._write, batch, plan, listing.snapshot)

    def wait(self) -> None:
        """Wait until the batch handed over last is written; raise its error."""
        if self._pending is not None:
            self._pending.result()

    def _write(self, batch: CustomerBatch, plan: UpsertPlan, snapshot: bool) -> None:
        if self._db is None:
            self._db = self._connect()
        db, claim, outcome = self._db, self._claim, self._outcome
        target = claim.request.upsert_target
        if target.dry_run:
            result = planned_result(plan)
        else:
            contacts, change_log = db[store.CONTACTS], db[store.IMPORT_CHANGES]
            self._writing.customers = len(batch.customers)
            result = execute_plan(contacts, plan, change_log, target.import_id)
        outcome.created_filter_refused |= not snapshot
        pages_before = outcome.pages_fetched
        outcome.add_batch(batch.pages, len(batch.customers), result)
        self._writing.customers = 0
        finished = not batch.has_more or outcome.customers_fetched >= self._limit
        self.finished = finished
        outcome.limit_reached = batch.has_more and finished
        queue.save_checkpoint(
            db,
            claim.request.id,
            Checkpoint(
                run_id=claim.run_id,
                # Without the snapshot, a resumed attempt lists without it too.
                created_lte=self._created_lte if snapshot else None,
                cursor=None if finished else batch.cursor,
                outcome=outcome,
                cursor_created=None if finished else batch.cursor_created,
            ),
        )
        if batch.number == 1 or pages_before // LOG_EVERY_PAGES < (
            outcome.pages_fetched // LOG_EVERY_PAGES
        ):
            self._log.info(
                f"Page {outcome.pages_fetched}: {outcome.customers_fetched} customers so "
                f"far, {outcome.records_added} added, {outcome.records_updated} updated, "
                f"{outcome.import_errors_count} errors"
            )


def _recall_written(
    client: stripe.StripeClient,
    contacts,
    target: UpsertTarget,
    seen: SeenCustomers,
    created_lte: int | None,
    cursor: str,
    outcome: ImportOutcome,
    settings: FetchSettings,
) -> None:
    """Re-read (without writing) the customers an earlier attempt wrote, down to its cursor, so a
    resumed attempt still reports a later customer with an already-imported email as a
    duplicate."""
    with customer_batches(
        client, created_lte=created_lte, max_customers=outcome.customers_fetched, settings=settings
    ) as listing:
        for batch in listing:
            written = batch.customers
            if cursor in (ids := [customer["id"] for customer in written]):
                written = written[: ids.index(cursor) + 1]
            recall_page(contacts, written, target, seen)
            if len(written) < len(batch.customers):
                return


def _fail(
    db,
    claim: queue.Claim,
    outcome: ImportOutcome,
    message: str,
    log: logging.Logger,
    *,
    cause: BaseException | None = None,
) -> NoReturn:
    """Close the request ``failed`` and raise :class:`ImportFailed`; ``cause`` (an unexpected
    exception) stays attached for its traceback."""
    result_id = _close(db, claim, outcome, queue.FAILED, message)
    log.error(f"Import {claim.request.id} failed: {message}")
    raise ImportFailed(message, outcome, result_id=result_id) from cause


def _close(
    db, claim: queue.Claim, outcome: ImportOutcome, status: str, message: str
) -> ObjectId | None:
    outcome.finish()
    return queue.close(db, claim.request.id, claim.run_id, outcome, status=status, message=message)


def _new_outcome(claim: queue.Claim, max_customers: int) -> ImportOutcome:
    request = claim.request
    return ImportOutcome(
        import_id=str(request.id),
        account_id=str(request.account_id),
        user_id=str(request.user_id),
        contact_type=request.contact_type,
        started_at=claim.claimed_at,
        max_customers=max_customers,
        dry_run=request.dry_run,
    )


def keep_in_sync(db, outcome: ImportOutcome) -> ObjectId | None:
    """After a completed ``keep_in_sync`` import, start keeping its account's contacts in step
    from the event cursor taken when it began; returns the sync state's id (None: the request
    did not ask for it)."""
    if outcome.events_cursor is None or outcome.dry_run:
        return None
    document = queue.request_document(db, ObjectId(outcome.import_id))
    if document is None:
        return None
    request = parse_import_request(document)
    if not request.keep_in_sync:
        return None
    interval = document.get("sync_interval_seconds")
    return record_full_import(
        db,
        account_id=request.account_id,
        import_type=request.import_type,
        user_id=request.user_id,
        mappings=document.get("mappings"),
        new_contact=request.new_contact,
        deletion_policy=request.deletion_policy,
        events_cursor=EventsCursor.from_document(outcome.events_cursor),
        finished_at=outcome.finished_at or datetime.now(UTC),
        parent_account=request.parent_account,
        client_id=request.client_id,
        import_id=request.id,
        sync_interval_seconds=interval if isinstance(interval, int) and interval > 0 else None,
    )


def _progress(outcome: ImportOutcome) -> str:
    return f"{outcome.pages_fetched} page(s), {outcome.customers_fetched} customers"


def _failure_message(error: Exception) -> str:
    if isinstance(error, stripe.AuthenticationError | stripe.PermissionError):
        return f"Stripe rejected the account's billing key: {stripe_error_message(error)}"
    if isinstance(error, stripe.InvalidRequestError):
        return f"Stripe refused the customer listing: {stripe_error_message(error)}"
    if isinstance(error, stripe.StripeError):
        return f"Stripe is unavailable: {stripe_error_message(error)}"
    if isinstance(error, PyMongoError):
        return f"MongoDB error: {type(error).__name__}: {error}"
    return f"Import failed: {type(error).__name__}: {error}"


def _scrub(message: str, secret_key: str) -> str:
    """Never let the key itself into a message, whatever an error chose to echo."""
    return message.replace(secret_key, "***") if secret_key else message
