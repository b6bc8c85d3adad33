"""The ops of ``billing_contact_import``: claim the request, sync the customers, record the result.

The ops are adapters: parsing lives in ``requests``, mapping in ``mapping``, matching and bulk
writes in ``upsert``, paging in ``fetch``, counts and documents in ``results``. Everything that
fails after the claim goes through :func:`fail_import`, which marks the request ``failed`` with
the reason, writes a ``failed`` import result and raises :class:`dagster.Failure` with the same
message for the run page. A request set to ``cancelled`` while it runs, or a run terminated from
the UI, stops between pages and is closed ``cancelled`` with the counts so far; a run that dies
without closing its request is recovered by the sensors (see ``recovery``).

The Stripe secret key is read from MongoDB inside :func:`sync_customers`, the only op that calls
Stripe; it is never an op output, config value, tag, log line or metadata entry.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import stripe
from bson import ObjectId
from dagster import (
    AssetMaterialization,
    Backoff,
    Config,
    DagsterExecutionInterruptedError,
    Failure,
    Jitter,
    MetadataValue,
    OpExecutionContext,
    RetryPolicy,
    op,
)
from pydantic import Field
from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.fetch import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_FAN_OUT_AFTER_SECONDS,
    CustomerBatches,
    FetchSettings,
    iter_customer_batches,
)
from stripe_crm_pipelines.billing_import.rate_limit import (
    LIVE_REQUESTS_PER_SECOND,
    TEST_REQUESTS_PER_SECOND,
    bucket_for_key,
)
from stripe_crm_pipelines.billing_import.recovery import (
    ClaimWatch,
    ImportCancelled,
    close_claimed_request,
    inherited_checkpoint,
    termination_requested,
)
from stripe_crm_pipelines.billing_import.requests import (
    IMPORT_SOURCE,
    ImportRequest,
    InvalidImportRequest,
    parse_import_request,
)
from stripe_crm_pipelines.billing_import.results import (
    ImportOutcome,
    completed_request_update,
    outcome_of_document,
    result_document,
    run_metadata,
    save_result,
)
from stripe_crm_pipelines.billing_import.upsert import (
    SeenCustomers,
    UpsertTarget,
    backfill_email_keys,
    recall_page,
    upsert_customers,
)
from stripe_crm_pipelines.errors import is_transient
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from stripe_crm_pipelines.resources.stripe import RequestStats, stripe_error_message
from stripe_crm_pipelines.stripe_keys import StripeKeyError, load_billing_credentials

DEFAULT_MAX_CUSTOMERS = 50_000
"""Safety cap of one import (seed issue 8) when neither the request nor the run sets one."""
LOG_EVERY_PAGES = 10
OBJECT_ID_PATTERN = r"^[0-9a-fA-F]{24}$"

SYNC_RETRY_POLICY = RetryPolicy(
    max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
"""Retries of ``sync_customers`` after transient Stripe or MongoDB errors; a retry resumes from
the request's checkpoint. Each Stripe request is also retried inside the client."""
WRITE_RETRY_POLICY = RetryPolicy(max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL)
EXPECTED_ERRORS = (stripe.StripeError, PyMongoError)
"""Errors the failure message fully describes; anything else keeps its traceback."""


class ImportRunConfig(Config):
    """Which import request this run processes. The sensor fills it in; so can a person."""

    import_id: str = Field(
        description="The _id of the pending import request in the `queues` collection "
        "(24 hexadecimal characters). The request must be pending and not in progress.",
        pattern=OBJECT_ID_PATTERN,
    )
    max_customers: int | None = Field(
        default=None,
        ge=1,
        description="Import at most this many Stripe customers (newest first). Empty: the "
        f"request's own max_customers, else {DEFAULT_MAX_CUSTOMERS}.",
    )


