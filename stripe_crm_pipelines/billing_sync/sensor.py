"""``billing_sync_sensor``: one ``billing_contact_sync`` run per sync state that is due.

A state is due when it is enabled, no resync import is waiting for it, and neither its last sync
nor its last attempt is more recent than its ``sync_interval_seconds`` (default 300). Runs carry
the same tags as imports (account, connected Stripe account, import type, user), so the
instance's limit of one run per ``stripe_crm/stripe_account`` holds for imports and syncs of an
account together. The run key is ``sync:<state id>:<attempts>``: a run that waits in the queue
is not asked for twice, and the next attempt gets a new key because the run counts it. A run
that ended before it could count it (terminated while queued, failed to start) is counted by the
sensor, with the reason in the state's ``last_error``.

The sensor also adds each account's partition of ``crm_contacts`` to the catalog.
"""

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from bson import ObjectId
from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from stripe_crm_pipelines.billing_import import tags
from stripe_crm_pipelines.billing_import.sensor import NO_CONNECTED_ACCOUNT, ended_runs_by_key
from stripe_crm_pipelines.billing_sync.job import billing_contact_sync
from stripe_crm_pipelines.billing_sync.state import (
    InvalidSyncState,
    SyncState,
    due_sync_states,
    skip_unstarted_attempt,
)
from stripe_crm_pipelines.catalog import add_account_partitions
from stripe_crm_pipelines.resources import MongoResource
from stripe_crm_pipelines.stripe_keys import connected_accounts_of

SENSOR_INTERVAL_SECONDS = 30


def plan_sync_runs(
    states: Iterable[SyncState], connected_accounts: Mapping[ObjectId, str | None]
) -> list[RunRequest]:
    """One run per due state. An account without a billing key still gets its run, which fails
    with the reason and records it on the state, once per interval."""
    return [
        RunRequest(
            run_key=f"sync:{state.id}:{state.attempts}",
            run_config={
                "ops": {
                    "sync_billing_contacts": {
                        "config": {
                            "account_id": str(state.account_id),
                            "import_type": state.import_type,
                        }
                    }
                }
            },
            tags={
                tags.ACCOUNT_ID: str(state.account_id),
                tags.IMPORT_TYPE: state.import_type,
                tags.USER_ID: str(state.user_id),
                tags.STRIPE_ACCOUNT: connected_accounts.get(state.account_id)
                or NO_CONNECTED_ACCOUNT,
            },
        )
        for state in states
    ]


@sensor(
    job=billing_contact_sync,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="Launches a billing_contact_sync run for every enabled stripe_sync_state whose "
    "last sync is older than its sync_interval_seconds (default 300).",
)
def billing_sync_sensor(context: SensorEvaluationContext, mongo: MongoResource):
    db = mongo.database()
    now = datetime.now(UTC)
    invalid: list[InvalidSyncState] = []
    due = due_sync_states(db, now, invalid)
    for error in invalid:
        context.log.error(f"{error}; that state is not synced until it is fixed")
    if not due:
        return SkipReason("No contact sync is due")
    account_ids = {state.account_id for state in due}
    runs = plan_sync_runs(due, connected_accounts_of(db, account_ids))
    # A run that ended before it counted its attempt keeps the state's run key, which the daemon
    # never launches twice: count the attempt here, so the next one gets a key of its own.
    ended = ended_runs_by_key(context.instance, (run.run_key for run in runs if run.run_key))
    launch = []
    for state, run_request in zip(due, runs, strict=True):
        run = ended.get(run_request.run_key or "")
        if run is None:
            launch.append(run_request)
            continue
        message = (
            f"Run {run.run_id} ended ({run.status.value}) before it started the sync; the next "
            "run starts when the sync is due again"
        )
        skip_unstarted_attempt(db, state.id, run.run_id, message, now)
        context.log.warning(f"Sync of account {state.account_id} ({state.import_type}): {message}")
    runs = launch
    context.log.info(f"Requesting {len(runs)} contact sync run(s)")
    return SensorResult(
        run_requests=runs, dynamic_partitions_requests=[add_account_partitions(account_ids)]
    )
