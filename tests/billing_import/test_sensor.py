"""``billing_import_sensor``: which requests get runs, with which keys, tags and config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId
from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    build_sensor_context,
)

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import queue, tags
from stripe_crm_pipelines.billing_import.batch_job import billing_import_batch
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.billing_import.sensor import (
    SENSOR_INTERVAL_VARIABLE,
    billing_import_sensor,
    import_sensor_interval_seconds,
)
from stripe_crm_pipelines.definitions import defs
from stripe_crm_pipelines.resources import MongoResource
from stripe_crm_pipelines.resources.import_batching import ImportBatchingResource
from tests.conftest import (
    CONNECTED_ACCOUNT,
    SECRET_KEY,
    add_account,
    add_request,
    import_result,
    run_failure_message,
    run_import,
)

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def evaluate(instance, mongo_uri, batch_max: int = 0):
    """One tick; ``batch_max`` 0 gives every request a run of its own (tested here)."""
    context = build_sensor_context(
        instance=instance,
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "import_batching": ImportBatchingResource(max_requests=batch_max),
        },
    )
    return billing_import_sensor.evaluate_tick(context)


def test_one_run_per_pending_request_newest_first(db, mongo_uri, instance):
    account_id = add_account(db)
    oldest = add_request(db, account_id, created_at=NOW - timedelta(hours=2))
    newest = add_request(db, account_id, created_at=NOW)
    middle = add_request(db, account_id, created_at=NOW - timedelta(hours=1))

    result = evaluate(instance, mongo_uri)

    assert [run.tags[tags.IMPORT_ID] for run in result.run_requests] == [
        str(newest),
        str(middle),
        str(oldest),
    ]
    assert [run.run_key for run in result.run_requests] == [
        f"{newest}:0",
        f"{middle}:0",
        f"{oldest}:0",
    ]


def test_run_request_config_and_tags(db, mongo_uri, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id, import_type="companies")
    request = db[store.QUEUES].find_one({"_id": import_id})

    [run] = evaluate(instance, mongo_uri).run_requests

    assert run.run_config == {
        "ops": {"claim_import_request": {"config": {"import_id": str(import_id)}}}
    }
    assert {key: value for key, value in run.tags.items() if key.startswith("stripe_crm/")} == {
        tags.IMPORT_ID: str(import_id),
        tags.ACCOUNT_ID: str(account_id),
        tags.IMPORT_TYPE: "companies",
        tags.USER_ID: str(request["user_id"]),
        tags.STRIPE_ACCOUNT: CONNECTED_ACCOUNT,
    }
    assert SECRET_KEY not in json.dumps([run.run_config, run.tags])


def test_the_run_key_changes_with_each_attempt(db, mongo_uri, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id, attempts=2)

    [run] = evaluate(instance, mongo_uri).run_requests

    assert run.run_key == f"{import_id}:2"


def ended_before_claiming(instance, run_request, status=DagsterRunStatus.CANCELED):
    """A run launched for ``run_request`` that ended without claiming, as after a terminate
    while it was queued."""
    return instance.create_run_for_job(
        billing_import_batch
        if run_request.job_name == billing_import_batch.name
        else billing_contact_import,
        run_config=run_request.run_config,
        status=status,
        tags={**run_request.tags, "dagster/run_key": run_request.run_key},
    )


def test_a_request_whose_run_ended_before_claiming_it_is_launched_again(db, mongo_uri, instance):
    import_id = add_request(db, add_account(db))
    [first] = evaluate(instance, mongo_uri).run_requests
    run = ended_before_claiming(instance, first)

    assert evaluate(instance, mongo_uri).run_requests == []
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert request["status"] == "pending"
    assert (
        request["last_error"] == f"Run {run.run_id} ended (CANCELED) before it claimed the request"
    )
    [second] = evaluate(instance, mongo_uri).run_requests
    assert second.run_key == f"{import_id}:0+1"


def test_a_request_whose_runs_keep_ending_before_claiming_it_is_failed_with_the_reason(
    db, mongo_uri, instance
):
    import_id = add_request(db, add_account(db))
    for _ in range(queue.MAX_UNCLAIMED_RUNS):
        [run_request] = evaluate(instance, mongo_uri).run_requests
        run = ended_before_claiming(instance, run_request, DagsterRunStatus.FAILURE)
        evaluate(instance, mongo_uri)

    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == ("failed", False)
    assert [entry["status"] for entry in request["unclaimed_runs"]] == ["FAILURE"] * 3
    assert request["unclaimed_runs"][-1]["run_id"] == run.run_id
    assert request["error"] == (
        f"Run {run.run_id} ended (FAILURE) before it claimed the request; gave up after 3 runs "
        "that ended before claiming it"
    )
    result = import_result(db, import_id)
    assert (result["status"], result["error"]) == ("failed", request["error"])
    assert evaluate(instance, mongo_uri).skip_message == "No pending billing contact imports"


def test_small_requests_whose_batch_run_ended_before_claiming_them_are_launched_again(
    db, mongo_uri, instance
):
    ids = [add_request(db, add_account(db, stripe_account=f"acct_{n}")) for n in range(2)]
    [batch] = evaluate(instance, mongo_uri, batch_max=200).run_requests
    assert batch.job_name == billing_import_batch.name
    ended_before_claiming(instance, batch)

    assert evaluate(instance, mongo_uri, batch_max=200).run_requests == []
    requests = list(db[store.QUEUES].find({"_id": {"$in": ids}}))
    assert [(r["status"], r["releases"]) for r in requests] == [("pending", 1), ("pending", 1)]
    [again] = evaluate(instance, mongo_uri, batch_max=200).run_requests
    assert again.run_key != batch.run_key


def test_only_pending_billing_requests_not_in_progress_get_runs(db, mongo_uri, instance):
    account_id = add_account(db)
    wanted = add_request(db, account_id)
    add_request(db, account_id, in_progress=True)
    add_request(db, account_id, status="completed")
    add_request(db, account_id, status="failed")
    add_request(db, account_id, source="csv-contacts")

    result = evaluate(instance, mongo_uri)

    assert [run.tags[tags.IMPORT_ID] for run in result.run_requests] == [str(wanted)]


def test_an_account_without_billing_key_waits_while_others_launch(db, mongo_uri, instance, capfd):
    with_key = add_account(db)
    without_key = add_account(db, secret_key=None)
    other_app = add_account(db, connected_apps=("payments",))
    launched = add_request(db, with_key, created_at=NOW - timedelta(minutes=5))
    waiting = add_request(db, without_key, created_at=NOW)
    waiting_too = add_request(db, other_app, created_at=NOW - timedelta(minutes=1))
    before = list(db[store.QUEUES].find({}))

    result = evaluate(instance, mongo_uri)

    assert [run.tags[tags.IMPORT_ID] for run in result.run_requests] == [str(launched)]
    assert list(db[store.QUEUES].find({})) == before
    logged = capfd.readouterr().err
    assert f"{waiting} (account {without_key})" in logged
    assert f"{waiting_too} (account {other_app})" in logged


def test_the_tick_names_requests_waiting_for_a_key(db, mongo_uri, instance):
    account_id = add_account(db, secret_key=None)
    import_id = add_request(db, account_id)

    result = evaluate(instance, mongo_uri)

    assert result.run_requests == []
    assert str(import_id) in result.skip_message
    assert str(account_id) in result.skip_message
    assert "No billing Stripe key" in result.skip_message


def test_nothing_pending_is_a_skip(db, mongo_uri, instance):
    result = evaluate(instance, mongo_uri)
    assert result.run_requests == []
    assert result.skip_message == "No pending billing contact imports"


def test_a_billing_key_inside_connected_apps_or_as_a_string_counts(db, mongo_uri, instance):
    in_array = add_account(db, connected_apps=("crm", "billing"))
    as_string = add_account(db)
    db[store.STRIPE_KEYS].update_one(
        {"account_id": as_string}, {"$set": {"connected_apps": "billing"}}
    )
    add_request(db, in_array)
    add_request(db, as_string)

    assert len(evaluate(instance, mongo_uri).run_requests) == 2


def test_a_malformed_request_gets_a_run_that_fails_it(db, mongo_uri, stripe_sandbox, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id, import_type="deals")

    [run] = evaluate(instance, mongo_uri).run_requests
    result = run_import(mongo_uri, stripe_sandbox, import_id, instance)

    assert run.tags[tags.IMPORT_TYPE] == "deals"
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == ("failed", False)
    assert "type: 'deals'" in request["error"] == run_failure_message(result)
    assert import_result(db, import_id)["status"] == "failed"


def test_a_launched_request_is_not_requested_again_once_claimed(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_1", email="a@example.com")
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    assert len(evaluate(instance, mongo_uri).run_requests) == 1

    assert run_import(mongo_uri, stripe_sandbox, import_id, instance).success

    assert evaluate(instance, mongo_uri).run_requests == []


def test_definitions_hold_the_jobs_and_a_running_sensor():
    sensor = defs.resolve_sensor_def("billing_import_sensor")
    assert {target.job_name for target in sensor.targets} == {
        defs.resolve_job_def("billing_contact_import").name,
        defs.resolve_job_def("billing_import_batch").name,
    }
    assert sensor.minimum_interval_seconds == 30
    assert sensor.default_status == DefaultSensorStatus.RUNNING


@pytest.mark.parametrize(("value", "seconds"), [(None, 30), ("", 30), ("5", 5), (" 120 ", 120)])
def test_the_sensor_interval_is_30_s_unless_its_variable_says(value, seconds):
    environ = {} if value is None else {SENSOR_INTERVAL_VARIABLE: value}
    assert import_sensor_interval_seconds(environ) == seconds


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "soon"])
def test_a_bad_sensor_interval_is_refused_naming_the_variable(value):
    with pytest.raises(ValueError, match=rf"{SENSOR_INTERVAL_VARIABLE} .*got '{value}'"):
        import_sensor_interval_seconds({SENSOR_INTERVAL_VARIABLE: value})


def test_the_definitions_give_the_sensor_the_interval_of_the_variable():
    code = (
        "from stripe_crm_pipelines.definitions import defs; "
        "print(defs.resolve_sensor_def('billing_import_sensor').minimum_interval_seconds)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, SENSOR_INTERVAL_VARIABLE: "7"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip() == "7"


@pytest.mark.parametrize(
    ("run_status", "request_status"),
    [(DagsterRunStatus.FAILURE, "failed"), (DagsterRunStatus.CANCELED, "cancelled")],
)
def test_a_request_left_claimed_by_an_ended_run_is_closed(
    db, mongo_uri, instance, run_status, request_status
):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    run = instance.create_run_for_job(
        billing_contact_import,
        run_config={"ops": {"claim_import_request": {"config": {"import_id": str(import_id)}}}},
        status=run_status,
    )
    checkpoint = {"run_id": run.run_id, "cursor": "cus_x", "created_lte": 1, "outcome": {
        "import_id": str(import_id), "account_id": str(account_id), "user_id": str(ObjectId()),
        "contact_type": "person", "started_at": NOW, "records_added": 100,
        "customers_fetched": 100, "pages_fetched": 1,
    }}  # fmt: skip
    # The last of its three attempts: a failed run is not queued again (tests/reliability).
    db[store.QUEUES].update_one(
        {"_id": import_id},
        {"$set": {"in_progress": True, "claimed_by_run": run.run_id, "checkpoint": checkpoint,
                  "attempts": 3}},
    )  # fmt: skip
    still_running = add_request(db, account_id)
    running = instance.create_run_for_job(billing_contact_import, run_config={
        "ops": {"claim_import_request": {"config": {"import_id": str(still_running)}}}
    }, status=DagsterRunStatus.STARTED)  # fmt: skip
    db[store.QUEUES].update_one(
        {"_id": still_running}, {"$set": {"in_progress": True, "claimed_by_run": running.run_id}}
    )
    result = evaluate(instance, mongo_uri)

    assert result.run_requests == []
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == (request_status, False)
    assert run.run_id in request["error"]
    document = import_result(db, import_id)
    assert (document["status"], document["records_added"]) == (request_status, 100)
    assert request["result_id"] == document["_id"]
    assert db[store.QUEUES].find_one({"_id": still_running})["in_progress"] is True