class SyncCustomersConfig(Config):
    """How ``sync_customers`` lists Stripe customers; the defaults suit Stripe's own limits."""

    fetch_concurrency: int = Field(
        default=DEFAULT_CONCURRENCY,
        ge=1,
        le=32,
        description="At most this many windows of `created` seconds listed at once after the "
        "walk fans out; it keeps as many going as the key's rate limit can serve at the pace "
        "of its pages (6 at 25 requests/s and 200 ms pages). 1 walks the customer list "
        "sequentially, for servers without `created` filters.",
    )
    fan_out_after_seconds: float = Field(
        default=DEFAULT_FAN_OUT_AFTER_SECONDS,
        ge=0,
        description="List sequentially for this long before splitting the rest into windows: "
        "small accounts finish first and pay no extra request; 0 splits after the first page.",
    )
    requests_per_second: float | None = Field(
        default=None,
        gt=0,
        description="Client-side limit on Stripe requests per second, shared by every import "
        f"of the same key in a process. Empty: {TEST_REQUESTS_PER_SECOND:g} for test keys, "
        f"{LIVE_REQUESTS_PER_SECOND:g} for live keys (Stripe's defaults).",
    )
    write_batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE,
        ge=100,
        le=10_000,
        description="Customers matched with one query, written with one bulk write and "
        "checkpointed together once the walk has fanned out (before, each page is one batch); "
        "half as many when the next page is not fetched yet, so the writer does not wait.",
    )

    def fetch_settings(self, requests_per_second: float | None = None) -> FetchSettings:
        return FetchSettings(
            concurrency=self.fetch_concurrency,
            requests_per_second=requests_per_second,
            fan_out_after_seconds=self.fan_out_after_seconds,
            batch_size=self.write_batch_size,
        )


@dataclass(frozen=True)
class ClaimedImport:
    """The claimed request, as passed from ``claim_import_request`` to ``sync_customers``."""

    import_id: str
    account_id: str
    max_customers: int
    claimed_at: datetime


@op(
    description="Atomically claim the pending import request (pending, not in progress → in "
    "progress, owned by this run) and validate it, its mappings and its account before any "
    "contact is written. A request that is not pending fails the run without being changed.",
)
def claim_import_request(
    context: OpExecutionContext, config: ImportRunConfig, mongo: MongoResource
) -> ClaimedImport:
    db = mongo.database()
    import_id = ObjectId(config.import_id)
    now = datetime.now(UTC)
    document = db[store.QUEUES].find_one_and_update(
        {"_id": import_id, "source": IMPORT_SOURCE, "status": "pending", "in_progress": False},
        {
            "$set": {"in_progress": True, "claimed_by_run": context.run_id, "claimed_at": now},
            "$inc": {"attempts": 1},
            "$unset": {"checkpoint": "", "error": ""},
        },
        return_document=ReturnDocument.AFTER,
    )
    if document is None:
        # A claim retried after a lost reply finds its own first try.
        document = db[store.QUEUES].find_one(
            {"_id": import_id, "in_progress": True, "claimed_by_run": context.run_id}
        )
    if document is None:
        raise Failure(
            description=_not_claimable(db, import_id),
            allow_retries=False,
        )
    request = _parse_or_fail(context, db, import_id, document)
    if db[store.ACCOUNTS].find_one({"_id": request.account_id}, {"_id": 1}) is None:
        fail_import(
            context,
            db,
            import_id,
            f"Account {request.account_id} no longer exists",
            _new_outcome(request, now),
        )
    max_customers = config.max_customers or request.max_customers or DEFAULT_MAX_CUSTOMERS
    context.log.info(
        f"Claimed import {import_id} (attempt {request.attempts}): {request.import_type} → "
        f"{request.contact_type} contacts of account {request.account_id}, "
        f"{len(request.mappings)} mapped field(s), new_contact={request.new_contact}, "
        f"at most {max_customers} customers{', dry run: no writes' if request.dry_run else ''}"
    )
    return ClaimedImport(
        import_id=str(import_id),
        account_id=str(request.account_id),
        max_customers=max_customers,
        claimed_at=now,
    )


