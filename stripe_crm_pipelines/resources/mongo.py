"""The CRM's MongoDB as a Dagster resource."""

from dagster import ConfigurableResource
from pydantic import Field

from stripe_crm_pipelines import store


class MongoResource(ConfigurableResource):
    """Opens the CRM store through :func:`stripe_crm_pipelines.store.connect`.

    The URI is read from ``MONGODB_URI`` in the process that uses it, so credentials in it never
    appear in run config. ``uri`` exists for tests and scripts that open a particular store.
    """

    uri: str | None = Field(
        default=None,
        description="Store URI; leave empty to use the MONGODB_URI environment variable "
        "(or the default embedded store). Do not put credentials here.",
    )

    def database(self):
        """The CRM database (``MONGODB_DATABASE``, default ``crm``)."""
        return store.connect(self.uri)
