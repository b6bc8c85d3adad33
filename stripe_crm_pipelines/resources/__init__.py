"""Dagster resources shared by the jobs: the CRM store and Stripe clients."""

from stripe_crm_pipelines.resources.mongo import MongoResource
from stripe_crm_pipelines.resources.stripe import StripeResource

__all__ = ["MongoResource", "StripeResource"]