def _parse_or_fail(context: OpExecutionContext, db, import_id: ObjectId, document) -> ImportRequest:
    """The claimed request, parsed; an invalid one fails the import with the reason."""
    try:
        return parse_import_request(document)
    except InvalidImportRequest as error:
        fail_import(
            context,
            db,
            import_id,
            f"Invalid import request: {error}",
            outcome_of_document(document),
        )


@op(
    description="Stream the connected account's Stripe customers (100 per page; large accounts "
    "as concurrent `created` windows under a per-key rate limit): map each batch, match it to "
    "contacts with one query and write it with one bulk write, then checkpoint the counts and "
    "cursor on the request. Outputs only the counts.",
    retry_policy=SYNC_RETRY_POLICY,
)
def sync_customers(
    context: OpExecutionContext,
    config: SyncCustomersConfig,
    claimed: ClaimedImport,
    mongo: MongoResource,
    stripe: StripeResource,
) -> ImportOutcome:
    db = mongo.database()
    import_id = ObjectId(claimed.import_id)
    document = _claimed_request(context, db, import_id)
    request = _parse_or_fail(context, db, import_id, document)

    # The claim cleared any older checkpoint: what is left is this run's own (an op retry) or
    # the one a dead attempt left for this run to resume from (see recovery.requeue_update).
    checkpoint = request.checkpoint or inherited_checkpoint(document) or {}
    resuming = bool(checkpoint)
    if resuming:
        outcome = ImportOutcome.resume(checkpoint["outcome"])
        context.log.info(
            f"Resuming after page {outcome.pages_fetched} "
            f"({outcome.customers_fetched} customers already imported)"
        )
    else:
        outcome = _new_outcome(request, claimed.claimed_at)
        outcome.max_customers = claimed.max_customers

    try:
        credentials = load_billing_credentials(db, request.account_id)
    except StripeKeyError as error:
        fail_import(context, db, import_id, str(error), outcome)

    stats = RequestStats()
    limiter = bucket_for_key(credentials.secret_key, config.requests_per_second)
    client = stripe.client(
        credentials.secret_key,
        credentials.stripe_account,
        stats=stats,
        before_request=limiter.acquire,
    )
    try:
        with ClaimWatch(mongo.database, import_id, context.run_id) as watch:
            watch.raise_if_stopped()
            _sync_pages(
                context,
                db,
                request,
                outcome,
                client,
                checkpoint if resuming else None,
                watch,
                config.fetch_settings(limiter.rate),
            )
    except Failure:
        raise
    except ImportCancelled:
        outcome.record_requests(stats)
        fail_import(
            context,
            db,
            import_id,
            f"Cancelled on request after {_progress(outcome)}",
            outcome,
            status="cancelled",
        )
    except (DagsterExecutionInterruptedError, KeyboardInterrupt):
        # Terminated from the UI: close as cancelled with the exact counts. Any other interrupt
        # (a preempted worker) leaves the request claimed for recovery to queue it again.
        if termination_requested(context.instance, context.run_id):
            outcome.record_requests(stats)
            outcome.finish()
            message = f"Run terminated; import cancelled after {_progress(outcome)}"
            close_claimed_request(
                db, import_id, context.run_id, outcome, status="cancelled", message=message
            )
            context.log.warning(f"Import {import_id} cancelled: {message}")
        raise
    except Exception as error:
        outcome.record_requests(stats)
        message = _scrub(_failure_message(error), credentials.secret_key)
        if is_transient(error) and context.retry_number < SYNC_RETRY_POLICY.max_retries:
            context.log.warning(f"{message}; the op will retry from the last checkpoint")
            raise Failure(description=message, allow_retries=True) from None
        unexpected = not isinstance(error, EXPECTED_ERRORS)
        fail_import(context, db, import_id, message, outcome, cause=error if unexpected else None)

    outcome.record_requests(stats)
    outcome.finish()
    context.log.info(
        f"Synced {outcome.customers_fetched} customers over {outcome.pages_fetched} page(s): "
        f"{outcome.records_added} added, {outcome.records_updated} updated, "
        f"{outcome.records_skipped} skipped, {outcome.duplicates} duplicates, "
        f"{outcome.import_errors_count} errors"
    )
    context.add_output_metadata(run_metadata(outcome))
    return outcome


