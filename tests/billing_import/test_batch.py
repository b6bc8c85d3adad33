"""Small imports together: ``billing_import_sensor`` plans ``billing_import_batch`` runs, and each
import in one keeps its own claim, result, catalog event and one-import-per-account guarantee."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterRunStatus,
    build_sensor_context,
)

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import queue, tags
from stripe_crm_pipelines.billing_import.batch_job import billing_import_batch
from stripe_crm_pipelines.billing_import.sensor import billing_import_sensor
from stripe_crm_pipelines.billing_sync.job import billing_contact_sync
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from stripe_crm_pipelines.resources.import_batching import ImportBatchingResource
from tests.conftest import SECRET_KEY, add_account, add_request, import_result, run_import

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def tick(instance, mongo_uri, **batching):
    context = build_sensor_context(
        instance=instance,
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "import_batching": ImportBatchingResource(**batching),
        },
    )
    return billing_import_sensor.evaluate_tick(context)


def small_accounts(db, sandbox, sizes: list[int]) -> list[tuple[ObjectId, ObjectId, str]]:
    """One account per size, each with its own connected Stripe account, customers and a
    pending request; (account id, import id, Stripe account), newest request first."""
    made = []
    for index, size in enumerate(sizes):
        stripe_account = f"acct_batch{index}"
        sandbox.state.seed_customers(size, seed=index, account=stripe_account)
        account_id = add_account(db, stripe_account=stripe_account)
        import_id = add_request(db, account_id, created_at=NOW - timedelta(minutes=index))
        made.append((account_id, import_id, stripe_account))
    return made


def run_batch(mongo_uri, sandbox, instance, run_request):
    """Execute a batch run as the sensor asked for it (its config and tags)."""
    return billing_import_batch.execute_in_process(
        run_config=run_request.run_config,
        tags=run_request.tags,
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "stripe": StripeResource(api_base=sandbox.url, initial_retry_delay_seconds=0.01),
        },
        instance=instance,
        raise_on_error=False,
    )


def batch_metadata(result) -> dict:
    [output] = [
        event
        for event in result.events_for_node("import_requests")
        if event.event_type == DagsterEventType.STEP_OUTPUT
    ]
    return {key: value.value for key, value in output.step_output_data.metadata.items()}


def partition_events(instance, partition: str):
    return instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("crm_contacts"), asset_partitions=[partition]),
        limit=100,
    ).records


def test_small_requests_share_one_run_and_each_keeps_its_own_claim_result_and_event(
    db, contacts, mongo_uri, sandbox, instance
):
    accounts = small_accounts(db, sandbox, [3, 30, 0, 12, 100])

    [run_request] = tick(instance, mongo_uri).run_requests
    assert run_request.job_name == "billing_import_batch"
    assert run_request.run_config["ops"]["import_requests"]["config"]["import_ids"] == [
        str(import_id) for _, import_id, _ in accounts
    ]
    assert run_request.tags[tags.BATCH_SIZE] == "5"
    assert SECRET_KEY not in str(run_request)
    result = run_batch(mongo_uri, sandbox, instance, run_request)

    assert result.success
    for (account_id, import_id, stripe_account), size in zip(
        accounts, [3, 30, 0, 12, 100], strict=True
    ):
        request = db[store.QUEUES].find_one({"_id": import_id})
        assert (request["status"], request["in_progress"]) == ("completed", False)
        assert request["claimed_by_run"] == result.run_id
        document = import_result(db, import_id)
        assert (document["status"], document["run_id"]) == ("completed", result.run_id)
        assert document["customers_fetched"] == size
        assert document["records_added"] + document["duplicates"] == size
        stored = {
            contact["stripe_customer_id"]
            for contact in contacts.find({"parent_account": account_id, "type": "person"})
        }
        assert len(stored) == document["records_added"]
        assert stored <= {customer["id"] for customer in sandbox.state.customers(stripe_account)}
        [event] = partition_events(instance, str(account_id))
        materialization = event.asset_materialization
        assert materialization.metadata["import_id"].value == str(import_id)
        assert event.run_id == result.run_id
    metadata = batch_metadata(result)
    assert metadata["completed"] == 5
    assert [row.data["status"] for row in metadata["imports"].records] == ["completed"] * 5


def test_a_second_tick_does_not_plan_a_queued_batch_again_and_keys_are_stable(
    db, mongo_uri, sandbox, instance
):
    small_accounts(db, sandbox, [1, 1])
    [first] = tick(instance, mongo_uri).run_requests
    assert [r.run_key for r in tick(instance, mongo_uri).run_requests] == [first.run_key]

    instance.create_run_for_job(
        billing_import_batch,
        run_config=first.run_config,
        status=DagsterRunStatus.NOT_STARTED,
        tags=first.tags,
    )
    result = tick(instance, mongo_uri)
    assert result.run_requests == []
    assert "waits for its account or its batch run" in result.skip_message


def test_one_request_per_stripe_account_per_tick_and_busy_accounts_wait(
    db, mongo_uri, sandbox, instance
):
    [(busy_account, _, busy_stripe), (free_account, free_id, _)] = small_accounts(
        db, sandbox, [1, 1]
    )
    second_free = add_request(db, free_account, created_at=NOW - timedelta(hours=1))
    # A sync of the first account is running (tagged with its Stripe account).
    instance.create_run_for_job(
        billing_contact_sync,
        run_config={
            "ops": {"sync_billing_contacts": {"config": {"account_id": str(busy_account)}}}
        },
        status=DagsterRunStatus.STARTED,
        tags={tags.STRIPE_ACCOUNT: busy_stripe},
    )

    [run_request] = tick(instance, mongo_uri, min_requests=1).run_requests

    config = run_request.run_config["ops"]["import_requests"]["config"]
    assert config["import_ids"] == [str(free_id)]  # newest of the free account only
    assert str(second_free) not in config["import_ids"]


def test_an_account_with_a_claimed_request_waits(db, mongo_uri, sandbox, instance):
    [(account_id, claimed_id, _)] = small_accounts(db, sandbox, [1])
    waiting_id = add_request(db, account_id, created_at=NOW - timedelta(hours=1))
    running = instance.create_run_for_job(
        billing_import_batch,
        run_config={"ops": {"import_requests": {"config": {"import_ids": [str(claimed_id)]}}}},
        status=DagsterRunStatus.STARTED,
    )
    queue.claim(db, claimed_id, running.run_id)

    result = tick(instance, mongo_uri)

    assert result.run_requests == []
    request = db[store.QUEUES].find_one({"_id": waiting_id})
    assert request["status"] == "pending"


def test_known_large_accounts_and_handed_off_requests_get_runs_of_their_own(
    db, mongo_uri, sandbox, instance
):
    [(large, large_id, _), (_, handed_id, _), (_, small_id, _)] = small_accounts(
        db, sandbox, [0, 0, 0]
    )
    db[store.IMPORT_RESULTS].insert_one(
        {
            "name": "stripe",
            "status": "completed",
            "type": "person",
            "account_id": str(large),
            "customers_fetched": 5000,
            "started_at": NOW - timedelta(days=1),
        }
    )
    db[store.QUEUES].update_one({"_id": handed_id}, {"$set": {"own_run": True}})

    runs = tick(instance, mongo_uri, min_requests=1).run_requests

    by_job = {}
    for run in runs:
        by_job.setdefault(run.job_name, []).append(run)
    assert [r.tags[tags.IMPORT_ID] for r in by_job["billing_contact_import"]] == [
        str(large_id),
        str(handed_id),
    ]
    [batch_run] = by_job["billing_import_batch"]
    assert batch_run.run_config["ops"]["import_requests"]["config"]["import_ids"] == [str(small_id)]


def test_batches_hold_at_most_max_requests(db, mongo_uri, sandbox, instance):
    accounts = small_accounts(db, sandbox, [0] * 5)

    runs = tick(instance, mongo_uri, max_requests=2).run_requests

    assert [len(r.run_config["ops"]["import_requests"]["config"]["import_ids"]) for r in runs] == [
        2,
        2,
        1,
    ]
    assert len({r.run_key for r in runs}) == 3
    planned = [
        i for r in runs for i in r.run_config["ops"]["import_requests"]["config"]["import_ids"]
    ]
    assert planned == [str(import_id) for _, import_id, _ in accounts]


def test_a_lone_small_request_keeps_a_run_of_its_own(db, mongo_uri, sandbox, instance):
    [(_, import_id, _)] = small_accounts(db, sandbox, [3])

    [run] = tick(instance, mongo_uri).run_requests

    assert (run.job_name, run.tags[tags.IMPORT_ID]) == ("billing_contact_import", str(import_id))


def test_batching_off_gives_each_request_a_run_of_its_own(db, mongo_uri, sandbox, instance):
    small_accounts(db, sandbox, [0, 0])

    runs = tick(instance, mongo_uri, max_requests=0).run_requests

    assert [r.job_name for r in runs] == ["billing_contact_import"] * 2


def test_an_import_finding_its_account_busy_releases_the_request_untouched(
    db, contacts, mongo_uri, sandbox, instance
):
    [(account_id, import_id, stripe_account), (_, other_id, _)] = small_accounts(
        db, sandbox, [5, 5]
    )
    [run_request] = tick(instance, mongo_uri).run_requests
    # Between the tick and the batch's claim, a sync of the first account started.
    sync_run = instance.create_run_for_job(
        billing_contact_sync,
        run_config={"ops": {"sync_billing_contacts": {"config": {"account_id": str(account_id)}}}},
        status=DagsterRunStatus.STARTED,
        tags={tags.STRIPE_ACCOUNT: stripe_account},
    )

    result = run_batch(mongo_uri, sandbox, instance, run_request)

    assert result.success
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == ("pending", False)
    assert (queue.attempts_of(request), request["releases"]) == (0, 1)
    assert sync_run.run_id in request["last_released"]["reason"]
    assert db[store.IMPORT_RESULTS].count_documents({"import_id": import_id}) == 0
    assert contacts.count_documents({"parent_account": account_id}) == 0
    assert import_result(db, other_id)["status"] == "completed"
    # Once the sync has ended, the next tick asks for it again (alone now: a run of its own).
    instance.report_run_failed(sync_run)
    [again] = tick(instance, mongo_uri).run_requests
    assert (again.job_name, again.run_key) == ("billing_contact_import", f"{import_id}:0+1")


def test_a_run_of_its_own_releases_its_request_while_a_batch_holds_the_account(
    db, mongo_uri, sandbox, instance
):
    [(account_id, held_id, _)] = small_accounts(db, sandbox, [3])
    own_id = add_request(db, account_id, created_at=NOW - timedelta(hours=1))
    queue.claim(db, held_id, "batch-run")

    result = run_import(mongo_uri, sandbox, own_id, instance)

    assert not result.success
    request = db[store.QUEUES].find_one({"_id": own_id})
    assert (request["status"], request["in_progress"], queue.attempts_of(request)) == (
        "pending",
        False,
        0,
    )
    assert str(held_id) in request["last_released"]["reason"]
    assert queue.run_key(request) == f"{own_id}:0+1"


def test_a_large_account_is_handed_to_a_run_of_its_own_which_resumes(
    db, contacts, mongo_uri, sandbox, instance
):
    [(account_id, import_id, stripe_account)] = small_accounts(db, sandbox, [350])
    [run_request] = tick(
        instance, mongo_uri, small_account_customers=100, min_requests=1
    ).run_requests

    batch = run_batch(mongo_uri, sandbox, instance, run_request)

    assert batch.success
    assert batch_metadata(batch)["handed_off"] == 1
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["own_run"], queue.attempts_of(request)) == (
        "pending",
        True,
        0,
    )
    assert request["resume_from"]["outcome"]["customers_fetched"] == 100
    assert request["resume_from"]["outcome"]["records_added"] == contacts.count_documents(
        {"parent_account": account_id}
    )

    [own] = tick(instance, mongo_uri, small_account_customers=100).run_requests
    assert own.job_name == "billing_contact_import"
    assert run_import(mongo_uri, sandbox, import_id, instance).success

    document = import_result(db, import_id)
    assert document["customers_fetched"] == 350
    assert document["records_added"] + document["duplicates"] == 350
    stored = [c["stripe_customer_id"] for c in contacts.find({"parent_account": account_id})]
    assert len(stored) == len(set(stored)) == document["records_added"]
    assert set(stored) <= {customer["id"] for customer in sandbox.state.customers(stripe_account)}


def test_a_failed_import_fails_the_batch_run_after_the_others_complete(
    db, mongo_uri, sandbox, instance
):
    [(_, failing_id, failing_account), (_, fine_id, _)] = small_accounts(db, sandbox, [2, 2])
    sandbox.state.forbid_key(SECRET_KEY, account=failing_account)
    [run_request] = tick(instance, mongo_uri).run_requests

    result = run_batch(mongo_uri, sandbox, instance, run_request)

    assert not result.success
    failed = import_result(db, failing_id)
    assert failed["status"] == "failed"
    assert "billing key" in failed["error"]
    assert import_result(db, fine_id)["status"] == "completed"
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("1 of 2 import(s) failed")
    assert str(failing_id) in description
    assert SECRET_KEY not in description


def test_requests_a_dead_batch_run_held_are_all_queued_again(db, mongo_uri, sandbox, instance):
    from stripe_crm_pipelines.billing_import.sensor import recover_run

    accounts = small_accounts(db, sandbox, [0, 0])
    run = instance.create_run_for_job(
        billing_import_batch,
        status=DagsterRunStatus.FAILURE,
        run_config={
            "ops": {"import_requests": {"config": {"import_ids": [str(i) for _, i, _ in accounts]}}}
        },
    )
    for _, import_id, _ in accounts:
        queue.claim(db, import_id, run.run_id)

    message = recover_run(db, run, "Run failed: worker died")

    assert message is not None
    for _, import_id, _ in accounts:
        request = db[store.QUEUES].find_one({"_id": import_id})
        assert (request["status"], request["in_progress"]) == ("pending", False)
        assert request["failed_attempts"][0]["run_id"] == run.run_id


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (lambda _: "6b11-nope", "import_ids: '6b11-nope' is not an _id of `queues`"),
        (str, "import_ids: '{import_id}' given more than once"),
        (lambda import_id: str(import_id).upper(), "given more than once"),
    ],
    ids=["malformed", "repeated", "repeated-in-capitals"],
)
def test_a_batch_launched_with_a_bad_id_list_fails_naming_it_and_claims_nothing(
    db, mongo_uri, sandbox, instance, second, message
):
    [(_, import_id, _)] = small_accounts(db, sandbox, [3])
    import_ids = [str(import_id), second(import_id)]

    result = billing_import_batch.execute_in_process(
        run_config={"ops": {"import_requests": {"config": {"import_ids": import_ids}}}},
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "stripe": StripeResource(api_base=sandbox.url),
        },
        instance=instance,
        raise_on_error=False,
    )

    assert not result.success
    [failure] = [
        event for event in result.all_events if event.event_type == DagsterEventType.STEP_FAILURE
    ]
    error, messages = failure.step_failure_data.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    assert message.format(import_id=import_id) in "\n".join(messages)
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == ("pending", False)
    assert sandbox.state.requests() == []


def test_a_batch_given_two_requests_of_one_account_never_imports_both_at_once(
    db, mongo_uri, sandbox, instance
):
    sandbox.state.seed_customers(120, seed=5, account="acct_twice")
    account_id = add_account(db, stripe_account="acct_twice")
    first, second = add_request(db, account_id), add_request(db, account_id)

    result = billing_import_batch.execute_in_process(
        run_config={
            "ops": {
                "import_requests": {
                    "config": {"import_ids": [str(first), str(second)], "parallel_imports": 2}
                }
            }
        },
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "stripe": StripeResource(api_base=sandbox.url, initial_retry_delay_seconds=0.01),
        },
        instance=instance,
        raise_on_error=False,
    )

    assert result.success
    requests = [db[store.QUEUES].find_one({"_id": i}) for i in (first, second)]
    assert [r["status"] for r in requests].count("completed") <= 1
    for request in requests:
        if request["status"] != "completed":
            # Stepped back untouched, for a later run.
            assert (request["status"], request["in_progress"]) == ("pending", False)
            assert "claimed by another run, or by" in request["last_released"]["reason"]
            assert db[store.IMPORT_CHANGES].count_documents({"import_id": request["_id"]}) == 0


def test_an_import_that_fails_unexpectedly_in_a_batch_is_queued_again_and_the_others_complete(
    db, mongo_uri, sandbox, monkeypatch
):
    from pymongo.errors import AutoReconnect

    from stripe_crm_pipelines.billing_import import batch

    (_, broken, _), (_, fine, _) = small_accounts(db, sandbox, [3, 4])
    saved_checkpoint = queue.saved_checkpoint

    def store_fails_for_one(db_, import_id, run_id):
        if import_id == broken:
            raise AutoReconnect("connection reset")
        return saved_checkpoint(db_, import_id, run_id)

    monkeypatch.setattr(queue, "saved_checkpoint", store_fails_for_one)
    stripe = StripeResource(api_base=sandbox.url, initial_retry_delay_seconds=0.01)

    entries = batch.import_batch(
        [broken, fine],
        "batch-run-1",
        connect=MongoResource(uri=mongo_uri).database,
        stripe_client=stripe.client,
        busy=lambda db_, claim: None,
    )

    assert [entry.status for entry in entries] == ["failed", "completed"]
    request = db[store.QUEUES].find_one({"_id": broken})
    # Not left claimed without a heartbeat, which would have the whole run taken for dead.
    assert (request["status"], request["in_progress"]) == ("pending", False)
    assert "AutoReconnect: connection reset" in request["last_error"]
    assert request["failed_attempts"][0]["run_id"] == "batch-run-1"
    assert import_result(db, fine)["status"] == "completed"


def test_a_silent_import_does_not_fail_a_batch_run_whose_other_imports_beat(db, instance):
    from stripe_crm_pipelines.billing_import import recovery
    from stripe_crm_pipelines.billing_import.sensor import recover_stale_claims

    silent = add_request(db, add_account(db, stripe_account="acct_silent"))
    alive = add_request(db, add_account(db, stripe_account="acct_alive"))
    run = instance.create_run_for_job(
        billing_import_batch,
        status=DagsterRunStatus.STARTED,
        run_config={
            "ops": {"import_requests": {"config": {"import_ids": [str(silent), str(alive)]}}}
        },
    )
    queue.claim(db, silent, run.run_id)
    queue.claim(db, alive, run.run_id)
    now = datetime.now(UTC)
    long_ago = now - timedelta(seconds=recovery.STALE_AFTER_SECONDS + 30)
    db[store.QUEUES].update_one(
        {"_id": silent}, {"$set": {"claimed_at": long_ago, "heartbeat_at": long_ago}}
    )
    db[store.QUEUES].update_one({"_id": alive}, {"$set": {"heartbeat_at": now}})

    [message] = recover_stale_claims(db, instance, now)

    assert message.startswith(f"Import request {silent} queued again")
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
    live = db[store.QUEUES].find_one({"_id": alive})
    assert (live["in_progress"], live["claimed_by_run"]) == (True, run.run_id)
    assert db[store.QUEUES].find_one({"_id": silent})["status"] == "pending"
