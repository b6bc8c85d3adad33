"""The CRM's MongoDB as a Dagster resource."""

from dagster import ConfigurableResource
from pydantic import Field

from stripe_crm_pipelines import store
from stripe_crm_pipelines.resilience import MongoRetry, ResilientDatabase


class MongoResource(ConfigurableResource):
    """Opens the CRM store through :func:`stripe_crm_pipelines.store.connect`.

    The URI is read from ``MONGODB_URI`` in the process that uses it, so credentials in it never
    appear in run config. ``uri`` exists for tests and scripts that open a particular store.
    Calls that are safe to repeat are retried after a dropped connection or a failover
    (:mod:`stripe_crm_pipelines.resilience`).
    """

    uri: str | None = Field(
        default=None,
        description="Store URI; leave empty to use the MONGODB_URI environment variable "
        "(or the default embedded store). Do not put credentials here.",
    )
    retry_attempts: int = Field(
        default=5,
        ge=1,
        description="Tries of a MongoDB call that failed with a connection error or a network "
        "timeout (AutoReconnect, NetworkTimeout), the first included.",
    )
    retry_initial_delay_seconds: float = Field(
        default=0.2,
        ge=0,
        description="Wait before the second try; doubles per try (with jitter) up to "
        "retry_max_delay_seconds.",
    )
    retry_max_delay_seconds: float = Field(
        default=5.0, ge=0, description="Longest wait between two tries."
    )

    def database(self) -> ResilientDatabase:
        """The CRM database (``MONGODB_DATABASE``, default ``crm``), retrying transient errors."""
        return ResilientDatabase(
            store.connect(self.uri),
            MongoRetry(
                attempts=self.retry_attempts,
                initial_delay=self.retry_initial_delay_seconds,
                max_delay=self.retry_max_delay_seconds,
            ),
        )
