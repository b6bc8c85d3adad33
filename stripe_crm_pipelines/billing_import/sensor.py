"""``billing_import_sensor``: one ``billing_contact_import`` run per pending import request.

Every 30 seconds (``STRIPE_CRM_IMPORT_SENSOR_INTERVAL_SECONDS`` where the definitions load, see
:func:`import_sensor_interval_seconds`) the sensor reads the pending billing requests, newest
first (as the seed did), and asks for one run per request. The run key is
``<import id>:<attempts>``: while a request waits for its run it is asked for again with the same
key, which Dagster drops, and a request put back to pending after a failed attempt gets a new key
because its claim counted the attempt. A run that ended before it claimed its requests (terminated
while queued, failed to start or before the claim) leaves them pending under the key the daemon
will not launch again: the sensor sees that run ended, records it on each request
(``last_error``, ``unclaimed_runs``) and launches it again under a new key on the next tick; after
three such runs the request is failed with the reason.

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

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import exclusion, queue, recovery, tags
from stripe_crm_pipelines.billing_import.batch_job import billing_import_batch
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.billing_import.recovery import RunFacts
from stripe_crm_pipelines.billing_import.requests import CONTACT_TYPES
from stripe_crm_pipelines.billing_import.results import RESULT_NAME
from stripe_crm_pipelines.resources import MongoResource
from stripe_crm_pipelines.resources.import_batching import ImportBatchingResource
from stripe_crm_pipelines.resources.stripe import redact_api_keys
from stripe_crm_pipelines.stripe_keys import connected_accounts_of

RUN_END_SENSOR_INTERVAL_SECONDS = 10
RUN_KEY_TAG = "dagster/run_key"
"""The tag Dagster gives a run launched under a sensor's run key."""
SENSOR_INTERVAL_VARIABLE = "STRIPE_CRM_IMPORT_SENSOR_INTERVAL_SECONDS"
DEFAULT_SENSOR_INTERVAL_SECONDS = 30


def import_sensor_interval_seconds(environ: Mapping[str, str] = os.environ) -> int:
    """Seconds between two ticks of ``billing_import_sensor``: :data:`SENSOR_INTERVAL_VARIABLE`
    when set (a whole number, at least 1), else 30. A shorter interval picks requests up sooner
    and has the daemon read the queue more often. Read once, when the definitions load; a bad
    value stops them loading with an error that names the variable."""
    value = (environ.get(SENSOR_INTERVAL_VARIABLE) or "").strip()
    if not value:
        return DEFAULT_SENSOR_INTERVAL_SECONDS
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ValueError(
            f"{SENSOR_INTERVAL_VARIABLE} must be a whole number of seconds, at least 1; "
            f"got {value!r}"
        )
    return seconds


REQUEST_FIELDS = {
    "_id": 1,
    "account_id": 1,
    "user_id": 1,
    "type": 1,
    "attempts": 1,
    "releases": 1,
    "own_run": 1,
}
NO_CONNECTED_ACCOUNT = "none"
IMPORT_JOBS = ("billing_contact_import", "billing_import_batch", "billing_contact_sync")
"""The jobs that import or sync an account's contacts."""


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
                run_key=queue.run_key(request),
                job_name=billing_contact_import.name,
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


@dataclass(frozen=True)
class Working:
    """What imports and syncs are queued or running now, as the batch planner must avoid."""

    stripe_accounts: frozenset[str] = frozenset()
    """Tags of queued or running runs of their own (imports and syncs)."""
    account_ids: frozenset[ObjectId] = frozenset()
    """Accounts with a claimed request (in any run)."""
    import_ids: frozenset[str] = frozenset()
    """Requests named by queued or running batch runs."""


def working_now(db, instance: DagsterInstance) -> Working:
    """Read what is queued or running from the instance and the claimed requests."""
    stripe_accounts: set[str] = set()
    import_ids: set[str] = set()
    runs = instance.get_runs(
        RunsFilter(statuses=exclusion.WAITING_STATUSES + exclusion.RUNNING_STATUSES)
    )
    for run in runs:
        if run.job_name not in IMPORT_JOBS:
            continue
        if run.job_name == billing_import_batch.name:
            import_ids.update(_batch_import_ids(run.run_config))
        elif (stripe_account := run.tags.get(tags.STRIPE_ACCOUNT)) is not None:
            stripe_accounts.add(stripe_account)
    claimed = {held.account_id for held in queue.held_requests(db) if held.account_id}
    return Working(frozenset(stripe_accounts), frozenset(claimed), frozenset(import_ids))


