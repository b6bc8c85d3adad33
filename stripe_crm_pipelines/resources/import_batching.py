"""How ``billing_import_sensor`` groups small import requests into ``billing_import_batch`` runs."""

from dagster import ConfigurableResource
from pydantic import Field

from stripe_crm_pipelines.billing_import.batch import BatchSettings

DEFAULT_SMALL_ACCOUNT_CUSTOMERS = 1000


class ImportBatchingResource(ConfigurableResource):
    """Which pending requests share a run, and how many per run.

    ``definitions.py`` binds ``max_requests`` to ``STRIPE_CRM_IMPORT_BATCH_MAX`` when it is set.
    """

    max_requests: int = Field(
        default=200,
        ge=0,
        description="At most this many small import requests per billing_import_batch run "
        "(STRIPE_CRM_IMPORT_BATCH_MAX). 0 gives every request a billing_contact_import run of "
        "its own.",
    )
    min_requests: int = Field(
        default=2,
        ge=1,
        description="A tick launches a batch only when it finds at least this many small "
        "requests to launch; fewer get a billing_contact_import run each (a request on its own "
        "keeps its own run page).",
    )
    small_account_customers: int = Field(
        default=DEFAULT_SMALL_ACCOUNT_CUSTOMERS,
        ge=100,
        description="A request goes into a batch when its account and type had at most this "
        "many customers at their last completed import, or were never imported; a batch hands "
        "an import past this many customers to a run of its own.",
    )
    parallel_imports: int = Field(
        default=BatchSettings.parallel,
        ge=1,
        le=32,
        description="Imports at once inside one billing_import_batch run.",
    )
