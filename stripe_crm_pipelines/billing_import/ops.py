"""The ops of ``billing_contact_import``: claim the request, sync the customers, record the result.

The ops are adapters around :mod:`~stripe_crm_pipelines.billing_import.importer` (the import
itself, without Dagster) and :mod:`~stripe_crm_pipelines.billing_import.queue` (the request's
states): they pass in config and resources, and turn what comes back into Dagster's terms. A
failed or cancelled import (its request already closed with the reason) becomes a
:class:`dagster.Failure` with the same message and the counts as metadata; a transient error
becomes a retry of ``sync_customers`` from its checkpoint; a completed one becomes output
metadata and an event of the account's ``crm_contacts`` asset.

The Stripe secret key is read from MongoDB inside the import, in ``sync_customers``, the only op
that calls Stripe; it is never an op output, config value, tag, log line or metadata entry.
"""

from bson import ObjectId
from dagster import (
    Backoff,
    Config,
    DagsterInstance,
    DagsterRunStatus,
    Failure,
    Jitter,
    MetadataValue,
    OpExecutionContext,
    RetryPolicy,
    op,
)
from pydantic import Field

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import importer, queue
from stripe_crm_pipelines.billing_import.batches import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_FAN_OUT_AFTER_SECONDS,
    FetchSettings,
)
from stripe_crm_pipelines.billing_import.importer import (
    DEFAULT_MAX_CUSTOMERS,
    ClaimedImport,
    ImportCancelled,
    ImportFailed,
)
from stripe_crm_pipelines.billing_import.metadata import (
    closed_metadata,
    import_asset_metadata,
    run_metadata,
)
from stripe_crm_pipelines.billing_import.queue import ClaimLost, NotClaimable
from stripe_crm_pipelines.billing_import.rate_limit import (
    LIVE_REQUESTS_PER_SECOND,
    TEST_REQUESTS_PER_SECOND,
)
from stripe_crm_pipelines.billing_import.results import ImportOutcome
from stripe_crm_pipelines.catalog import account_events, ensure_account_partition
from stripe_crm_pipelines.resources import MongoResource, StripeResource

SYNC_RETRY_POLICY = RetryPolicy(
    max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
"""Retries of ``sync_customers`` after transient Stripe or MongoDB errors; a retry resumes from
the request's checkpoint. Each Stripe request is also retried inside the client."""
WRITE_RETRY_POLICY = RetryPolicy(max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL)


class ImportRunConfig(Config):
    """Which import request this run processes. The sensor fills it in; so can a person."""

    import_id: str = Field(
        description="The _id of the pending import request in the `queues` collection "
        "(24 hexadecimal characters), pending and not in progress. An id comes from queuing an "
        "import: the queue_billing_import job or `python -m stripe_crm_pipelines.imports "
        "queue` (it prints the id). billing_import_sensor then launches the run itself, with "
        "the stripe_crm/* tags and the one-import-per-Stripe-account limit that a run launched "
        "here by hand lacks.",
        pattern=store.OBJECT_ID_PATTERN,
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
        "of its pages (7 at 25 requests/s and 200 ms pages). 1 walks the customer list "
        "sequentially, still under the snapshot `created[lte]` (the second the import "
        "started). A server that refuses the `created` filter is listed sequentially without "
        "a snapshot whatever this says, and the result records it.",
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

    def fetch_settings(self) -> FetchSettings:
        return FetchSettings(
            concurrency=self.fetch_concurrency,
            requests_per_second=self.requests_per_second,
            fan_out_after_seconds=self.fan_out_after_seconds,
            batch_size=self.write_batch_size,
        )


@op(
    description="Atomically claim the pending import request (pending, not in progress → in "
    "progress, owned by this run) and validate it, its mappings and its account before any "
    "contact is written. A request that is not pending fails the run without being changed.",
)
def claim_import_request(
    context: OpExecutionContext, config: ImportRunConfig, mongo: MongoResource
) -> ClaimedImport:
    db = mongo.database()
    try:
        claimed = importer.claim_import(
            db,
            ObjectId(config.import_id),
            context.run_id,
            max_customers=config.max_customers,
            log=context.log,
        )
    except (NotClaimable, store.MissingIndexesError) as error:
        raise Failure(description=str(error), allow_retries=False) from None
    except ImportFailed as failed:
        raise _closed_failure(failed) from None
    account_id = claimed.request.account_id
    # The run queue keeps this run apart from other runs tagged with the Stripe account; a
    # batch run's import of the account shows as a claimed request (billing_import/exclusion.py).
    others = queue.others_working_on(db, account_id, context.run_id)
    if others:
        reason = (
            f"import {others[0]} (claimed by another run) works on account {account_id}; "
            "left pending for a later run"
        )
        queue.release(db, claimed.request.id, context.run_id, reason)
        raise Failure(
            description=f"Import {config.import_id} released: {reason}", allow_retries=False
        )
    return claimed


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
    try:
        outcome = importer.run_import(
            mongo.database(),
            claimed,
            stripe.client,
            settings=config.fetch_settings(),
            connect=mongo.database,
            may_retry=context.retry_number < SYNC_RETRY_POLICY.max_retries,
            termination_requested=lambda: _termination_requested(context.instance, context.run_id),
            log=context.log,
        )
    except ClaimLost as error:
        raise Failure(description=str(error), allow_retries=False) from None
    except ImportFailed as failed:
        if failed.transient:
            context.log.warning(f"{failed.message}; the op will retry from the last checkpoint")
            raise Failure(description=failed.message, allow_retries=True) from None
        raise _closed_failure(failed) from failed.__cause__
    except ImportCancelled as cancelled:
        raise _closed_failure(cancelled) from None
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
    result_id, closed = queue.complete(db, import_id, context.run_id, outcome)
    if not closed:
        message = (
            f"Import request {import_id} is no longer claimed by this run; left unchanged, "
            "and no result recorded (the run that holds it now records its own)"
        )
        context.log.warning(message)
        context.add_output_metadata({"result": MetadataValue.text(message)})
        return ""
    if importer.keep_in_sync(db, outcome) is not None:
        context.log.info(f"Account {outcome.account_id} is kept in step from now on")
    if not outcome.dry_run:  # a dry run changed no contact
        ensure_account_partition(context.instance, outcome.account_id)
        for event in account_events(
            db,
            ObjectId(outcome.account_id),
            outcome.contact_type,
            description=f"Stripe {outcome.contact_type} import {outcome.import_id}",
            metadata=import_asset_metadata(outcome, result_id),
        ):
            context.log_event(event)
    context.log.info(f"Import {import_id} completed; result {result_id}")
    context.add_output_metadata(
        {"result_id": MetadataValue.text(str(result_id)), **run_metadata(outcome)}
    )
    return str(result_id)


def _closed_failure(stopped: ImportFailed | ImportCancelled) -> Failure:
    """The run's failure for an import whose request was closed: its message and counts."""
    return Failure(
        description=stopped.message,
        metadata=closed_metadata(stopped.outcome.import_id, stopped.result_id, stopped.outcome),
        allow_retries=False,
    )


def _termination_requested(instance: DagsterInstance, run_id: str) -> bool:
    """Whether someone asked Dagster to terminate the run (from the UI or the API), as opposed
    to its worker being interrupted by the machine (preemption, shutdown)."""
    run = instance.get_run_by_id(run_id)
    return run is not None and run.status in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED)
