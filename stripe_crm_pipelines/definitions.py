"""The Dagster definitions of the project: jobs, sensors and the resources they share."""

from dagster import Definitions

from stripe_crm_pipelines.resources import MongoResource, StripeResource

defs = Definitions(
    jobs=[],
    sensors=[],
    resources={
        "mongo": MongoResource(),
        "stripe": StripeResource(),
    },
)
