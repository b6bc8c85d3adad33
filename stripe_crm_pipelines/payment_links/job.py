"""``create_payment_link``: a CRM contact plus line items → a finalised, Stripe-hosted invoice.

Op graph (each op retried on transient network errors; retries replay idempotent writes)::

    load_payment_link_request ─┬─> find_or_create_stripe_customer ─┬─> create_finalized_invoice ─┐
                               │                                  │                              │
                               └──────────────────────────────────┴──> publish_payment_link <────┘

The four ops run in the run's own process (``in_process_executor``): they take well under a
second of work, and a subprocess per op (the default executor) would add seconds of Python
start-up and code loading to each of them.

Launching it. The run config is the config of the first op; nothing in it is secret (the Stripe
key is read from MongoDB inside the run). Replace the ids and the date:

From the CLI, in the project directory, with the ``DAGSTER_HOME`` of the running ``dagster dev``
(``make dev``: ``.dagster_home``). The run is queued and ``dagster dev``'s daemon runs it::

    DAGSTER_HOME=$PWD/.dagster_home dagster job launch -w workspace.yaml -j create_payment_link \
      --config-json '{"ops": {"load_payment_link_request": {"config": {
        "account_id": "650000000000000000000001",
        "contact_id": "650000000000000000000002",
        "currency": "usd",
        "due_date": "2030-01-31",
        "line_items": [
          {"price_id": "price_123", "quantity": 2},
          {"amount": 1999, "quantity": 1, "description": "Setup fee"}
        ]}}}}'

``-w workspace.yaml`` names the code location ``stripe_crm_pipelines``, as ``dagster dev`` does.
``-m stripe_crm_pipelines.definitions`` instead of ``-w`` loads the same job but names the
location ``stripe_crm_pipelines.definitions``; that form only suits a daemon started with the
same ``-m`` (``dagster dev``'s daemon fails such a run with "Location
stripe_crm_pipelines.definitions does not exist in workspace").

From Python, in process (resources from ``defs``; pass ``resources=`` to override them)::

    from stripe_crm_pipelines.definitions import defs

    result = defs.get_job_def("create_payment_link").execute_in_process(
        run_config={"ops": {"load_payment_link_request": {"config": {...}}}}
    )
    link = result.output_for_node("publish_payment_link")  # short_url, hosted_invoice_url, …

From Python, against a running webserver (``dagster_graphql`` comes with ``dagster-webserver``)::

    from dagster_graphql import DagsterGraphQLClient

    client = DagsterGraphQLClient("localhost", port_number=3000)
    run_id = client.submit_job_execution(
        "create_payment_link",
        run_config={"ops": {"load_payment_link_request": {"config": {...}}}},
    )

Over GraphQL (``POST http://localhost:3000/graphql``)::

    mutation Launch($runConfigData: RunConfigData!) {
      launchRun(executionParams: {
        selector: {repositoryLocationName: "stripe_crm_pipelines",
                   repositoryName: "__repository__", jobName: "create_payment_link"},
        runConfigData: $runConfigData
      }) {
        __typename
        ... on LaunchRunSuccess { run { runId } }
        ... on PythonError { message }
        ... on RunConfigValidationInvalid { errors { message } }
      }
    }

with variables ``{"runConfigData": {"ops": {"load_payment_link_request": {"config": {...}}}}}``.
The run page shows the invoice id and number, amount due, currency, hosted URL and short URL as
metadata of ``publish_payment_link``; the link is also saved in the ``payment_links`` collection.
"""

from dagster import in_process_executor, job

from stripe_crm_pipelines.payment_links.ops import (
    create_finalized_invoice,
    find_or_create_stripe_customer,
    load_payment_link_request,
    publish_payment_link,
)


@job(
    description="Turn a CRM contact plus line items into a finalised Stripe-hosted invoice and "
    "its (shortened) payment link.",
    tags={"capability": "payment_links"},
    executor_def=in_process_executor,
)
def create_payment_link():
    request = load_payment_link_request()
    customer = find_or_create_stripe_customer(request)
    invoice = create_finalized_invoice(request, customer)
    publish_payment_link(request, customer, invoice)
