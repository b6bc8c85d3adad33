"""The Dagster definitions of the project: jobs, sensors and the resources they share."""

import warnings

from dagster import BetaWarning, Definitions

from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.billing_import.queue_job import queue_billing_import
from stripe_crm_pipelines.billing_import.sensor import (
    billing_import_cancel_sensor,
    billing_import_failure_sensor,
    billing_import_sensor,
)
from stripe_crm_pipelines.payment_links.job import create_payment_link
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from stripe_crm_pipelines.resources.crm_api import CrmApiResource
from stripe_crm_pipelines.resources.shortener import ShortenerResource

# Binding these resources, Dagster rebuilds every sensor whose job takes them from here and
# passes the sensor's empty `owners` along, which it then reports as a beta parameter in every
# process that loads the code (dagster 1.13). No sensor here sets owners.
warnings.filterwarnings(
    "ignore",
    message=r"Parameter `owners` of initializer `SensorDefinition.__init__`",
    category=BetaWarning,
)

defs = Definitions(
    jobs=[billing_contact_import, queue_billing_import, create_payment_link],
    sensors=[billing_import_sensor, billing_import_failure_sensor, billing_import_cancel_sensor],
    resources={
        "mongo": MongoResource(),
        "stripe": StripeResource(),
        "shortener": ShortenerResource(),
        "crm_api": CrmApiResource(),
    },
)
