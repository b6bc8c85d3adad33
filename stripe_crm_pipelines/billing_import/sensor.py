"""``billing_import_sensor``: one ``billing_contact_import`` run per pending import request.

Every 30 seconds the sensor reads the pending billing requests, newest first (as the seed did),
and asks for one run per request. The run key is ``<import id>:<attempts>``: while a request
waits for its run it is asked for again with the same key, which Dagster drops, and a request
put back to pending after a failed attempt gets a new key because its claim counted the attempt.

A request still claimed by a run that can no longer finish it (the run failed, was terminated,
is missing from the instance, or has sent no heartbeat for five minutes because its process died)
is recovered first (:mod:`~stripe_crm_pipelines.billing_import.recovery`): queued again to resume
from its checkpoint, up to three attempts, then ``failed`` with the reason; ``cancelled`` for a
terminated run. ``billing_import_failure_sensor`` and ``billing_import_cancel_sensor`` do the
same within seconds of a run failing or being cancelled.

A request whose account has no billing Stripe key is left pending and untouched (the seed reset
every request in that case); the tick names it. A request too malformed to parse still gets a
run, which marks it failed with the reason, so it cannot sit unnoticed.

Only the connected account id (``acct_…``) is read from ``stripe_key``; the secret key stays in
MongoDB until the run's ``sync_customers`` op reads it.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import queue, recovery, tags
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.billing_import.recovery import RunFacts
from stripe_crm_pipelines.resources import MongoResource
from stripe_crm_pipelines.resources.stripe import redact_api_keys
from stripe_crm_pipelines.stripe_keys import BILLING_APP

RUN_END_SENSOR_INTERVAL_SECONDS = 10
REQUEST_FIELDS = {"_id": 1, "account_id": 1, "user_id": 1, "type": 1, "attempts": 1}
NO_CONNECTED_ACCOUNT = "none"


@dataclass(frozen=True)
class WaitingForKey:
    """A pending request left alone because its account has no billing Stripe key."""

    import_id: str
    account_id: str

    def describe(self) -> str:
        return f"{self.import_id} (account {self.account_id})"


def plan_runs(
    requests: Iterable[Mapping[str, Any]], connected_accounts: Mapping[ObjectId, str | None]
) -> tuple[list[RunRequest], list[WaitingForKey]]:
    """One run per request, in the given order, except requests whose account has no key.

    ``connected_accounts`` maps each account with a billing key to its connected Stripe account.
    """
    runs: list[RunRequest] = []
    waiting: list[WaitingForKey] = []
    for request in requests:
        import_id = str(request["_id"])
        account_id = _object_id(request.get("account_id"))
        if account_id is not None and account_id not in connected_accounts:
            waiting.append(WaitingForKey(import_id, str(account_id)))
            continue
        stripe_account = connected_accounts.get(account_id) if account_id else None
        runs.append(
            RunRequest(
                run_key=f"{import_id}:{queue.attempts_of(request)}",
                run_config={"ops": {"claim_import_request": {"config": {"import_id": import_id}}}},
                tags={
                    tags.IMPORT_ID: import_id,
                    tags.ACCOUNT_ID: str(request.get("account_id")),
                    tags.IMPORT_TYPE: str(request.get("type")),
                    tags.USER_ID: str(request.get("user_id")),
                    tags.STRIPE_ACCOUNT: stripe_account or NO_CONNECTED_ACCOUNT,
                },
            )
        )
    return runs, waiting


def connected_accounts_of(db, account_ids: Iterable[ObjectId]) -> dict[ObjectId, str | None]:
    """Accounts with a billing Stripe key → their connected account id (never the key)."""
    keys = db[store.STRIPE_KEYS].find(
        {"account_id": {"$in": list(account_ids)}, "connected_apps": BILLING_APP},
        {"_id": 0, "account_id": 1, "token.stripe_user_id": 1},
    )
    accounts: dict[ObjectId, str | None] = {}
    for key in keys:
        token = key.get("token")
        stripe_account = token.get("stripe_user_id") if isinstance(token, Mapping) else None
        accounts.setdefault(
            key["account_id"], stripe_account if isinstance(stripe_account, str) else None
        )
    return accounts


@sensor(
    job=billing_contact_import,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Launches one billing_contact_import run per pending billing-contacts request, "
    "newest first; requests whose account has no billing Stripe key wait, named in the tick.",
)
def billing_import_sensor(context: SensorEvaluationContext, mongo: MongoResource):
    db = mongo.database()
    for message in recover_stale_claims(db, context.instance):
        context.log.warning(message)
    pending = queue.pending_requests(db, REQUEST_FIELDS)
    if not pending:
        return SkipReason("No pending billing contact imports")
    account_ids = {
        account_id
        for request in pending
        if (account_id := _object_id(request.get("account_id"))) is not None
    }
    runs, waiting = plan_runs(pending, connected_accounts_of(db, account_ids))
    if waiting:
        context.log.info(
            f"{len(waiting)} import request(s) left pending, no billing Stripe key for the "
            f"account: {', '.join(item.describe() for item in waiting)}"
        )
    if not runs:
        return SkipReason(
            "No billing Stripe key for the account of pending import request(s) "
            f"{', '.join(item.describe() for item in waiting)}; left pending"
        )
    context.log.info(f"Requesting {len(runs)} import run(s), newest request first")
    return runs


@run_failure_sensor(
    monitored_jobs=[billing_contact_import],
    minimum_interval_seconds=RUN_END_SENSOR_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="When a billing_contact_import run fails while still holding its request, "
    "queues the request again (up to 3 attempts) or marks it failed with an import result.",
)
def billing_import_failure_sensor(context: RunFailureSensorContext, mongo: MongoResource):
    reason = redact_api_keys(_failure_reason(context))
    cause = f"Run {context.dagster_run.run_id} failed: {reason}"
    message = recover_run(mongo.database(), context.dagster_run, cause)
    if message is not None:
        context.log.warning(message)


@run_status_sensor(
    run_status=DagsterRunStatus.CANCELED,
    monitored_jobs=[billing_contact_import],
    minimum_interval_seconds=RUN_END_SENSOR_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="When a billing_contact_import run is terminated while still holding its "
    "request, marks the request cancelled with an import result of the counts so far.",
)
def billing_import_cancel_sensor(context: RunStatusSensorContext, mongo: MongoResource):
    cause = f"Run {context.dagster_run.run_id} was cancelled before finishing the import"
    message = recover_run(mongo.database(), context.dagster_run, cause)
    if message is not None:
        context.log.warning(message)


def recover_stale_claims(db, instance: DagsterInstance, now: datetime | None = None) -> list[str]:
    """Recover every held request whose run can no longer finish it; says what it did."""
    now = now or datetime.now(UTC)
    done: list[str] = []
    for request in queue.held_requests(db):
        run = instance.get_run_by_id(request.run_id)
        facts = run_facts(run)
        cause = recovery.why_stale(request, facts, now)
        if cause is None:
            continue
        if run is not None and not run.is_finished:
            # Dead without Dagster knowing: say so on the run, which also frees its slot in the
            # per-account concurrency limit for the next attempt.
            instance.report_run_failed(run, f"{cause}. Marked failed by billing_import_sensor.")
        message = recovery.recover_request(
            db, request, cause=cause, run_cancelled=facts is not None and facts.cancelled, now=now
        )
        if message is not None:
            done.append(message)
    return done


def recover_run(db, run: DagsterRun, cause: str, now: datetime | None = None) -> str | None:
    """Recover the request ``run`` still holds (if any) now that the run has ended."""
    request = queue.request_held_by(db, run.run_id)
    if request is None:
        return None
    return recovery.recover_request(
        db,
        request,
        cause=cause,
        run_cancelled=run.status == DagsterRunStatus.CANCELED,
        now=now or datetime.now(UTC),
    )


def run_facts(run: DagsterRun | None) -> RunFacts | None:
    """What recovery needs to know of a run, as plain values (None: missing from the instance)."""
    if run is None:
        return None
    return RunFacts(
        run_id=run.run_id,
        status=run.status.value,
        finished=run.is_finished,
        started=run.status == DagsterRunStatus.STARTED,
        cancelled=run.status == DagsterRunStatus.CANCELED,
    )


def _failure_reason(context: RunFailureSensorContext) -> str:
    """The first failed step's own description, else the run's failure message."""
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        if data.error is not None:
            return f"{event.step_key}: {data.error.message.strip()}"
    return context.failure_event.message or "no reason recorded"


def _object_id(value: object) -> ObjectId | None:
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value)
    return None
