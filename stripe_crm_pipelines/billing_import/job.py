"""The ``billing_contact_import`` job: one run imports one request's Stripe customers."""

from dagster import in_process_executor, job

from stripe_crm_pipelines.billing_import.ops import (
    claim_import_request,
    record_import_result,
    sync_customers,
)


@job(
    description=(
        "Import a connected Stripe account's customers into CRM contacts for one pending "
        "`queues` request (source `billing-contacts`). Launched by `billing_import_sensor`. To "
        "start an import by hand, queue it with the `queue_billing_import` job or `python -m "
        "stripe_crm_pipelines.imports queue`; the sensor runs it with the import's tags."
    ),
    tags={"stripe_crm/job": "billing_contact_import"},
    # The three ops run one after another, so a process per op would only add start-up time.
    executor_def=in_process_executor,
)
def billing_contact_import():
    """claim_import_request → sync_customers → record_import_result.

    * ``claim_import_request`` takes the request atomically (pending and not in progress → in
      progress, owned by this run), so a request is processed by one run only, and validates it
      (fields, mappings, type, account) before anything is written. Its output is the parsed
      request and the customer limit: nothing reads the request document again.
    * ``sync_customers`` does the work as a stream: pages of 100 customers, fetched in
      concurrent ``created`` windows under a per-key rate limit and handed over in listing
      order, are mapped, matched against the account's contacts with one query per batch and
      written with one unordered bulk write per batch (its changes logged in
      ``contact_import_changes`` just before, for ``revert_billing_import``; a dry run writes
      nothing and keeps a preview), and counts and cursor are checkpointed on the request after
      each batch. No
      customer list ever leaves the op: Dagster pickles op outputs to storage, so the output is
      the small :class:`~stripe_crm_pipelines.billing_import.results.ImportOutcome` (counts, the
      first errors, a sample). The op loads the Stripe key itself and retries transient failures
      from its checkpoint.
    * ``record_import_result`` writes the ``contact_import_results`` document, marks the request
      ``completed`` (kept for audit) and materialises ``crm_contacts/<account id>``, so the asset
      catalog lists every account's import history. It is separate so that a failure to record
      is retried on its own without re-fetching from Stripe.

    Any failure after the claim marks the request ``failed`` with the reason, writes a ``failed``
    result with the counts so far, and fails the run with the same message. The ops only adapt:
    the import is :func:`~stripe_crm_pipelines.billing_import.importer.run_import`, and every
    change to the request goes through :mod:`~stripe_crm_pipelines.billing_import.queue`.
    """
    record_import_result(sync_customers(claim_import_request()))