def last_import_sizes(db, account_ids: Iterable[ObjectId]) -> dict[tuple[ObjectId, str], int]:
    """(account, contact type) → customers fetched by its newest completed import."""
    groups = db[store.IMPORT_RESULTS].aggregate(
        [
            {
                "$match": {
                    "account_id": {"$in": [str(account_id) for account_id in account_ids]},
                    "name": RESULT_NAME,
                    "status": queue.COMPLETED,
                    "dry_run": {"$ne": True},
                }
            },
            {"$sort": {"started_at": -1}},
            {
                "$group": {
                    "_id": {"account_id": "$account_id", "type": "$type"},
                    "customers": {"$first": "$customers_fetched"},
                }
            },
        ]
    )
    sizes: dict[tuple[ObjectId, str], int] = {}
    for group in groups:
        account_id = _object_id(group["_id"].get("account_id"))
        customers = group.get("customers")
        if account_id is not None and isinstance(customers, int):
            sizes[(account_id, str(group["_id"].get("type")))] = customers
    return sizes


def split_small(
    requests: Iterable[Mapping[str, Any]],
    connected_accounts: Mapping[ObjectId, str | None],
    sizes: Mapping[tuple[ObjectId, str], int],
    small_account_customers: int,
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(requests for a batch, requests for runs of their own), each in the given order.

    A batch takes requests with a billing key whose account and type had at most
    ``small_account_customers`` customers at their last import, or were never imported; a
    request a batch handed off (``own_run``) gets a run of its own.
    """
    small: list[Mapping[str, Any]] = []
    own: list[Mapping[str, Any]] = []
    for request in requests:
        account_id = _object_id(request.get("account_id"))
        contact_type = CONTACT_TYPES.get(str(request.get("type")))
        if (
            account_id is None
            or account_id not in connected_accounts
            or contact_type is None
            or request.get("own_run") is True
            or sizes.get((account_id, contact_type), 0) > small_account_customers
        ):
            own.append(request)
        else:
            small.append(request)
    return small, own


def plan_batches(
    requests: Iterable[Mapping[str, Any]],
    connected_accounts: Mapping[ObjectId, str | None],
    working: Working,
    batching: ImportBatchingResource,
) -> tuple[list[RunRequest], list[Mapping[str, Any]], list[str]]:
    """``billing_import_batch`` runs of at most ``batching.max_requests`` requests, at most one
    per account, none of an account something is importing or syncing; the requests that get a
    run of their own instead (fewer than ``batching.min_requests`` to launch); and the requests
    held back for a later tick (described)."""
    chosen: list[Mapping[str, Any]] = []
    taken: set[str] = set()
    held_back: list[str] = []
    for request in requests:
        import_id = str(request["_id"])
        if import_id in working.import_ids:
            continue  # its batch run is queued or running
        account_id = _object_id(request.get("account_id"))
        stripe_account = connected_accounts.get(account_id) or f"account {account_id}"
        if (
            account_id in working.account_ids
            or stripe_account in working.stripe_accounts
            or stripe_account in taken
        ):
            held_back.append(f"{import_id} (account {account_id} is being imported or synced)")
            continue
        taken.add(stripe_account)
        chosen.append(request)
    if len(chosen) < batching.min_requests:
        return [], chosen, held_back
    runs = []
    for start in range(0, len(chosen), batching.max_requests):
        part = chosen[start : start + batching.max_requests]
        import_ids = [str(request["_id"]) for request in part]
        keys = sorted(queue.run_key(request) for request in part)
        digest = hashlib.sha256(",".join(keys).encode()).hexdigest()[:20]
        runs.append(
            RunRequest(
                run_key=f"batch:{digest}",
                job_name=billing_import_batch.name,
                run_config={
                    "ops": {
                        "import_requests": {
                            "config": {
                                "import_ids": import_ids,
                                "parallel_imports": batching.parallel_imports,
                                "hand_off_after_customers": batching.small_account_customers,
                            }
                        }
                    }
                },
                tags={tags.BATCH_SIZE: str(len(import_ids))},
            )
        )
    return runs, [], held_back


@sensor(
    jobs=[billing_contact_import, billing_import_batch],
    minimum_interval_seconds=import_sensor_interval_seconds(),
    default_status=DefaultSensorStatus.RUNNING,
    description="Launches the pending billing-contacts requests, newest first: a burst of "
    "requests of small accounts together in billing_import_batch runs (each request still "
    "claimed, imported and recorded on its own), others in a billing_contact_import run each; "
    "requests whose account has no billing Stripe key wait, named in the tick.",
)
def billing_import_sensor(
    context: SensorEvaluationContext, mongo: MongoResource, import_batching: ImportBatchingResource
):
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
    connected = connected_accounts_of(db, account_ids)
    batches: list[RunRequest] = []
    own = pending
    if import_batching.max_requests > 0:
        small, own = split_small(
            pending,
            connected,
            last_import_sizes(db, connected),
            import_batching.small_account_customers,
        )
        batches, singles, held_back = plan_batches(
            small, connected, working_now(db, context.instance), import_batching
        )
        own = [*singles, *own]
        if held_back:
            context.log.info(
                f"{len(held_back)} small import request(s) wait for a later tick: "
                f"{', '.join(held_back[:20])}"
            )
    runs, waiting = plan_runs(own, connected)
    if waiting:
        context.log.info(
            f"{len(waiting)} import request(s) left pending, no billing Stripe key for the "
            f"account: {', '.join(item.describe() for item in waiting)}"
        )
    runs, batches = (
        _not_launched_before(db, context, runs),
        _not_launched_before(db, context, batches),
    )
    if not runs and not batches:
        if waiting:
            return SkipReason(
                "No billing Stripe key for the account of pending import request(s) "
                f"{', '.join(item.describe() for item in waiting)}; left pending"
            )
        return SkipReason("Every pending import request waits for its account or its batch run")
    if batches:
        context.log.info(
            f"Requesting {len(batches)} batch run(s) of "
            f"{sum(len(_batch_import_ids(r.run_config)) for r in batches)} small import(s)"
        )
    if runs:
        context.log.info(f"Requesting {len(runs)} import run(s), newest request first")
    return [*batches, *runs]


@run_failure_sensor(
    monitored_jobs=[billing_contact_import, billing_import_batch],
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
    monitored_jobs=[billing_contact_import, billing_import_batch],
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
    held = list(queue.held_requests(db))
    # A batch run holds several requests: one gone silent (its import's thread died) does not
    # make a run dead whose other imports still beat.
    beating = {
        request.run_id
        for request in held
        if now - recovery.last_sign_of_life(request, default=now)
        <= timedelta(seconds=recovery.STALE_AFTER_SECONDS)
    }
    for request in held:
        run = instance.get_run_by_id(request.run_id)
        facts = run_facts(run)
        cause = recovery.why_stale(request, facts, now)
        if cause is None:
            continue
        if run is not None and not run.is_finished and request.run_id not in beating:
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
    """Recover the requests ``run`` still holds (if any: a batch run may hold several) now that
    the run has ended; says what it did."""
    done = [
        message
        for request in queue.requests_held_by(db, run.run_id)
        if (
            message := recovery.recover_request(
                db,
                request,
                cause=cause,
                run_cancelled=run.status == DagsterRunStatus.CANCELED,
                now=now or datetime.now(UTC),
            )
        )
        is not None
    ]
    return "; ".join(done) if done else None


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


def ended_runs_by_key(instance: DagsterInstance, run_keys: Iterable[str]) -> dict[str, DagsterRun]:
    """The finished runs launched under any of ``run_keys``, by key. The daemon never launches a
    key twice, so a run asked for under one of these keys would be dropped."""
    ended: dict[str, DagsterRun] = {}
    for key in sorted(set(run_keys)):
        # One query per key, as the daemon itself looks keys up: a tag IN (...) query plans badly
        # on a large run table.
        runs = instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: key}), limit=1)
        if runs and runs[0].is_finished:
            ended[key] = runs[0]
    return ended


def _not_launched_before(
    db, context: SensorEvaluationContext, run_requests: list[RunRequest]
) -> list[RunRequest]:
    """``run_requests`` but those whose key names a run that has already ended. Such a run ended
    before it claimed its requests (a claim changes the key): terminated while queued, failed to
    start, or failed before the claim. Its requests are launched again under a new key on the
    next tick, or failed once that has happened too often (:func:`queue.relaunch_unclaimed`)."""
    ended = ended_runs_by_key(context.instance, (r.run_key for r in run_requests if r.run_key))
    if not ended:
        return run_requests
    kept = []
    for run_request in run_requests:
        run = ended.get(run_request.run_key or "")
        if run is None:
            kept.append(run_request)
            continue
        for import_id in _import_ids(run_request.run_config):
            if not ObjectId.is_valid(import_id):
                continue
            message = queue.relaunch_unclaimed(
                db, ObjectId(import_id), run.run_id, run.status.value
            )
            if message is not None:
                context.log.warning(message)
    return kept


def _import_ids(run_config: Mapping[str, Any] | None) -> list[str]:
    """The requests a run's config names: a batch's, or a single import's."""
    try:
        return [str(run_config["ops"]["claim_import_request"]["config"]["import_id"])]  # type: ignore[index]
    except (KeyError, TypeError):
        return _batch_import_ids(run_config)


def _batch_import_ids(run_config: Mapping[str, Any] | None) -> list[str]:
    """The requests a batch run's config names."""
    try:
        ids = run_config["ops"]["import_requests"]["config"]["import_ids"]  # type: ignore[index]
    except (KeyError, TypeError):
        return []
    return [str(import_id) for import_id in ids] if isinstance(ids, list) else []


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
