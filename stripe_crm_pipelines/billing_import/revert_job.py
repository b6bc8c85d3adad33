"""The ``revert_billing_import`` job: undo one completed import (logic in ``revert``)."""

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
from pydantic import Field

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import revert, tags
from stripe_crm_pipelines.resources import MongoResource

METADATA_CONFLICT_ROWS = 20


class RevertImportConfig(Config):
    """Which import to undo."""

    import_id: str = Field(
        description="The _id of the completed import request to undo: its `queues` document, "
        "the import id `python -m stripe_crm_pipelines.history` lists (24 hexadecimal "
        "characters). A dry run, a failed or cancelled import, an import already reverted and a "
        "revert itself are refused.",
        pattern=store.OBJECT_ID_PATTERN,
    )


@op(
    description="Put back every field the import changed (unless changed since, by a person "
    "or a later import: a conflict, left alone), remove the contacts it created that nobody "
    "edited since, write a `stripe-revert` import result and mark the request `reverted_at`. "
    "Contact writes that fail fail the run and leave the import revertable.",
)
def revert_import(
    context: OpExecutionContext, config: RevertImportConfig, mongo: MongoResource
) -> str:
    import_id = ObjectId(config.import_id)
    try:
        outcome = revert.revert_import(mongo.database(), import_id, run_id=context.run_id)
    except revert.RevertRefused as error:
        raise Failure(description=f"Not reverted: {error}", allow_retries=False) from None
    # Launched by hand with only an id: tag the run as imports are, so filtering runs by account
    # (the audit trail) finds the revert beside the import it undid.
    context.instance.add_run_tags(
        context.run_id,
        {
            tags.ACCOUNT_ID: str(outcome.account_id),
            tags.IMPORT_ID: str(import_id),
        },
    )
    context.log.info(
        f"Reverted import {import_id}: {outcome.records_restored} contact(s) restored, "
        f"{outcome.records_removed} removed, {outcome.conflicts} conflict(s) left as they are; "
        f"result {outcome.result_id}"
    )
    metadata = {
        "reverted_import_id": MetadataValue.text(str(import_id)),
        "result_id": MetadataValue.text(str(outcome.result_id)),
        **{name: MetadataValue.int(value) for name, value in outcome.counts().items()},
    }
    if outcome.conflict_details:
        metadata["first_conflicts"] = MetadataValue.table(
            records=[
                TableRecord(
                    {
                        "contact_id": str(conflict["contact_id"]),
                        "stripe_customer_id": conflict.get("stripe_customer_id") or "",
                        "left_as_is": conflict.get("reason")
                        or "changed since: " + ", ".join(conflict.get("fields", [])),
                    }
                )
                for conflict in outcome.conflict_details[:METADATA_CONFLICT_ROWS]
            ],
            schema=TableSchema(
                columns=[
                    TableColumn("contact_id", "string"),
                    TableColumn("stripe_customer_id", "string"),
                    TableColumn("left_as_is", "string"),
                ]
            ),
        )
    if outcome.errors:
        rows = "; ".join(
            f"{error['contact_id']}: {error['message']}" for error in outcome.error_details[:5]
        )
        raise Failure(
            description=f"Import {import_id} only partly reverted: {outcome.failure_message()}. "
            f"First errors: {rows}",
            metadata=metadata,
            allow_retries=False,
        )
    context.add_output_metadata(metadata)
    return str(outcome.result_id)


@job(
    description="Undo a completed `billing_contact_import` from its change log "
    "(`contact_import_changes`): set `ops.revert_import.config.import_id`.",
    tags={"stripe_crm/job": "revert_billing_import"},
    executor_def=in_process_executor,
)
def revert_billing_import():
    revert_import()
