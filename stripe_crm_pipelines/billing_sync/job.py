"""The ``billing_contact_sync`` job: one run brings one account's contacts of one type up to date
with the Stripe customer events since its last sync."""

from dagster import in_process_executor, job

from stripe_crm_pipelines.billing_sync.ops import sync_billing_contacts


@job(
    description=(
        "Apply a connected Stripe account's customer changes (customer.created / updated / "
        "deleted events since the last sync) to its CRM contacts. Launched by "
        "`billing_sync_sensor` for accounts imported with keep_in_sync; to run one by hand, set "
        "`ops.sync_billing_contacts.config.account_id`."
    ),
    tags={"stripe_crm/job": "billing_contact_sync"},
    executor_def=in_process_executor,
)
def billing_contact_sync():
    """One op: read events after the cursor, write, move the cursor (see ``syncer``)."""
    sync_billing_contacts()
