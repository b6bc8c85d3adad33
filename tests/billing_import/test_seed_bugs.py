"""The seed's "Code Quality Issues" 1 to 8, each shown fixed."""

from __future__ import annotations

from dagster import build_sensor_context

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import tags
from stripe_crm_pipelines.billing_import.sensor import billing_import_sensor
from stripe_crm_pipelines.resources import MongoResource
from stripe_crm_pipelines.resources.import_batching import ImportBatchingResource
from tests.conftest import (
    CONNECTED_ACCOUNT,
    SEED_MAPPINGS,
    add_account,
    add_request,
    enforce_unique_contacts,
    import_result,
    op_metadata,
    run_import,
)


def test_bug_1_a_missing_key_skips_only_that_request(db, mongo_uri, instance):
    with_key = add_account(db)
    without_key = add_account(db, secret_key=None)
    skipped = add_request(db, without_key)
    launched = [add_request(db, with_key), add_request(db, with_key)]
    before = list(db[store.QUEUES].find({}))

    result = billing_import_sensor.evaluate_tick(
        build_sensor_context(
            instance=instance,
            resources={
                "mongo": MongoResource(uri=mongo_uri),
                # A run per request, so each launched request shows in the tags.
                "import_batching": ImportBatchingResource(max_requests=0),
            },
        )
    )

    assert {run.tags[tags.IMPORT_ID] for run in result.run_requests} == {
        str(import_id) for import_id in launched
    }
    assert str(skipped) not in {run.tags[tags.IMPORT_ID] for run in result.run_requests}
    assert list(db[store.QUEUES].find({})) == before, "the sensor changes no request"


def test_bug_2_the_result_of_a_finished_import_is_completed(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.seed_customers(3, account=CONNECTED_ACCOUNT)
    import_id = add_request(db, add_account(db))

    assert run_import(mongo_uri, stripe_sandbox, import_id, instance).success

    assert import_result(db, import_id)["status"] == "completed"
    assert db[store.QUEUES].find_one({"_id": import_id})["status"] == "completed"


def test_bug_3_logs_go_through_dagster(db, mongo_uri, stripe_sandbox, instance, capsys):
    stripe_sandbox.state.seed_customers(3, account=CONNECTED_ACCOUNT)
    import_id = add_request(db, add_account(db))

    result = run_import(mongo_uri, stripe_sandbox, import_id, instance)

    messages = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.dagster_event is None
    ]
    assert any(message.startswith(f"Claimed import {import_id}") for message in messages)
    assert any(message.startswith("Synced 3 customers over 1 page(s)") for message in messages)
    assert any(message.startswith(f"Import {import_id} completed") for message in messages)
    assert capsys.readouterr().out == "", "nothing is printed outside Dagster's logger"


class CountingDatabase:
    """Wraps a database; counts every call made on its collections, by collection."""

    def __init__(self, database, calls: list[tuple[str, str]]):
        self._database = database
        self._calls = calls

    def __getitem__(self, name: str):
        return CountingCollection(self._database[name], name, self._calls)


class CountingCollection:
    def __init__(self, collection, name: str, calls: list[tuple[str, str]]):
        self._collection = collection
        self._name = name
        self._calls = calls

    def __getattr__(self, attribute: str):
        value = getattr(self._collection, attribute)
        if not callable(value):
            return value

        def counted(*args, **kwargs):
            self._calls.append((self._name, attribute))
            return value(*args, **kwargs)

        return counted


def test_bug_4_contacts_are_written_in_bulk_not_one_by_one(
    db, mongo_uri, stripe_sandbox, instance, monkeypatch
):
    stripe_sandbox.state.seed_customers(250, seed=4, account=CONNECTED_ACCOUNT)
    account_id = add_account(db)
    db[store.CONTACTS].insert_many(
        [{"parent_account": account_id, "type": "person", "email": f"x{i}@x.com"} for i in range(5)]
    )
    import_id = add_request(db, account_id, mappings=SEED_MAPPINGS)
    calls: list[tuple[str, str]] = []
    open_database = store.open_database
    monkeypatch.setattr(
        store, "open_database", lambda uri, name: CountingDatabase(open_database(uri, name), calls)
    )

    result = run_import(mongo_uri, stripe_sandbox, import_id, instance)

    assert result.success
    pages = import_result(db, import_id)["pages_fetched"]
    assert pages == 3
    # The catalog's uniqueness checks read the account's contacts afterwards (aggregate).
    contact_calls = [m for name, m in calls if name == store.CONTACTS and m != "aggregate"]
    # One backfill (find + bulk_write), then one find and one bulk_write per page.
    assert contact_calls.count("find") == pages + 1
    assert contact_calls.count("bulk_write") == pages + 1
    assert len(contact_calls) == 2 * pages + 2
    queue_calls = [method for name, method in calls if name == store.QUEUES]
    # Claim, key lookups and heartbeat; closing is two updates (the close, then its result's id).
    assert len(queue_calls) <= pages + 6, "one checkpoint per page, a few for claim and close"