@op(
    description="Write the contact_import_results document, mark the request completed (it is "
    "kept for audit) and record the import in the account's crm_contacts asset history.",
    retry_policy=WRITE_RETRY_POLICY,
)
def record_import_result(
    context: OpExecutionContext, outcome: ImportOutcome, mongo: MongoResource
) -> str:
    db = mongo.database()
    import_id = ObjectId(outcome.import_id)
    result_id = save_result(db, result_document(outcome, status="completed", run_id=context.run_id))
    closed = db[store.QUEUES].update_one(
        {"_id": import_id, "claimed_by_run": context.run_id},
        completed_request_update(result_id, outcome.finished_at or datetime.now(UTC)),
    )
    if closed.matched_count == 0:
        context.log.warning(
            f"Import request {import_id} is no longer claimed by this run; left unchanged"
        )
    counts = {name: MetadataValue.int(value) for name, value in outcome.counts().items()}
    if not outcome.dry_run:  # a dry run changed no contact
        context.log_event(
            AssetMaterialization(
                asset_key=["crm_contacts", outcome.account_id],
                description=f"Stripe {outcome.contact_type} import {outcome.import_id}",
                metadata={
                    **counts,
                    "import_id": MetadataValue.text(outcome.import_id),
                    "result_id": MetadataValue.text(str(result_id)),
                },
            )
        )
    context.log.info(f"Import {import_id} completed; result {result_id}")
    context.add_output_metadata(
        {"result_id": MetadataValue.text(str(result_id)), **run_metadata(outcome)}
    )
    return str(result_id)


def fail_import(
    context: OpExecutionContext,
    db,
    import_id: ObjectId,
    message: str,
    outcome: ImportOutcome,
    *,
    status: str = "failed",
    cause: BaseException | None = None,
) -> NoReturn:
    """Close a claimed request as ``failed`` (or ``cancelled``) with ``message`` and fail the op
    with it.

    ``cause`` (an unexpected exception) stays attached for its traceback; expected errors are
    fully described by ``message``.
    """
    outcome.finish()
    result_id = close_claimed_request(
        db, import_id, context.run_id, outcome, status=status, message=message
    )
    context.log.error(f"Import {import_id} {status}: {message}")
    raise Failure(
        description=message,
        metadata={
            "import_id": MetadataValue.text(str(import_id)),
            "result_id": MetadataValue.text(str(result_id)),
            **run_metadata(outcome),
        },
        allow_retries=False,
    ) from cause


