"""The CRM's MongoDB as a Dagster resource."""

from dagster import ConfigurableResource
from pydantic import Field

from stripe_crm_pipelines import store
from stripe_crm_pipelines.resilience import MongoRetry, ResilientDatabase


class MongoResource(ConfigurableResource):
    """Opens the CRM store through :func:`stripe_crm_pipelines.store.open_database`.

    ``definitions.py`` binds ``uri`` to ``EnvVar("MONGODB_URI")``, so the UI shows the variable's
    name and credentials in it never appear in run config. Calls that are safe to repeat are
    retried after a dropped connection or a failover (:mod:`stripe_crm_pipelines.resilience`).
    """

    uri: str | None = Field(
        default=None,
        description="Store URI, bound to the MONGODB_URI environment variable; empty means the "
        "default embedded store (local development only). Do not put credentials here.",
    )
    database_name: str = Field(
        default=store.DEFAULT_DATABASE,
        description="Database holding the CRM collections (MONGODB_DATABASE).",
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
        """The CRM database, retrying transient errors."""
        return ResilientDatabase(
            store.open_database(self.uri or store.DEFAULT_STORE_DIR.as_uri(), self.database_name),
            MongoRetry(
                attempts=self.retry_attempts,
                initial_delay=self.retry_initial_delay_seconds,
                max_delay=self.retry_max_delay_seconds,
            ),
        )