def test_bug_5_counters_live_in_the_run(db, mongo_uri, stripe_sandbox, instance):
    stripe_sandbox.state.seed_customers(30, seed=1, account="acct_first")
    stripe_sandbox.state.seed_customers(20, seed=2, account="acct_second")
    first = add_request(db, add_account(db, stripe_account="acct_first"))
    second = add_request(db, add_account(db, stripe_account="acct_second"))

    one = run_import(mongo_uri, stripe_sandbox, first, instance)
    two = run_import(mongo_uri, stripe_sandbox, second, instance)

    assert import_result(db, first)["customers_fetched"] == 30
    assert import_result(db, second)["customers_fetched"] == 20
    added = import_result(db, second)["records_added"]
    assert op_metadata(two, "sync_customers")["customers_fetched"] == 20
    assert op_metadata(one, "sync_customers")["customers_fetched"] == 30
    assert added + import_result(db, second)["duplicates"] == 20


def test_bug_6_one_failing_record_does_not_stop_the_import(db, mongo_uri, stripe_sandbox, instance):
    enforce_unique_contacts(db)
    for index in range(6):
        stripe_sandbox.state.add_customer(
            CONNECTED_ACCOUNT,
            id=f"cus_{index}",
            email="taken@example.com" if index == 3 else f"c{index}@example.com",
            created=1_700_000_000 + index,
        )
    account_id = add_account(db)
    db[store.CONTACTS].insert_many(
        [
            {"parent_account": account_id, "type": "person", "email": "taken@example.com"},
            {"parent_account": account_id, "type": "person", "stripe_customer_id": "cus_3"},
        ]
    )
    import_id = add_request(db, account_id, mappings={"name": "name"})

    assert run_import(mongo_uri, stripe_sandbox, import_id, instance).success

    document = import_result(db, import_id)
    assert (document["records_added"], document["import_errors_count"]) == (5, 1)
    assert document["importerrors"][0]["stripe_customer_id"] == "cus_3"
    assert document["importerrors"][0]["email"] == "taken@example.com"


def test_bug_7_no_jwt_is_minted(db, mongo_uri, stripe_sandbox, instance, monkeypatch):
    import jwt

    monkeypatch.delenv("APP_SECRET", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the import must not mint a JWT")

    monkeypatch.setattr(jwt, "encode", refuse)
    stripe_sandbox.state.seed_customers(3, account=CONNECTED_ACCOUNT)
    import_id = add_request(db, add_account(db))

    result = run_import(mongo_uri, stripe_sandbox, import_id, instance)

    assert result.success
    assert import_result(db, import_id)["status"] == "completed"
    assert "authToken" not in db[store.QUEUES].find_one({"_id": import_id})


def test_bug_8_the_number_of_customers_is_limited(db, mongo_uri, stripe_sandbox, instance):
    stripe_sandbox.state.seed_customers(400, seed=8, account=CONNECTED_ACCOUNT)
    account_id = add_account(db)
    limited = add_request(db, account_id, max_customers=150)

    result = run_import(mongo_uri, stripe_sandbox, limited, instance)

    assert result.success
    document = import_result(db, limited)
    assert (document["customers_fetched"], document["pages_fetched"]) == (150, 2)
    assert (document["max_customers"], document["limit_reached"]) == (150, True)
    limits = [
        entry["query"]["limit"]
        for entry in stripe_sandbox.state.requests(path="/v1/customers", method="GET")
    ]
    assert limits == ["100", "50"]
    warnings = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.level == 30 and entry.dagster_event is None
    ]
    assert any("limit of 150 customers" in message for message in warnings)


def test_bug_8_a_run_can_override_the_limit(db, mongo_uri, stripe_sandbox, instance):
    stripe_sandbox.state.seed_customers(60, seed=8, account=CONNECTED_ACCOUNT)
    import_id = add_request(db, add_account(db), max_customers=50)

    result = run_import(mongo_uri, stripe_sandbox, import_id, instance, max_customers=25)

    assert result.success
    assert import_result(db, import_id)["customers_fetched"] == 25
    assert op_metadata(result, "sync_customers")["max_customers"] == 25