def _sync_pages(
    context: OpExecutionContext,
    db,
    request: ImportRequest,
    outcome: ImportOutcome,
    client: stripe.StripeClient,
    checkpoint: dict[str, Any] | None,
    watch: ClaimWatch,
    settings: FetchSettings,
) -> None:
    """Fetch → map → match → bulk write → checkpoint, one batch at a time (a page, or
    ``settings.batch_size`` customers once the walk fans out); between batches, stop if ``watch``
    says the request was cancelled or taken over."""
    contacts = db[store.CONTACTS]
    target = UpsertTarget(
        account_id=request.account_id,
        contact_type=request.contact_type,
        user_id=request.user_id,
        new_contact=request.new_contact,
        mappings=request.mappings,
        dry_run=request.dry_run,
        import_id=request.id,
    )
    change_log = db[store.IMPORT_CHANGES]
    seen = SeenCustomers()
    # A dry run writes no email key; it keeps the would-be keys in ``seen``, on every attempt.
    dry_backfill = backfill_email_keys(contacts, target, seen) if request.dry_run else None
    limit = outcome.max_customers or DEFAULT_MAX_CUSTOMERS
    if checkpoint is None:
        created_lte, cursor = int(time.time()), None
    else:
        created_lte, cursor = checkpoint["created_lte"], checkpoint["cursor"]
        if cursor is None:
            return
        _recall_written_pages(
            client, contacts, target, seen, created_lte, cursor, outcome, settings
        )
    # Listing starts at once: pages arrive while existing contacts get their email keys.
    with CustomerBatches(
        client,
        created_lte=created_lte,
        starting_after=cursor,
        max_customers=limit - outcome.customers_fetched,
        settings=settings,
    ) as batches:
        if checkpoint is None:
            outcome.add_backfill(dry_backfill or backfill_email_keys(contacts, target))
            if outcome.email_keys_backfilled or outcome.email_key_conflicts:
                context.log.info(
                    f"Gave {outcome.email_keys_backfilled} existing contact(s) a normalised "
                    f"email key ({outcome.email_key_conflicts} share an email with another "
                    "contact)"
                )
        for batch in batches:
            outcome.add_page(
                len(batch.customers),
                upsert_customers(contacts, batch.customers, target, seen, change_log),
            )
            outcome.pages_fetched += batch.pages - 1  # add_page counts one; a batch may span more
            finished = not batch.has_more or outcome.customers_fetched >= limit
            outcome.limit_reached = batch.has_more and finished
            _save_checkpoint(
                context, db, request.id, outcome, created_lte, None if finished else batch.cursor
            )
            watch.raise_if_stopped()
            pages_before = outcome.pages_fetched - batch.pages
            if batch.number == 1 or pages_before // LOG_EVERY_PAGES < (
                outcome.pages_fetched // LOG_EVERY_PAGES
            ):
                context.log.info(
                    f"Page {outcome.pages_fetched}: {outcome.customers_fetched} customers so "
                    f"far, {outcome.records_added} added, {outcome.records_updated} updated, "
                    f"{outcome.import_errors_count} errors"
                )
    if outcome.limit_reached:
        context.log.warning(
            f"Stopped at the limit of {limit} customers; the account has more customers in Stripe"
        )


def _recall_written_pages(
    client: stripe.StripeClient,
    contacts,
    target: UpsertTarget,
    seen: SeenCustomers,
    created_lte: int,
    cursor: str,
    outcome: ImportOutcome,
    settings: FetchSettings,
) -> None:
    """Re-read (without writing) the customers an earlier attempt wrote, down to its cursor, so a
    resumed attempt still reports a later customer with an already-imported email as a
    duplicate."""
    batches = iter_customer_batches(
        client, created_lte=created_lte, max_customers=outcome.customers_fetched, settings=settings
    )
    for batch in batches:
        written = batch.customers
        if cursor in (ids := [customer["id"] for customer in written]):
            written = written[: ids.index(cursor) + 1]
        recall_page(contacts, written, target, seen)
        if len(written) < len(batch.customers):
            return


def _save_checkpoint(
    context: OpExecutionContext,
    db,
    import_id: ObjectId,
    outcome: ImportOutcome,
    created_lte: int,
    cursor: str | None,
) -> None:
    saved = db[store.QUEUES].update_one(
        {"_id": import_id, "claimed_by_run": context.run_id},
        {
            "$set": {
                "checkpoint": {
                    "run_id": context.run_id,
                    "cursor": cursor,
                    "created_lte": created_lte,
                    "saved_at": datetime.now(UTC),
                    "outcome": outcome.checkpoint(),
                }
            }
        },
    )
    if saved.matched_count == 0:
        raise Failure(
            description=f"Import request {import_id} is no longer claimed by this run; stopped",
            allow_retries=False,
        )


def _claimed_request(context: OpExecutionContext, db, import_id: ObjectId) -> dict[str, Any]:
    document = db[store.QUEUES].find_one({"_id": import_id, "claimed_by_run": context.run_id})
    if document is None:
        raise Failure(
            description=f"Import request {import_id} is no longer claimed by this run",
            allow_retries=False,
        )
    return document


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


def _new_outcome(request: ImportRequest, started_at: datetime) -> ImportOutcome:
    return ImportOutcome(
        import_id=str(request.id),
        account_id=str(request.account_id),
        user_id=str(request.user_id),
        contact_type=request.contact_type,
        started_at=started_at,
        dry_run=request.dry_run,
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
