"""The Dagster definitions of the project: jobs, sensors and the resources they share."""

from dagster import Definitions

from stripe_crm_pipelines.billing_import.job import billing_contact_import
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
from stripe_crm_pipelines.resources.shortener import ShortenerResource

defs = Definitions(
    assets=[crm_contacts],
    asset_checks=[crm_contacts_checks],
    jobs=[billing_contact_import, billing_contact_sync, create_payment_link],
    sensors=[
        billing_import_sensor,
        billing_import_failure_sensor,
        billing_import_cancel_sensor,
        billing_sync_sensor,
    ],
    resources={
        "mongo": MongoResource(),
        "stripe": StripeResource(),
        "shortener": ShortenerResource(),
        "crm_api": CrmApiResource(),
    },
)
