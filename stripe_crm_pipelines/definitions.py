"""The Dagster definitions of the project: jobs, sensors and the resources of the environment.

``STRIPE_CRM_ENV`` chooses the resource set: ``local`` (the default: ``make dev``, tests) or
``production`` (the image, ``deploy/``). Settings are bound with ``EnvVar``, read when a run
starts, so the UI shows which variable a setting comes from and never a secret's value.

Dagster fails a launch on an ``EnvVar`` whose variable is unset, so a setting that has a default
(the Stripe API, no shortener, no CRM API) is bound only when its variable is set where the
definitions load; unset, the resource's default applies. Production requires ``MONGODB_URI``.
"""

import os
import warnings
from typing import Any

from dagster import BetaWarning, Definitions, EnvVar

from stripe_crm_pipelines.billing_import.batch_job import billing_import_batch
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.billing_import.queue_job import queue_billing_import
from stripe_crm_pipelines.billing_import.revert_job import revert_billing_import
from stripe_crm_pipelines.billing_import.sensor import (
    billing_import_cancel_sensor,
    billing_import_failure_sensor,
    billing_import_sensor,
)
from stripe_crm_pipelines.billing_sync.job import billing_contact_sync
from stripe_crm_pipelines.billing_sync.sensor import billing_sync_sensor
from stripe_crm_pipelines.catalog import crm_contacts, crm_contacts_checks
from stripe_crm_pipelines.payment_links.job import create_payment_link
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from stripe_crm_pipelines.resources.crm_api import CrmApiResource
from stripe_crm_pipelines.resources.import_batching import ImportBatchingResource
from stripe_crm_pipelines.resources.shortener import ShortenerResource

ENVIRONMENT_VARIABLE = "STRIPE_CRM_ENV"
BATCH_MAX_VARIABLE = "STRIPE_CRM_IMPORT_BATCH_MAX"
"""Small import requests per ``billing_import_batch`` run; 0: a run of its own for each."""
LOCAL = "local"
PRODUCTION = "production"


def bound_if_set(**variables: str) -> dict[str, EnvVar]:
    """``{field: EnvVar(variable)}`` for each ``field=variable`` whose variable is set here."""
    return {field: EnvVar(name) for field, name in variables.items() if os.environ.get(name)}


def _optional_services() -> dict[str, Any]:
    return {
        "import_batching": ImportBatchingResource(
            **{
                field: EnvVar.int(name)
                for field, name in {"max_requests": BATCH_MAX_VARIABLE}.items()
                if os.environ.get(name)
            }
        ),
        "stripe": StripeResource(**bound_if_set(api_base="STRIPE_API_BASE")),
        "shortener": ShortenerResource(**bound_if_set(base_url="SHORTENER_URL")),
        "crm_api": CrmApiResource(**bound_if_set(base_url="API_BASE_URL", app_secret="APP_SECRET")),
    }


RESOURCES_LOCAL: dict[str, Any] = {
    # Unset MONGODB_URI: the embedded store in store.DEFAULT_STORE_DIR.
    "mongo": MongoResource(**bound_if_set(uri="MONGODB_URI", database_name="MONGODB_DATABASE")),
    **_optional_services(),
}
RESOURCES_PROD: dict[str, Any] = {
    "mongo": MongoResource(
        uri=EnvVar("MONGODB_URI"), **bound_if_set(database_name="MONGODB_DATABASE")
    ),
    **_optional_services(),
}
RESOURCES_BY_ENVIRONMENT = {LOCAL: RESOURCES_LOCAL, PRODUCTION: RESOURCES_PROD}


def environment() -> str:
    """The environment named by ``STRIPE_CRM_ENV`` (default ``local``)."""
    name = os.environ.get(ENVIRONMENT_VARIABLE) or LOCAL
    if name not in RESOURCES_BY_ENVIRONMENT:
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE}={name!r} is not one of {', '.join(RESOURCES_BY_ENVIRONMENT)}"
        )
    return name


# Binding these resources, Dagster rebuilds every sensor whose job takes them from here and
# passes the sensor's empty `owners` along, which it then reports as a beta parameter in every
# process that loads the code (dagster 1.13). No sensor here sets owners.
warnings.filterwarnings(
    "ignore",
    message=r"Parameter `owners` of initializer `SensorDefinition.__init__`",
    category=BetaWarning,
)

defs = Definitions(
    assets=[crm_contacts],
    asset_checks=[crm_contacts_checks],
    jobs=[
        billing_contact_import,
        billing_import_batch,
        billing_contact_sync,
        queue_billing_import,
        revert_billing_import,
        create_payment_link,
    ],
    sensors=[
        billing_import_sensor,
        billing_import_failure_sensor,
        billing_import_cancel_sensor,
        billing_sync_sensor,
    ],
    resources=RESOURCES_BY_ENVIRONMENT[environment()],
)
