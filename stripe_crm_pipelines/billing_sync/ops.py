"""The op of ``billing_contact_sync``: an adapter between Dagster and :func:`run_sync`.

It loads the state and the account's Stripe key (never an output, config value, tag, log line or
metadata entry), runs the engine, records the account's partition of ``crm_contacts`` with its
checks, and turns a failed outcome into :class:`dagster.Failure` with the same message the state
and the result hold.
"""

from datetime import UTC, datetime
from typing import Any, Literal

from bson import ObjectId
from dagster import (
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

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import exclusion, queue, tags
from stripe_crm_pipelines.billing_import.rate_limit import bucket_for_key
from stripe_crm_pipelines.billing_import.requests import CONTACT_TYPES
from stripe_crm_pipelines.billing_sync.state import (
    InvalidSyncState,
    SyncState,
    load_sync_state,
    start_sync_attempt,
)
from stripe_crm_pipelines.billing_sync.syncer import (
    SyncOutcome,
    finished_sync,
    record_failed_sync,
    run_sync,
)
from stripe_crm_pipelines.catalog import account_events, ensure_account_partition
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from stripe_crm_pipelines.resources.stripe import RequestStats
from stripe_crm_pipelines.stripe_keys import (
    StripeKeyError,
    connected_accounts_of,
    load_billing_credentials,
)

SYNC_RETRY_POLICY = RetryPolicy(
    max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
"""Retries after a transient Stripe or MongoDB failure. Before the sync saved its result, a
retry reads the same events and re-applies what was already written without change; after
(moving the cursor or recording the run in the catalog failed), it records the outcome the
earlier attempt saved (:func:`~stripe_crm_pipelines.billing_sync.syncer.finished_sync`)."""


class SyncRunConfig(Config):
    """Which sync state this run brings up to date. The sensor fills it in; so can a person."""

    account_id: str = Field(
        description="The CRM account (_id in `_accounts`, 24 hexadecimal characters) whose "
        "contacts to sync; a keep_in_sync import must have completed for it.",
        pattern=store.OBJECT_ID_PATTERN,
    )
    import_type: Literal["contacts", "companies"] = Field(
        default="contacts",
        description="`contacts` syncs person contacts, `companies` business contacts.",
    )
    requests_per_second: float | None = Field(
        default=None,
        gt=0,
        description="Client-side limit on Stripe requests per second, shared with imports of "
        "the same key in this process. Empty: Stripe's default for the key.",
    )


@op(
    description="Read the account's Stripe customer events after the sync state's cursor, "
    "write each changed customer's newest state with the import's matching and bulk writes, "
    "apply deletions by the deletion policy, then move the cursor. A stale cursor queues a "
    "full import (reason 'resync').",
    retry_policy=SYNC_RETRY_POLICY,
)
def sync_billing_contacts(
    context: OpExecutionContext,
    config: SyncRunConfig,
    mongo: MongoResource,
    stripe: StripeResource,
) -> None:
    db = mongo.database()
    account_id = ObjectId(config.account_id)
    contact_type = CONTACT_TYPES[config.import_type]
    try:
        state = load_sync_state(db, account_id, contact_type)
    except InvalidSyncState as error:
        raise Failure(description=str(error), allow_retries=False) from None
    if state is None:
        raise Failure(
            description=f"Account {account_id} has no sync state for {config.import_type}; a "
            "completed import with keep_in_sync: true creates it",
            allow_retries=False,
        )
    outcome = finished_sync(db, state, context.run_id) if context.retry_number else None
    if outcome is not None:
        context.log.info(
            f"Attempt {context.retry_number + 1}: an earlier attempt of this run synced account "
            f"{account_id} and saved its result; recording that sync in the catalog"
        )
    else:
        outcome = _sync(context, config, db, state, stripe)
        if outcome is None:
            return
    metadata = sync_metadata(outcome)
    if outcome.status == "failed":
        context.log.error(f"Sync of {config.import_type} of account {account_id} failed: "
                          f"{outcome.error}")  # fmt: skip
        if outcome.failure is not None:
            raise Failure(
                description=outcome.error, metadata=metadata, allow_retries=False
            ) from outcome.failure
        raise Failure(description=outcome.error, metadata=metadata, allow_retries=outcome.transient)
    if outcome.status == "resync_queued":
        context.log.warning(outcome.error)
    else:
        ensure_account_partition(context.instance, account_id)
        for event in account_events(
            db,
            account_id,
            contact_type,
            description=f"Stripe {contact_type} sync: {outcome.events_read} event(s)",
            metadata=metadata,
            written_customer_ids=None if outcome.resumed else outcome.written_customer_ids,
        ):
            context.log_event(event)
        context.log.info(
            f"Synced {outcome.events_read} event(s) of {outcome.customers_changed} customer(s): "
            f"{outcome.records_added} added, {outcome.records_updated} updated, "
            f"{outcome.records_archived} archived, {outcome.records_unchanged} already up to "
            f"date; {outcome.stripe_requests} Stripe request(s)"
        )
    context.add_output_metadata(metadata)


def _sync(
    context: OpExecutionContext,
    config: SyncRunConfig,
    db,
    state: SyncState,
    stripe: StripeResource,
) -> SyncOutcome | None:
    """Count the attempt and run the engine; None when an import holds the account."""
    account_id = state.account_id
    start_sync_attempt(db, state.id, context.run_id, datetime.now(UTC))
    importing = queue.others_working_on(db, account_id, context.run_id)
    running = _untagged_run_meets(context, db, state)
    if importing or running:
        # An import holds the account (see billing_import.exclusion); its cursor waits.
        working = f"Import {importing[0]}" if importing else f"Run {running}"
        message = (
            f"{working} is running for account {account_id}; the sync leaves its cursor where it "
            "is until its next turn"
        )
        context.log.info(message)
        context.add_output_metadata(
            {"status": MetadataValue.text("deferred"), "deferred_by": MetadataValue.text(message)}
        )
        return None
    try:
        credentials = load_billing_credentials(db, account_id)
    except StripeKeyError as error:
        return record_failed_sync(db, state, str(error), run_id=context.run_id)
    stats = RequestStats()
    limiter = bucket_for_key(credentials.secret_key, config.requests_per_second)
    client = stripe.client(
        credentials.secret_key,
        credentials.stripe_account,
        stats=stats,
        before_request=limiter.acquire,
    )
    return run_sync(db, client, state, run_id=context.run_id, stats=stats)


def _untagged_run_meets(context: OpExecutionContext, db, state: SyncState) -> str | None:
    """For a run launched by hand without the sensor's tags: tag it as the sensor would, so the
    run queue keeps later imports and syncs of its Stripe account waiting, and name a run of that
    account already started (the queue did not keep this one apart from it), if any."""
    if tags.STRIPE_ACCOUNT in context.run.tags:
        return None
    stripe_account = connected_accounts_of(db, [state.account_id]).get(state.account_id)
    if not stripe_account:
        return None
    context.instance.add_run_tags(
        context.run_id,
        {
            tags.ACCOUNT_ID: str(state.account_id),
            tags.IMPORT_TYPE: state.import_type,
            tags.USER_ID: str(state.user_id),
            tags.STRIPE_ACCOUNT: stripe_account,
        },
    )
    for run in exclusion.running_runs_of(context.instance, stripe_account, context.run_id):
        return f"{run.run_id} of {run.job_name}"
    return None


def sync_metadata(outcome: SyncOutcome) -> dict[str, Any]:
    """What the run page shows for a sync: its counts, Stripe requests and outcome."""
    metadata: dict[str, Any] = {
        name: MetadataValue.int(value) for name, value in outcome.counts().items()
    }
    metadata["status"] = MetadataValue.text(outcome.status)
    metadata["duration_seconds"] = MetadataValue.float(outcome.duration_seconds)
    if outcome.resync_import_id is not None:
        metadata["resync_import_id"] = MetadataValue.text(str(outcome.resync_import_id))
    return metadata
