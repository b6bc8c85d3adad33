"""The ops of ``billing_contact_import``: claim the request, sync the customers, record the result.

The ops are adapters: parsing lives in ``requests``, mapping in ``mapping``, matching and bulk
writes in ``upsert``, paging in ``fetch``, counts and documents in ``results``. Everything that
fails after the claim goes through :func:`fail_import`, which marks the request ``failed`` with
the reason, writes a ``failed`` import result and raises :class:`dagster.Failure` with the same
message for the run page.

The Stripe secret key is read from MongoDB inside :func:`sync_customers`, the only op that calls
Stripe; it is never an op output, config value, tag, log line or metadata entry.
"""

import itertools
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
from stripe_crm_pipelines.billing_import.fetch import iter_customer_pages
from stripe_crm_pipelines.billing_import.requests import (
    IMPORT_SOURCE,
    ImportRequest,
    InvalidImportRequest,
    billing_key_filter,
    parse_import_request,
    parse_stripe_credentials,
)
from stripe_crm_pipelines.billing_import.results import (
    ImportOutcome,
    completed_request_update,
    failed_request_update,
    outcome_of_document,
    result_document,
    run_metadata,
)
from stripe_crm_pipelines.billing_import.upsert import (
    SeenCustomers,
    UpsertTarget,
    backfill_email_keys,
    recall_page,
    upsert_customers,
)
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from stripe_crm_pipelines.resources.stripe import RequestStats, stripe_error_message

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

# Stripe answers that no retry can fix: bad key (401), no access (403), bad request or unknown
# connected account (400/404).
PERMANENT_STRIPE_ERRORS = (
    stripe.AuthenticationError,
    stripe.PermissionError,
    stripe.InvalidRequestError,
)
TRANSIENT_ERRORS = (stripe.StripeError, PyMongoError)


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
        raise Failure(
            description=_not_claimable(db, import_id),
            allow_retries=False,
        )
    try:
        request = parse_import_request(document)
    except InvalidImportRequest as error:
        fail_import(
            context,
            db,
            import_id,
            f"Invalid import request: {error}",
            outcome_of_document(document),
        )
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
        f"at most {max_customers} customers"
    )
    return ClaimedImport(
        import_id=str(import_id),
        account_id=str(request.account_id),
        max_customers=max_customers,
        claimed_at=now,
    )


@op(
    description="Stream the connected account's Stripe customers page by page (100 per page): "
    "map each page, match it to contacts and write it with one bulk write, then checkpoint the "
    "counts and cursor on the request. Outputs only the counts.",
    retry_policy=SYNC_RETRY_POLICY,
)
def sync_customers(
    context: OpExecutionContext,
    claimed: ClaimedImport,
    mongo: MongoResource,
    stripe: StripeResource,
) -> ImportOutcome:
    db = mongo.database()
    import_id = ObjectId(claimed.import_id)
    document = _claimed_request(context, db, import_id)
    try:
        request = parse_import_request(document)
    except InvalidImportRequest as error:
        fail_import(
            context,
            db,
            import_id,
            f"Invalid import request: {error}",
            outcome_of_document(document),
        )

    checkpoint = request.checkpoint or {}
    resuming = checkpoint.get("run_id") == context.run_id
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
        credentials = parse_stripe_credentials(
            db[store.STRIPE_KEYS].find_one(billing_key_filter(request.account_id)),
            request.account_id,
        )
    except InvalidImportRequest as error:
        fail_import(context, db, import_id, str(error), outcome)

    stats = RequestStats()
    client = stripe.client(credentials.secret_key, credentials.stripe_account, stats=stats)
    try:
        _sync_pages(context, db, request, outcome, client, checkpoint if resuming else None)
    except Failure:
        raise
    except Exception as error:
        outcome.record_requests(stats)
        message = _scrub(_failure_message(error), credentials.secret_key)
        if _is_transient(error) and context.retry_number < SYNC_RETRY_POLICY.max_retries:
            context.log.warning(f"{message}; the op will retry from the last checkpoint")
            raise Failure(description=message, allow_retries=True) from None
        unexpected = not isinstance(error, TRANSIENT_ERRORS)
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
    cause: BaseException | None = None,
) -> NoReturn:
    """Close a claimed request as ``failed`` with ``message`` and fail the op with it.

    ``cause`` (an unexpected exception) stays attached for its traceback; expected errors are
    fully described by ``message``.
    """
    outcome.finish()
    result_id = save_result(
        db, result_document(outcome, status="failed", run_id=context.run_id, error=message)
    )
    db[store.QUEUES].update_one(
        {"_id": import_id, "claimed_by_run": context.run_id},
        failed_request_update(message, outcome.finished_at, result_id),
    )
    context.log.error(f"Import {import_id} failed: {message}")
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
) -> None:
    """Fetch → map → match → bulk write → checkpoint, one page at a time."""
    contacts = db[store.CONTACTS]
    target = UpsertTarget(
        account_id=request.account_id,
        contact_type=request.contact_type,
        user_id=request.user_id,
        new_contact=request.new_contact,
        mappings=request.mappings,
    )
    seen = SeenCustomers()
    if checkpoint is None:
        created_lte, cursor = int(time.time()), None
        outcome.add_backfill(backfill_email_keys(contacts, target))
        if outcome.email_keys_backfilled or outcome.email_key_conflicts:
            context.log.info(
                f"Gave {outcome.email_keys_backfilled} existing contact(s) a normalised email "
                f"key ({outcome.email_key_conflicts} share an email with another contact)"
            )
    else:
        created_lte, cursor = checkpoint["created_lte"], checkpoint["cursor"]
        if cursor is None:
            return
        _recall_written_pages(client, contacts, target, seen, created_lte, outcome.pages_fetched)

    limit = outcome.max_customers or DEFAULT_MAX_CUSTOMERS
    pages = iter_customer_pages(
        client,
        created_lte=created_lte,
        starting_after=cursor,
        max_customers=limit - outcome.customers_fetched,
        first_page_number=outcome.pages_fetched + 1,
    )
    for page in pages:
        outcome.add_page(
            len(page.customers), upsert_customers(contacts, page.customers, target, seen)
        )
        finished = not page.has_more or outcome.customers_fetched >= limit
        outcome.limit_reached = page.has_more and finished
        _save_checkpoint(
            context, db, request.id, outcome, created_lte, None if finished else page.cursor
        )
        if page.number == 1 or page.number % LOG_EVERY_PAGES == 0:
            context.log.info(
                f"Page {page.number}: {outcome.customers_fetched} customers so far, "
                f"{outcome.records_added} added, {outcome.records_updated} updated, "
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
    pages_written: int,
) -> None:
    """Re-read (without writing) the pages an earlier attempt wrote, so a resumed attempt still
    reports a later customer with an already-imported email as a duplicate."""
    pages = iter_customer_pages(client, created_lte=created_lte)
    for page in itertools.islice(pages, pages_written):
        recall_page(contacts, page.customers, target, seen)


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
    )


def save_result(db, document: dict[str, Any]) -> ObjectId:
    """Insert the result once per run, even when the op writing it is retried."""
    saved = db[store.IMPORT_RESULTS].find_one_and_replace(
        {"import_id": document["import_id"], "run_id": document["run_id"]},
        document,
        projection={"_id": 1},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return saved["_id"]


def _is_transient(error: Exception) -> bool:
    return isinstance(error, TRANSIENT_ERRORS) and not isinstance(error, PERMANENT_STRIPE_ERRORS)


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
