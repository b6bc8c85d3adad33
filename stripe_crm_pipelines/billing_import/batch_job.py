"""``billing_import_batch``: one run imports many small requests, each on its own.

``billing_import_sensor`` launches it for requests of accounts known or expected to be small
(see :mod:`~stripe_crm_pipelines.billing_import.batch` for how each import keeps its own claim,
result and one-import-per-account guarantee). Its run page shows one row per request; each
completed import is recorded in its account's ``crm_contacts`` partition with its checks, as a
run of its own would, so an account's asset history lists every import whatever run did it.
"""

import threading

from bson import ObjectId
from dagster import (
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    TableColumn,
    TableRecord,
    TableSchema,
    in_process_executor,
    job,
    op,
)
from pydantic import Field, field_validator

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import batch, exclusion
from stripe_crm_pipelines.billing_import.batch import BatchEntry, BatchSettings
from stripe_crm_pipelines.billing_import.metadata import import_asset_metadata
from stripe_crm_pipelines.catalog import account_events, ensure_account_partitions
from stripe_crm_pipelines.contact_health import uniqueness_checks_by_account
from stripe_crm_pipelines.resources import MongoResource, StripeResource


class BatchRunConfig(Config):
    """Which import requests this run processes. The sensor fills it in."""

    import_ids: list[str] = Field(
        min_length=1,
        description="The _ids of pending billing import requests in `queues` (24 hexadecimal "
        "characters each, each once). Each is claimed and imported on its own; one that is no "
        "longer pending is skipped, and two of one account are left pending for later runs.",
    )
    parallel_imports: int = Field(
        default=BatchSettings.parallel,
        ge=1,
        le=32,
        description="Imports at once (each waits mostly on Stripe, and accounts have separate "
        "rate limits).",
    )
    hand_off_after_customers: int = Field(
        default=BatchSettings.hand_off_after,
        ge=100,
        description="An account with more customers than this continues in a "
        "billing_contact_import run of its own, from what this run wrote.",
    )

    @field_validator("import_ids")
    @classmethod
    def _each_an_object_id(cls, import_ids: list[str]) -> list[str]:
        malformed = [value for value in import_ids if not ObjectId.is_valid(value)]
        if malformed:
            raise ValueError(
                f"import_ids: {', '.join(map(repr, malformed))} is not an _id of `queues` "
                "(24 hexadecimal characters)"
            )
        ids = [ObjectId(value) for value in import_ids]
        repeated = sorted(
            {value for value, id_ in zip(import_ids, ids, strict=True) if ids.count(id_) > 1}
        )
        if repeated:
            raise ValueError(f"import_ids: {', '.join(map(repr, repeated))} given more than once")
        return import_ids


@op(
    description="Claim and import each request on its own, several at a time: per request its "
    "own claim, checkpoints, result document and crm_contacts event. An account something else "
    "is importing or syncing is left pending for a later run; a large one is handed to a run of "
    "its own. Fails (after all are done) if any import failed.",
)
def import_requests(
    context: OpExecutionContext,
    config: BatchRunConfig,
    mongo: MongoResource,
    stripe: StripeResource,
) -> None:
    instance = context.instance
    instance_lock = threading.Lock()  # one instance query at a time from the import threads

    def busy(db, claim) -> str | None:
        with instance_lock:
            return exclusion.who_else_works_on(
                db, instance, claim.request.account_id, context.run_id, claim.request.id
            )

    parallel = config.parallel_imports
    if parallel > 1 and store.prefers_one_writer(mongo.database()):
        context.log.info("The embedded store serves one writer best: one import at a time")
        parallel = 1
    entries = batch.import_batch(
        [ObjectId(import_id) for import_id in config.import_ids],
        context.run_id,
        connect=mongo.database,
        stripe_client=stripe.client,
        busy=busy,
        settings=BatchSettings(parallel=parallel, hand_off_after=config.hand_off_after_customers),
        log=context.log,
    )
    _record_catalog_events(context, mongo, entries)
    counts = {status: sum(1 for e in entries if e.status == status) for status in _STATUSES}
    summary = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    metadata = {
        **{status.replace(" ", "_"): MetadataValue.int(count) for status, count in counts.items()},
        "imports": _entries_table(entries),
    }
    failed = [entry for entry in entries if entry.status == batch.FAILED]
    if failed:
        raise Failure(
            description=f"{len(failed)} of {len(entries)} import(s) failed ({summary}); first: "
            f"{failed[0].import_id}: {failed[0].message}",
            metadata=metadata,
            allow_retries=False,
        )
    context.log.info(f"Batch of {len(entries)} import request(s): {summary}")
    context.add_output_metadata(metadata)


_STATUSES = (
    batch.COMPLETED,
    batch.FAILED,
    batch.CANCELLED,
    batch.HANDED_OFF,
    batch.RELEASED,
    batch.SKIPPED,
)


def _record_catalog_events(
    context: OpExecutionContext, mongo: MongoResource, entries: list[BatchEntry]
) -> None:
    """Each completed import's event in its account's partition, with the account's checks."""
    done = [
        entry
        for entry in entries
        if entry.status == batch.COMPLETED
        and entry.outcome is not None
        and entry.result_id is not None
        and not entry.outcome.dry_run  # a dry run changed no contact
    ]
    if not done:
        return
    ensure_account_partitions(context.instance, [entry.outcome.account_id for entry in done])
    db = mongo.database()
    uniqueness = uniqueness_checks_by_account(
        db, list({ObjectId(entry.outcome.account_id) for entry in done})
    )
    for entry in done:
        outcome = entry.outcome
        account_id = ObjectId(outcome.account_id)
        for event in account_events(
            db,
            account_id,
            outcome.contact_type,
            description=f"Stripe {outcome.contact_type} import {outcome.import_id} "
            f"(batch run {context.run_id})",
            metadata=import_asset_metadata(outcome, entry.result_id),
            uniqueness=uniqueness[account_id],
        ):
            context.log_event(event)


def _entries_table(entries: list[BatchEntry]) -> MetadataValue:
    columns = ("import_id", "account_id", "status", "added", "updated", "fetched", "result_id")
    return MetadataValue.table(
        records=[
            TableRecord(
                {
                    "import_id": entry.import_id,
                    "account_id": entry.account_id or "",
                    "status": entry.status,
                    "added": entry.outcome.records_added if entry.outcome else 0,
                    "updated": entry.outcome.records_updated if entry.outcome else 0,
                    "fetched": entry.outcome.customers_fetched if entry.outcome else 0,
                    "result_id": str(entry.result_id or ""),
                    "message": entry.message,
                }
            )
            for entry in entries
        ],
        schema=TableSchema(
            columns=[
                TableColumn(name, "int" if name in ("added", "updated", "fetched") else "string")
                for name in (*columns, "message")
            ]
        ),
    )


@job(
    description=(
        "Import many small billing requests in one run, each with its own claim, result and "
        "crm_contacts event. Launched by billing_import_sensor for accounts known or expected to "
        "have few customers; a large one is handed to a billing_contact_import run of its own."
    ),
    tags={"stripe_crm/job": "billing_import_batch"},
    executor_def=in_process_executor,
)
def billing_import_batch():
    import_requests()
