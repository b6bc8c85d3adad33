"""Stale claims: a request held by a run that can no longer finish it is queued again (up to
three attempts, resuming from its checkpoint), then failed with the reason; a cancelled run's
request is cancelled. The sensor, the run-failure sensor and the run-cancel sensor all get
there through ``recovery.recover_request``."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId
from dagster import (
    DagsterEventType,
    DagsterRunStatus,
    build_run_status_sensor_context,
)

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import importer, queue, recovery, tags
from stripe_crm_pipelines.billing_import.importer import ClaimWatch
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.billing_import.queue import ClaimState, HeldRequest
from stripe_crm_pipelines.billing_import.recovery import (
    MAX_ATTEMPTS,
    decide_recovery,
    why_stale,
)
from stripe_crm_pipelines.billing_import.results import ImportOutcome
from stripe_crm_pipelines.billing_import.sensor import (
    billing_import_cancel_sensor,
    billing_import_failure_sensor,
    run_facts,
)
from stripe_crm_pipelines.definitions import defs
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from tests.conftest import (
    CONNECTED_ACCOUNT,
    add_account,
    add_request,
    import_result,
    run_import,
)
from tests.reliability import assert_counts_add_up, evaluate_sensor

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# --- the decision ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "run_cancelled", "cancel_requested", "status"),
    [
        (1, False, False, "pending"),
        (2, False, False, "pending"),
        (3, False, False, "failed"),
        (4, False, False, "failed"),
        (0, False, False, "pending"),
        (1, True, False, "cancelled"),
        (3, True, False, "cancelled"),
        (1, False, True, "cancelled"),
    ],
)
def test_decide_recovery(attempts, run_cancelled, cancel_requested, status):
    decision = decide_recovery(
        attempts=attempts,
        run_cancelled=run_cancelled,
        cancel_requested=cancel_requested,
        cause="Run r1 died",
    )
    assert decision.status == status
    assert decision.reason.startswith("Run r1 died")
    if status == "failed":
        assert f"gave up after {attempts} attempts" in decision.reason
    assert MAX_ATTEMPTS == 3, "the seed's attempts: 3"


def make_run(instance, status: DagsterRunStatus, import_id: ObjectId | None = None):
    import_id = import_id or ObjectId()
    return instance.create_run_for_job(
        billing_contact_import,
        run_config={"ops": {"claim_import_request": {"config": {"import_id": str(import_id)}}}},
        status=status,
        tags={tags.IMPORT_ID: str(import_id)},
    )


def claimed(run_id: str, **fields) -> HeldRequest:
    import_id = ObjectId()
    outcome = ImportOutcome(str(import_id), str(ObjectId()), str(ObjectId()), "person", NOW)
    values = {"attempts": 1, "cancel_requested": False, "claimed_at": NOW, "heartbeat_at": None}
    return HeldRequest(import_id=import_id, run_id=run_id, outcome=outcome, **values | fields)


@pytest.mark.parametrize(
    ("run_status", "silent_for", "stale"),
    [
        (DagsterRunStatus.STARTED, timedelta(seconds=10), False),
        (DagsterRunStatus.STARTED, timedelta(minutes=10), True),
        (DagsterRunStatus.STARTING, timedelta(minutes=5), False),
        (DagsterRunStatus.CANCELING, timedelta(minutes=5), False),
        (DagsterRunStatus.FAILURE, timedelta(0), True),
        (DagsterRunStatus.CANCELED, timedelta(0), True),
        (DagsterRunStatus.SUCCESS, timedelta(0), True),
    ],
)
def test_why_stale(instance, run_status, silent_for, stale):
    run = make_run(instance, run_status)
    request = claimed(run.run_id, heartbeat_at=NOW - silent_for, claimed_at=NOW - silent_for)

    reason = why_stale(request, run_facts(run), NOW)

    assert (reason is not None) == stale
    if stale:
        assert run.run_id in reason


def test_a_missing_run_is_stale():
    assert "missing from the Dagster instance" in why_stale(claimed("gone"), None, NOW)


def test_the_latest_heartbeat_counts_not_the_claim(instance):
    run = make_run(instance, DagsterRunStatus.STARTED)
    request = claimed(
        run.run_id, claimed_at=NOW - timedelta(hours=2), heartbeat_at=NOW - timedelta(seconds=5)
    )
    assert why_stale(request, run_facts(run), NOW) is None


# --- the sensor -----------------------------------------------------------------------------


def claim_for(db, instance, import_id, run_status: DagsterRunStatus, **fields):
    """Make ``import_id`` look claimed by a new run in ``run_status``, as the claim op does."""
    run = make_run(instance, run_status, import_id)
    db[store.QUEUES].update_one(
        {"_id": import_id},
        {
            "$set": {
                "in_progress": True,
                "claimed_by_run": run.run_id,
                "claimed_at": datetime.now(UTC),
                **fields,
            },
            "$inc": {"attempts": 1},
        },
    )
    return run


def test_a_dead_runs_request_is_queued_again_three_times_then_failed(db, mongo_uri, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    dead_runs = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        checkpoint = {"outcome": {
            "import_id": str(import_id), "account_id": str(account_id), "user_id": str(ObjectId()),
            "contact_type": "person", "started_at": NOW, "records_added": 100 * attempt,
            "customers_fetched": 100 * attempt, "pages_fetched": attempt,
        }}  # fmt: skip
        dead_runs.append(
            claim_for(db, instance, import_id, DagsterRunStatus.FAILURE, checkpoint=checkpoint)
        )
        result = evaluate_sensor(instance, mongo_uri)
        request = db[store.QUEUES].find_one({"_id": import_id})
        assert request["attempts"] == attempt
        if attempt < MAX_ATTEMPTS:
            # Queued again with its progress kept, and asked for under a new run key.
            assert (request["status"], request["in_progress"]) == ("pending", False)
            assert "claimed_by_run" not in request
            assert request["resume_from"] == checkpoint
            assert dead_runs[-1].run_id in request["last_error"]
            assert [run.run_key for run in result.run_requests] == [f"{import_id}:{attempt}"]
            assert db[store.IMPORT_RESULTS].count_documents({}) == 0
        else:
            assert result.run_requests == []

    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == ("failed", False)
    assert f"gave up after {MAX_ATTEMPTS} attempts" in request["error"]
    assert dead_runs[-1].run_id in request["error"]
    assert [entry["run_id"] for entry in request["failed_attempts"]] == [
        run.run_id for run in dead_runs[:-1]
    ]
    assert "resume_from" not in request
    result = import_result(db, import_id)
    assert (result["status"], result["records_added"]) == ("failed", 300)
    assert result["error"] == request["error"]
    assert request["result_id"] == result["_id"]


def test_a_silent_started_run_is_marked_failed_and_its_request_queued_again(
    db, mongo_uri, instance, monkeypatch
):
    account_id = add_account(db)
    silent = add_request(db, account_id)
    alive = add_request(db, account_id)
    silent_run = claim_for(db, instance, silent, DagsterRunStatus.STARTED)
    alive_run = claim_for(db, instance, alive, DagsterRunStatus.STARTED)
    long_ago = datetime.now(UTC) - timedelta(seconds=recovery.STALE_AFTER_SECONDS + 30)
    db[store.QUEUES].update_one(
        {"_id": silent}, {"$set": {"claimed_at": long_ago, "heartbeat_at": long_ago}}
    )

    result = evaluate_sensor(instance, mongo_uri)

    assert [run.tags[tags.IMPORT_ID] for run in result.run_requests] == [str(silent)]
    assert instance.get_run_by_id(silent_run.run_id).status == DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(alive_run.run_id).status == DagsterRunStatus.STARTED
    assert db[store.QUEUES].find_one({"_id": silent})["status"] == "pending"
    assert db[store.QUEUES].find_one({"_id": alive})["claimed_by_run"] == alive_run.run_id


def test_a_request_claimed_by_a_run_missing_from_the_instance_is_queued_again(
    db, mongo_uri, instance
):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    db[store.QUEUES].update_one(
        {"_id": import_id},
        {"$set": {"in_progress": True, "claimed_by_run": "run-of-another-instance",
                  "attempts": 1}},
    )  # fmt: skip

    [run] = evaluate_sensor(instance, mongo_uri).run_requests

    request = db[store.QUEUES].find_one({"_id": import_id})
    assert request["status"] == "pending"
    assert "missing from the Dagster instance" in request["last_error"]
    assert run.run_key == f"{import_id}:1"


def test_a_cancelled_request_whose_run_died_is_closed_cancelled(db, mongo_uri, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    claim_for(db, instance, import_id, DagsterRunStatus.FAILURE, status="cancelled")

    assert evaluate_sensor(instance, mongo_uri).run_requests == []

    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == ("cancelled", False)
    assert import_result(db, import_id)["status"] == "cancelled"


def test_a_request_the_crm_cancels_while_recovery_decides_is_closed_cancelled(db):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    queue.claim(db, import_id, "run-1")
    read = queue.held_request(db, import_id, "run-1")
    assert not read.cancel_requested
    # The CRM cancels it between recovery's read and its write.
    db[store.QUEUES].update_one({"_id": import_id}, {"$set": {"status": "cancelled"}})

    done = recovery.recover_request(
        db, read, cause="Run run-1 died", run_cancelled=False, now=datetime.now(UTC)
    )

    assert done == f"Import request {import_id} marked cancelled: Run run-1 died"
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == ("cancelled", False)
    assert import_result(db, import_id)["status"] == "cancelled"


def test_claims_of_other_systems_and_live_runs_are_left_alone(db, mongo_uri, instance):
    account_id = add_account(db)
    legacy = add_request(db, account_id, in_progress=True)  # the Node.js queue manager's claim
    running = add_request(db, account_id)
    claim_for(db, instance, running, DagsterRunStatus.STARTED)
    before = list(db[store.QUEUES].find({}))

    result = evaluate_sensor(instance, mongo_uri)

    assert result.run_requests == []
    assert list(db[store.QUEUES].find({})) == before
    assert db[store.QUEUES].find_one({"_id": legacy})["in_progress"] is True


# --- the run-end sensors --------------------------------------------------------------------


def run_end_context(instance, run, event_type: DagsterEventType, mongo_uri: str, sensor):
    [entry] = instance.all_logs(run.run_id, of_type=event_type)
    return build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=entry.dagster_event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run.run_id),
        resources={"mongo": MongoResource(uri=mongo_uri)},
    )


def test_the_failure_sensor_queues_the_request_again_at_once(db, mongo_uri, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    run = claim_for(db, instance, import_id, DagsterRunStatus.STARTED)
    instance.report_run_failed(run, "the run worker's pod was evicted")
    context = run_end_context(
        instance, run, DagsterEventType.RUN_FAILURE, mongo_uri, billing_import_failure_sensor
    ).for_run_failure()

    billing_import_failure_sensor(context)

    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"], request["attempts"]) == ("pending", False, 1)
    assert "evicted" in request["last_error"]


def test_the_failure_sensor_fails_the_request_on_its_last_attempt(db, mongo_uri, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id, attempts=MAX_ATTEMPTS - 1)
    run = claim_for(db, instance, import_id, DagsterRunStatus.STARTED)
    instance.report_run_failed(run, "out of memory")
    context = run_end_context(
        instance, run, DagsterEventType.RUN_FAILURE, mongo_uri, billing_import_failure_sensor
    ).for_run_failure()

    billing_import_failure_sensor(context)

    request = db[store.QUEUES].find_one({"_id": import_id})
    assert request["status"] == "failed"
    assert "out of memory" in request["error"]
    assert import_result(db, import_id)["status"] == "failed"


def test_the_cancel_sensor_closes_the_request_cancelled(db, mongo_uri, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    run = claim_for(db, instance, import_id, DagsterRunStatus.STARTED)
    instance.report_run_canceled(run, "terminated from the UI")
    context = run_end_context(
        instance, run, DagsterEventType.RUN_CANCELED, mongo_uri, billing_import_cancel_sensor
    )

    billing_import_cancel_sensor(context)

    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == ("cancelled", False)
    assert import_result(db, import_id)["status"] == "cancelled"


def test_a_run_that_closed_its_own_request_is_left_alone(db, mongo_uri, sandbox, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings={"name": "owner"})
    result = run_import(mongo_uri, sandbox, import_id, instance)
    assert not result.success
    before = db[store.QUEUES].find_one({"_id": import_id})
    context = run_end_context(
        instance,
        instance.get_run_by_id(result.run_id),
        DagsterEventType.RUN_FAILURE,
        mongo_uri,
        billing_import_failure_sensor,
    ).for_run_failure()

    billing_import_failure_sensor(context)

    assert db[store.QUEUES].find_one({"_id": import_id}) == before
    assert db[store.IMPORT_RESULTS].count_documents({"import_id": import_id}) == 1


def test_the_run_end_sensors_are_defined_and_running():
    for name in ("billing_import_failure_sensor", "billing_import_cancel_sensor"):
        sensor = defs.resolve_sensor_def(name)
        assert sensor.default_status.value == "RUNNING"


# --- resuming in the next run, and the heartbeat -----------------------------------------------


class ProcessDeath(SystemExit):
    """Ends the op past all of its error handling, as a crash would."""


class StripeDyingBeforeRequest(StripeResource):
    """Raises :class:`ProcessDeath` before request number ``die_before`` of the import."""

    die_before: int

    def client(self, secret_key, stripe_account, *, stats=None, before_request=None):
        sent = iter(range(1, 1_000_000))

        def maybe_die() -> None:
            if next(sent) == self.die_before:
                raise ProcessDeath(137)
            if before_request is not None:
                before_request()

        return super().client(secret_key, stripe_account, stats=stats, before_request=maybe_die)


def test_the_next_attempt_resumes_where_the_dead_run_stopped(
    db, contacts, mongo_uri, sandbox, instance
):
    sandbox.state.seed_customers(450, seed=31, account=CONNECTED_ACCOUNT)
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings={"name": "name"})
    [first] = evaluate_sensor(instance, mongo_uri).run_requests
    with pytest.raises(ProcessDeath):
        billing_contact_import.execute_in_process(
            run_config=first.run_config,
            tags=first.tags,
            resources={
                "mongo": MongoResource(uri=mongo_uri),
                "stripe": StripeDyingBeforeRequest(api_base=sandbox.url, die_before=3),
            },
            instance=instance,
        )
    written = contacts.count_documents({})
    assert 0 < written < 450
    [dead] = instance.get_runs()
    assert db[store.QUEUES].find_one({"_id": import_id})["claimed_by_run"] == dead.run_id

    [retry] = evaluate_sensor(instance, mongo_uri).run_requests
    result = billing_contact_import.execute_in_process(
        run_config=retry.run_config,
        tags=retry.tags,
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "stripe": StripeResource(api_base=sandbox.url),
        },
        instance=instance,
    )

    assert retry.run_key == f"{import_id}:1" != first.run_key
    assert result.success
    document = import_result(db, import_id)
    assert_counts_add_up(document, 450)
    assert document["records_updated"] == 0, "pages the dead run wrote are not written again"
    assert contacts.count_documents({}) == document["records_added"]
    assert document["run_id"] == result.run_id
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["attempts"]) == ("completed", 2)
    assert "resume_from" not in request
    assert [attempt["run_id"] for attempt in request["failed_attempts"]] == [dead.run_id]


def test_the_watch_beats_and_notices_a_cancel(db, mongo_uri, monkeypatch):
    monkeypatch.setattr(importer, "HEARTBEAT_SECONDS", 0.05)
    import_id = add_request(db, add_account(db))
    db[store.QUEUES].update_one(
        {"_id": import_id}, {"$set": {"in_progress": True, "claimed_by_run": "r1"}}
    )
    mongo = MongoResource(uri=mongo_uri)

    with ClaimWatch(mongo.database, import_id, "r1") as watch:
        first = db[store.QUEUES].find_one({"_id": import_id})["heartbeat_at"]
        watch.raise_if_stopped()
        db[store.QUEUES].update_one({"_id": import_id}, {"$set": {"status": "cancelled"}})
        deadline = datetime.now(UTC) + timedelta(seconds=5)
        while watch.state is ClaimState.HELD and datetime.now(UTC) < deadline:
            time.sleep(0.01)
        assert watch.state is ClaimState.CANCEL_REQUESTED
        with pytest.raises(Exception, match="was cancelled"):
            watch.raise_if_stopped()
    assert db[store.QUEUES].find_one({"_id": import_id})["heartbeat_at"] > first


def test_leaving_the_watch_does_not_wait_for_a_beat_under_way(db, mongo_uri, monkeypatch):
    """An import ends when its last batch is written, not a store round trip later."""
    monkeypatch.setattr(importer, "HEARTBEAT_SECONDS", 0.01)
    import_id = add_request(db, add_account(db))
    db[store.QUEUES].update_one(
        {"_id": import_id}, {"$set": {"in_progress": True, "claimed_by_run": "r1"}}
    )
    mongo = MongoResource(uri=mongo_uri)
    in_beat, beat_returned = threading.Event(), threading.Event()

    class SlowQueues:
        def __init__(self, collection):
            self._collection = collection

        def find_one_and_update(self, *args, **kwargs):
            in_beat.set()
            time.sleep(1.0)
            answer = self._collection.find_one_and_update(*args, **kwargs)
            beat_returned.set()
            return answer

    class SlowDatabase:
        def __getitem__(self, name):
            return SlowQueues(mongo.database()[name])

    connections = iter([mongo.database()])
    with ClaimWatch(lambda: next(connections, SlowDatabase()), import_id, "r1"):
        assert in_beat.wait(5)
    assert not beat_returned.is_set()
    assert beat_returned.wait(5), "the beat under way still finishes"
    assert db[store.QUEUES].find_one({"_id": import_id})["heartbeat_at"] is not None
