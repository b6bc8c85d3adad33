"""``billing_import_sensor``: one ``billing_contact_import`` run per pending import request.

Every 30 seconds the sensor reads the pending billing requests, newest first (as the seed did),
and asks for one run per request. The run key is ``<import id>:<attempts>``: while a request
waits for its run it is asked for again with the same key, which Dagster drops, and a request
put back to pending after a failed attempt gets a new key because its claim counted the attempt.

A request still claimed by a run that ended without closing it (its process died, or someone
terminated the run) is closed by the sensor: ``failed`` or, for a terminated run, ``cancelled``,
with an import result holding the counts of its last checkpoint.

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
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import tags
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.billing_import.ops import save_result
from stripe_crm_pipelines.billing_import.requests import BILLING_APP, IMPORT_SOURCE
from stripe_crm_pipelines.billing_import.results import (
    failed_request_update,
    outcome_of_document,
    result_document,
)
from stripe_crm_pipelines.resources import MongoResource

PENDING_FILTER = {"source": IMPORT_SOURCE, "status": "pending", "in_progress": False}
CLAIMED_FILTER = {"source": IMPORT_SOURCE, "status": "pending", "in_progress": True}
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
                run_key=f"{import_id}:{_attempts(request.get('attempts'))}",
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
    for message in close_abandoned_claims(db, context.instance):
        context.log.warning(message)
    pending = list(
        db[store.QUEUES].find(PENDING_FILTER, REQUEST_FIELDS).sort([("createdAt", -1), ("_id", -1)])
    )
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


def close_abandoned_claims(db, instance: DagsterInstance) -> list[str]:
    """Close requests whose claiming run has ended without closing them; says what it did."""
    closed: list[str] = []
    for request in db[store.QUEUES].find(CLAIMED_FILTER):
        run_id = request.get("claimed_by_run")
        run = instance.get_run_by_id(run_id) if isinstance(run_id, str) else None
        if run is None or not run.is_finished or run.status == DagsterRunStatus.SUCCESS:
            continue
        status = "cancelled" if run.status == DagsterRunStatus.CANCELED else "failed"
        message = f"Run {run_id} ended ({run.status.value}) before finishing the import"
        now = datetime.now(UTC)
        taken = db[store.QUEUES].find_one_and_update(
            {"_id": request["_id"], **CLAIMED_FILTER, "claimed_by_run": run_id},
            failed_request_update(message, now, result_id=None, status=status),
        )
        if taken is None:
            continue
        outcome = outcome_of_document(request)
        outcome.finish(now)
        result_id = save_result(
            db, result_document(outcome, status=status, run_id=run_id, error=message)
        )
        db[store.QUEUES].update_one({"_id": request["_id"]}, {"$set": {"result_id": result_id}})
        closed.append(f"Import request {request['_id']} marked {status}: {message}")
    return closed


def _object_id(value: object) -> ObjectId | None:
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value)
    return None


def _attempts(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float) and value >= 0:
        return int(value)
    return 0
