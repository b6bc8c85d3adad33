"""``billing_contact_sync`` and ``billing_sync_sensor`` in Dagster: runs, tags, the catalog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId
from dagster import (
    AssetCheckKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    SensorResult,
    SkipReason,
    build_sensor_context,
)
from pymongo.errors import AutoReconnect

from stripe_crm_pipelines import catalog, store
from stripe_crm_pipelines.billing_import import queue, tags
from stripe_crm_pipelines.billing_sync import syncer
from stripe_crm_pipelines.billing_sync.job import billing_contact_sync
from stripe_crm_pipelines.billing_sync.sensor import billing_sync_sensor
from stripe_crm_pipelines.billing_sync.state import (
    SYNC_STATE,
    EventsCursor,
    load_sync_state,
    record_full_import,
    set_enabled,
    start_sync_attempt,
)
from stripe_crm_pipelines.catalog import (
    ACCOUNT_PARTITIONS,
    CRM_CONTACTS,
    FETCHED_HAVE_CONTACTS,
    UNIQUE_EMAILS,
    UNIQUE_STRIPE_IDS,
)
from stripe_crm_pipelines.definitions import defs
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from tests.billing_import.test_job import (
    CONNECTED_ACCOUNT,
    SECRET_KEY,
    add_account,
    add_request,
    everything_recorded,
    run_failure_message,
)
from tests.billing_sync.test_syncer import contact_of, keep_in_sync


def fail_first_call(monkeypatch, module, name: str) -> list[int]:
    """Make ``module.name`` raise AutoReconnect (a store stepping down) on its first call only;
    the list of calls made."""
    real, calls = getattr(module, name), []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise AutoReconnect("primary stepped down")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, fails_once)
    return calls


def run_sync_job(mongo_uri, sandbox, account_id, instance, import_type="contacts"):
    return billing_contact_sync.execute_in_process(
        run_config={
            "ops": {
                "sync_billing_contacts": {
                    "config": {"account_id": str(account_id), "import_type": import_type}
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


def check_evaluations(instance, partition: str) -> dict[str, bool]:
    evaluations = {}
    for name in (UNIQUE_STRIPE_IDS, UNIQUE_EMAILS, FETCHED_HAVE_CONTACTS):
        records = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(CRM_CONTACTS, name), limit=10
        )
        for record in records:
            if record.partition == partition:
                evaluation = record.event.dagster_event.event_specific_data
                evaluations[name] = evaluation.passed
                break
    return evaluations


# --- the job ----------------------------------------------------------------------------------


def test_a_sync_run_applies_changes_and_records_the_account_in_the_catalog(
    db, mongo_uri, stripe_sandbox, instance, stripe_client_factory
):
    ada = stripe_sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, stripe_sandbox, instance)
    stripe_client_factory(CONNECTED_ACCOUNT).v1.customers.update(
        ada["id"], params={"address": {"city": "Porto"}}
    )

    result = run_sync_job(mongo_uri, stripe_sandbox, account_id, instance)

    assert result.success
    assert contact_of(db, ada["id"])["address"]["city"] == "Porto"
    partition = str(account_id)
    assert instance.has_dynamic_partition(ACCOUNT_PARTITIONS.name, partition)
    materialization = instance.get_latest_materialization_event(CRM_CONTACTS)
    assert materialization.dagster_event.partition == partition
    recorded = materialization.asset_materialization.metadata
    assert recorded["records_updated"].value == 1 and recorded["stripe_requests"].value == 1
    assert check_evaluations(instance, partition) == {
        UNIQUE_STRIPE_IDS: True,
        UNIQUE_EMAILS: True,
        FETCHED_HAVE_CONTACTS: True,
    }
    [output] = [
        event
        for event in result.events_for_node("sync_billing_contacts")
        if event.event_type == DagsterEventType.STEP_OUTPUT
    ]
    metadata = {key: value.value for key, value in output.step_output_data.metadata.items()}
    assert (metadata["events_read"], metadata["status"]) == (1, "completed")
    assert SECRET_KEY not in everything_recorded(instance, result.run_id)


def test_a_sync_leaves_its_cursor_while_an_import_of_the_account_is_claimed(
    db, mongo_uri, stripe_sandbox, instance, stripe_client_factory
):
    ada = stripe_sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, stripe_sandbox, instance)
    stripe_client_factory(CONNECTED_ACCOUNT).v1.customers.update(
        ada["id"], params={"address": {"city": "Porto"}}
    )
    cursor_before = load_sync_state(db, account_id, "person").events_cursor
    import_id = add_request(db, account_id)
    queue.claim(db, import_id, "a-batch-run")

    result = run_sync_job(mongo_uri, stripe_sandbox, account_id, instance)

    assert result.success
    [output] = [
        event
        for event in result.events_for_node("sync_billing_contacts")
        if event.event_type == DagsterEventType.STEP_OUTPUT
    ]
    metadata = {key: value.value for key, value in output.step_output_data.metadata.items()}
    assert metadata["status"] == "deferred"
    assert str(import_id) in metadata["deferred_by"]
    assert load_sync_state(db, account_id, "person").events_cursor == cursor_before
    assert "address" not in contact_of(db, ada["id"]) or (
        contact_of(db, ada["id"])["address"].get("city") != "Porto"
    )


def test_checks_fail_for_contacts_that_share_an_email_or_a_stripe_id(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, stripe_sandbox, instance)
    contact = db[store.CONTACTS].find_one({}, {"_id": 0})
    db[store.CONTACTS].insert_one(dict(contact))  # a copy another tool made

    assert run_sync_job(mongo_uri, stripe_sandbox, account_id, instance).success

    assert check_evaluations(instance, str(account_id)) == {
        UNIQUE_STRIPE_IDS: False,
        UNIQUE_EMAILS: False,
        FETCHED_HAVE_CONTACTS: True,
    }


def test_a_revoked_key_fails_the_run_with_the_reason_and_the_state_says_so(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, stripe_sandbox, instance)
    stripe_sandbox.state.forbid_key(SECRET_KEY)

    result = run_sync_job(mongo_uri, stripe_sandbox, account_id, instance)

    assert not result.success
    message = run_failure_message(result)
    assert message.startswith("Stripe rejected the account's billing key")
    assert load_sync_state(db, account_id, "person").last_error == message
    assert SECRET_KEY not in everything_recorded(instance, result.run_id)

    db[store.STRIPE_KEYS].delete_many({"account_id": account_id})  # disconnected in the CRM
    again = run_sync_job(mongo_uri, stripe_sandbox, account_id, instance)
    assert not again.success
    assert "has no Stripe key connected for billing" in run_failure_message(again)
    assert "no Stripe key" in load_sync_state(db, account_id, "person").last_error


def test_a_run_without_a_sync_state_fails_with_the_reason(db, mongo_uri, stripe_sandbox, instance):
    account_id = add_account(db)

    result = run_sync_job(mongo_uri, stripe_sandbox, account_id, instance, "companies")

    assert not result.success
    assert "has no sync state for companies" in run_failure_message(result)


def test_a_stale_cursor_queues_a_resync_and_the_run_says_so(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, stripe_sandbox, instance)
    stripe_sandbox.state.advance_clock(31 * 24 * 3600)

    result = run_sync_job(mongo_uri, stripe_sandbox, account_id, instance)

    assert result.success
    state = load_sync_state(db, account_id, "person")
    resync = db[store.QUEUES].find_one({"_id": state.resync_import_id})
    assert (resync["status"], resync["reason"], resync["keep_in_sync"]) == (
        "pending", "resync", True,
    )  # fmt: skip


def test_a_sync_launched_by_hand_is_tagged_and_defers_to_a_run_of_its_stripe_account(
    db, mongo_uri, stripe_sandbox, instance, stripe_client_factory
):
    ada = stripe_sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, stripe_sandbox, instance)
    cursor = load_sync_state(db, account_id, "person").events_cursor
    stripe_client_factory(CONNECTED_ACCOUNT).v1.customers.update(
        ada["id"], params={"address": {"city": "Porto"}}
    )
    # A run the queue keeps apart by this tag, started (say, an import of the account).
    busy = instance.create_run_for_job(
        billing_contact_sync,
        run_config={"ops": {"sync_billing_contacts": {"config": {"account_id": str(account_id)}}}},
        status=DagsterRunStatus.STARTED,
        tags={tags.STRIPE_ACCOUNT: CONNECTED_ACCOUNT},
    )

    # Launched from the Launchpad with only its config: no tags.
    result = run_sync_job(mongo_uri, stripe_sandbox, account_id, instance)

    assert result.success
    run = instance.get_run_by_id(result.run_id)
    assert run.tags[tags.STRIPE_ACCOUNT] == CONNECTED_ACCOUNT
    assert run.tags[tags.ACCOUNT_ID] == str(account_id)
    [output] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_OUTPUT]
    metadata = output.step_output_data.metadata
    assert metadata["status"].value == "deferred"
    assert busy.run_id in metadata["deferred_by"].value
    assert load_sync_state(db, account_id, "person").events_cursor == cursor
    assert contact_of(db, ada["id"]).get("address", {}).get("city") != "Porto"


# --- the sensor -------------------------------------------------------------------------------


def add_state(db, *, stripe_account: str = CONNECTED_ACCOUNT, **fields) -> ObjectId:
    account_id = add_account(db, stripe_account=stripe_account)
    record_full_import(
        db,
        account_id=account_id,
        import_type="contacts",
        user_id=ObjectId(),
        mappings={},
        new_contact=True,
        deletion_policy="keep",
        events_cursor=EventsCursor(None, 1_700_000_000),
        finished_at=datetime.now(UTC),
    )
    if fields:
        db[SYNC_STATE].update_one({"account_id": account_id}, {"$set": fields})
    return account_id


def evaluate(mongo_uri, instance=None):
    instance = instance or DagsterInstance.ephemeral()
    context = build_sensor_context(
        instance=instance, resources={"mongo": MongoResource(uri=mongo_uri)}
    )
    return billing_sync_sensor(context)


def test_the_sensor_launches_due_syncs_tagged_like_imports(db, mongo_uri):
    now = datetime.now(UTC)
    due = add_state(db)
    stale = add_state(db, stripe_account="acct_2Other", last_synced_at=now - timedelta(seconds=301))
    add_state(db, stripe_account="acct_3Fresh", last_synced_at=now - timedelta(seconds=10))
    add_state(db, stripe_account="acct_4Paused", enabled=False)
    add_state(db, stripe_account="acct_5Resync", resync_import_id=ObjectId())
    add_state(
        db,
        stripe_account="acct_6Slow",
        last_synced_at=now - timedelta(seconds=400),
        sync_interval_seconds=3600,
    )
    tried = add_state(db, stripe_account="acct_7Tried", last_attempt_at=now - timedelta(seconds=30))

    result = evaluate(mongo_uri)

    assert isinstance(result, SensorResult)
    by_account = {run.tags[tags.ACCOUNT_ID]: run for run in result.run_requests}
    assert set(by_account) == {str(due), str(stale)}
    run = by_account[str(due)]
    state = load_sync_state(db, due, "person")
    assert run.tags == {
        tags.ACCOUNT_ID: str(due),
        tags.IMPORT_TYPE: "contacts",
        tags.USER_ID: str(state.user_id),
        tags.STRIPE_ACCOUNT: CONNECTED_ACCOUNT,
    }
    assert run.run_key == f"sync:{state.id}:0"
    assert run.run_config == {
        "ops": {
            "sync_billing_contacts": {"config": {"account_id": str(due), "import_type": "contacts"}}
        }
    }
    [partitions] = result.dynamic_partitions_requests
    assert partitions.partitions_def_name == ACCOUNT_PARTITIONS.name
    assert sorted(partitions.partition_keys) == sorted([str(due), str(stale)])
    assert str(tried) not in by_account


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sync_interval_seconds", "10m", "sync_interval_seconds must be a number of seconds"),
        ("sync_interval_seconds", 0.5, "sync_interval_seconds must be a number of seconds"),
        ("type", "contacts", "type must be 'person' or 'business', not 'contacts'"),
        ("last_synced_at", "yesterday", "last_synced_at must be a date, not 'yesterday'"),
        ("enabled", "false", "enabled must be true or false, not 'false'"),
        ("events_cursor", None, "events_cursor must be a document, not None"),
        ("user_id", None, "field 'user_id' is missing"),
    ],
)
def test_a_state_edited_badly_is_skipped_with_its_reason_and_the_others_sync(
    db, mongo_uri, field, value, message
):
    good = add_state(db)
    bad = add_state(db, stripe_account="acct_2Edited")
    if value is None and field == "user_id":
        db[SYNC_STATE].update_one({"account_id": bad}, {"$unset": {field: ""}})
    else:
        db[SYNC_STATE].update_one({"account_id": bad}, {"$set": {field: value}})

    result = evaluate(mongo_uri)

    assert [run.tags[tags.ACCOUNT_ID] for run in result.run_requests] == [str(good)]
    saved = db[SYNC_STATE].find_one({"account_id": bad})
    assert message in saved["last_error"]
    assert saved["last_error"].startswith(f"Sync state {saved['_id']}: ")


def test_a_started_sync_is_not_due_again_and_its_next_attempt_gets_a_new_run_key(db, mongo_uri):
    account_id = add_state(db)
    state = load_sync_state(db, account_id, "person")
    first = evaluate(mongo_uri).run_requests[0].run_key

    start_sync_attempt(db, state.id, "run-1", datetime.now(UTC))
    assert isinstance(evaluate(mongo_uri), SkipReason)

    db[SYNC_STATE].update_one(
        {"_id": state.id}, {"$set": {"last_attempt_at": datetime.now(UTC) - timedelta(hours=1)}}
    )
    second = evaluate(mongo_uri).run_requests[0].run_key
    assert (first, second) == (f"sync:{state.id}:0", f"sync:{state.id}:1")


def test_a_sync_run_that_ended_before_starting_is_counted_and_launched_again_when_due(
    db, mongo_uri
):
    account_id = add_state(db)
    state = load_sync_state(db, account_id, "person")
    instance = DagsterInstance.ephemeral()
    [first] = evaluate(mongo_uri, instance).run_requests
    # Terminated while queued: the op never counted its attempt, so the state keeps the key.
    instance.create_run_for_job(
        billing_contact_sync,
        run_config=first.run_config,
        status=DagsterRunStatus.CANCELED,
        tags={**first.tags, "dagster/run_key": first.run_key},
    )

    result = evaluate(mongo_uri, instance)

    assert result.run_requests == []
    after = load_sync_state(db, account_id, "person")
    assert after.attempts == 1
    stored = db[SYNC_STATE].find_one({"_id": state.id})
    assert "ended (CANCELED) before it started the sync" in stored["last_error"]
    # Due again after its interval, under a key of its own.
    db[SYNC_STATE].update_one(
        {"_id": state.id}, {"$set": {"last_attempt_at": datetime.now(UTC) - timedelta(hours=1)}}
    )
    [second] = evaluate(mongo_uri, instance).run_requests
    assert second.run_key == f"sync:{state.id}:1"


def test_a_paused_state_is_skipped_until_resumed(db, mongo_uri):
    account_id = add_state(db)
    set_enabled(db, account_id, "person", False)

    assert isinstance(evaluate(mongo_uri), SkipReason)
    set_enabled(db, account_id, "person", True)
    assert len(evaluate(mongo_uri).run_requests) == 1


def test_definitions_hold_the_sync_the_sensor_and_the_catalog():
    repository = defs.get_repository_def()
    assert repository.get_job("billing_contact_sync")
    sensor = repository.get_sensor_def("billing_sync_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.job_name == "billing_contact_sync"
    assert CRM_CONTACTS in repository.asset_graph.get_all_asset_keys()
    check_keys = {key.name for key in repository.asset_graph.asset_check_keys}
    assert {UNIQUE_STRIPE_IDS, UNIQUE_EMAILS, FETCHED_HAVE_CONTACTS} <= check_keys


def test_the_uniqueness_checks_can_be_executed_for_every_account(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    clean = keep_in_sync(db, mongo_uri, stripe_sandbox, instance)
    stripe_sandbox.state.add_customer("acct_2Copied", email="bob@example.com")
    copied = keep_in_sync(db, mongo_uri, stripe_sandbox, instance, stripe_account="acct_2Copied")
    contact = db[store.CONTACTS].find_one({"parent_account": copied}, {"_id": 0})
    db[store.CONTACTS].insert_one(dict(contact))
    instance.add_dynamic_partitions(ACCOUNT_PARTITIONS.name, [str(clean), str(copied)])
    checks = {
        AssetCheckKey(CRM_CONTACTS, UNIQUE_STRIPE_IDS),
        AssetCheckKey(CRM_CONTACTS, UNIQUE_EMAILS),
    }
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_check_selection=checks, asset_selection=set()
    )

    result = job.execute_in_process(
        instance=instance, resources={"mongo": MongoResource(uri=mongo_uri)}
    )

    assert result.success
    assert check_evaluations(instance, str(clean)) == {UNIQUE_STRIPE_IDS: True, UNIQUE_EMAILS: True}
    assert check_evaluations(instance, str(copied)) == {
        UNIQUE_STRIPE_IDS: False,
        UNIQUE_EMAILS: False,
    }


def test_a_state_whose_account_lost_its_key_still_gets_a_run_to_say_so(db, mongo_uri):
    account_id = add_state(db)
    db[store.STRIPE_KEYS].delete_many({"account_id": account_id})

    [run] = evaluate(mongo_uri).run_requests

    assert run.tags[tags.STRIPE_ACCOUNT] == "none"


def test_a_retry_after_the_cursor_moved_records_the_sync_it_made_not_an_empty_one(
    db, mongo_uri, sandbox, instance, stripe_client_factory, monkeypatch
):
    ada = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    stripe_client_factory(CONNECTED_ACCOUNT).v1.customers.update(
        ada["id"], params={"address": {"city": "Porto"}}
    )
    # The store steps down while the run records its partition, after the cursor moved.
    calls = fail_first_call(monkeypatch, catalog, "uniqueness_checks")

    result = run_sync_job(mongo_uri, sandbox, account_id, instance)

    assert result.success and len(calls) == 2
    assert db[store.CONTACTS].find_one({"stripe_customer_id": ada["id"]})["address"]["city"] == (
        "Porto"
    )
    [saved] = db[store.IMPORT_RESULTS].find({"name": "stripe-sync", "run_id": result.run_id})
    assert (saved["events_read"], saved["records_updated"]) == (1, 1)
    materialized = result.asset_materializations_for_node("sync_billing_contacts")
    assert [m.metadata["records_updated"].value for m in materialized] == [1]


def test_a_result_that_could_not_be_saved_leaves_the_cursor_for_the_retry(
    db, mongo_uri, sandbox, instance, stripe_client_factory, monkeypatch
):
    ada = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    stripe_client_factory(CONNECTED_ACCOUNT).v1.customers.update(
        ada["id"], params={"address": {"city": "Porto"}}
    )
    fail_first_call(monkeypatch, syncer, "finish")

    result = run_sync_job(mongo_uri, sandbox, account_id, instance)

    assert result.success
    [saved] = db[store.IMPORT_RESULTS].find({"name": "stripe-sync", "run_id": result.run_id})
    # The retry read the event again: the cursor had not moved without the result.
    assert (saved["status"], saved["events_read"]) == ("completed", 1)
    assert contact_of(db, ada["id"])["address"]["city"] == "Porto"
