"""``queue_billing_import``: queue an import request from the Dagster UI's Launchpad form.

The op is an adapter over :mod:`~.new_requests`: the request is validated as the import run will
validate it and inserted pending, recorded as ``queued_by: launchpad``. ``billing_import_sensor``
then launches its ``billing_contact_import`` run, tagged and limited like a request from the CRM.
"""

from typing import Literal

from dagster import Config, Failure, MetadataValue, OpExecutionContext, in_process_executor, job, op
from pydantic import Field

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import queue
from stripe_crm_pipelines.billing_import.new_requests import (
    QUEUED_BY_LAUNCHPAD,
    build_import_request,
)
from stripe_crm_pipelines.billing_import.requests import InvalidImportRequest
from stripe_crm_pipelines.resources import MongoResource


class QueueImportConfig(Config):
    """The import to queue; the fields the CRM would fill are taken from the account."""

    account_id: str = Field(
        description="The CRM account whose connected Stripe account is imported (`_accounts` "
        "_id, 24 hexadecimal characters). It needs a billing Stripe key.",
        pattern=store.OBJECT_ID_PATTERN,
    )
    type: Literal["contacts", "companies"] = Field(
        description="contacts: import as person contacts; companies: as business contacts.",
    )
    mappings: dict[str, str] = Field(
        default_factory=dict,
        description='Stripe customer field → contact field, e.g. {"name": "name", '
        '"address-city": "address.city"}. Keys are paths into the Stripe customer (`-` between '
        "parts; `metadata-*` free); values are dotted contact fields. Empty: only link "
        "existing contacts to their Stripe customer.",
    )
    new_contact: bool = Field(
        default=True,
        description="Create a contact for a customer that matches none; false only updates.",
    )
    dry_run: bool = Field(
        default=False,
        description="Fetch, map and match, but write no contact; the result previews the changes.",
    )
    keep_in_sync: bool = Field(
        default=False,
        description="After the import, keep the contacts in step with Stripe's customer events.",
    )
    deletion_policy: Literal["keep", "archive"] = Field(
        default="keep",
        description="With keep_in_sync: keep leaves the contact of a customer deleted in Stripe "
        "as it is; archive marks it stripe_deleted.",
    )
    max_customers: int | None = Field(
        default=None, ge=1, description="Import at most this many customers, newest first."
    )
    user_id: str | None = Field(
        default=None,
        pattern=store.OBJECT_ID_PATTERN,
        description="The user queuing the import (owner of created contacts). Empty: the "
        "account's owner, else the user of its newest import request.",
    )


@op(
    description="Validate the import request as the import run will, then insert it pending "
    "in `queues` (queued_by: launchpad) for billing_import_sensor to launch. Invalid input "
    "fails this run and queues nothing.",
)
def queue_import_request(
    context: OpExecutionContext, config: QueueImportConfig, mongo: MongoResource
) -> str:
    db = mongo.database()
    try:
        document = build_import_request(
            db,
            account_id=config.account_id,
            import_type=config.type,
            queued_by=QUEUED_BY_LAUNCHPAD,
            mappings=config.mappings,
            new_contact=config.new_contact,
            dry_run=config.dry_run,
            keep_in_sync=config.keep_in_sync,
            deletion_policy=config.deletion_policy,
            max_customers=config.max_customers,
            user_id=config.user_id,
        )
    except InvalidImportRequest as error:
        raise Failure(description=f"Not queued: {error}", allow_retries=False) from None
    import_id = str(queue.enqueue(db, document))
    context.log.info(
        f"Queued import {import_id} of account {config.account_id}; billing_import_sensor "
        "launches it within 30 s"
    )
    context.add_output_metadata(
        {
            "import_id": import_id,
            "account_id": config.account_id,
            "dry_run": config.dry_run,
            "runs": MetadataValue.md(
                f"Its run carries the tag `stripe_crm/import_id={import_id}` (Runs → filter)."
            ),
        }
    )
    return import_id


@job(
    description="Queue a billing contact import from a form: validated as the import will be, "
    "then run by billing_import_sensor like a request from the CRM.",
    tags={"stripe_crm/job": "queue_billing_import"},
    executor_def=in_process_executor,
)
def queue_billing_import():
    queue_import_request()
