"""Cancellation: a request set to ``cancelled`` while it imports, or a run terminated, stops
between pages and is recorded as ``cancelled`` with the counts so far. (Terminating a run from
the UI of a real ``dagster dev`` is in test_daemon.py.)"""

from __future__ import annotations

import pytest
from dagster import DagsterExecutionInterruptedError

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import importer
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from tests.conftest import (
    CONNECTED_ACCOUNT,
    add_account,
    add_request,
    import_result,
    run_failure_message,
)
from tests.reliability import FaultyDatabase, assert_counts_add_up, evaluate_sensor

CUSTOMERS = 2000
STOP_AFTER_CONTACTS = 300


@pytest.fixture
def store_uri(tmp_path) -> str:
    """An embedded store: mongomock makes an import of thousands of customers take minutes."""
    uri = (tmp_path / "store").as_uri()
    store.ensure_indexes(store.connect(uri))
    return uri


@pytest.fixture
def db(store_uri):
    return store.connect(store_uri)


@pytest.fixture
def slow_sandbox(stripe_sandbox, monkeypatch):
    stripe_sandbox.state.seed_customers(CUSTOMERS, seed=41, account=CONNECTED_ACCOUNT)
    stripe_sandbox.state.configure(endpoint_latency_ms={"GET /v1/customers": 30})
    monkeypatch.setattr(importer, "HEARTBEAT_SECONDS", 0.02)
    return stripe_sandbox


def run_stopping_part_way(store_uri, sandbox, import_id, instance, monkeypatch, stop):
    """Run the import; ``stop()`` runs in the thread that writes the contacts before its first
    contacts write after :data:`STOP_AFTER_CONTACTS` contacts are written (an exception it
    raises reaches the import's own thread, as a signal would)."""
    open_database = store.open_database

    def before(collection: str, method: str, args) -> None:
        if collection == store.CONTACTS and method == "bulk_write":
            written = store.connect(store_uri)[store.CONTACTS].count_documents({})
            if written >= STOP_AFTER_CONTACTS:
                stop()

    monkeypatch.setattr(
        store, "open_database", lambda uri, name: FaultyDatabase(open_database(uri, name), before)
    )
    return billing_contact_import.execute_in_process(
        run_config={
            "ops": {
                "claim_import_request": {"config": {"import_id": str(import_id)}},
                # Batches smaller than the account, so there is a boundary to stop at even when
                # the walk fans out at once.
                "sync_customers": {"config": {"write_batch_size": 200}},
            }
        },
        resources={
            "mongo": MongoResource(uri=store_uri),
            "stripe": StripeResource(api_base=sandbox.url),
        },
        instance=instance,
        raise_on_error=False,
    )


def assert_cancelled_with_partial_counts(db, import_id, account_id) -> dict:
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == ("cancelled", False)
    result = import_result(db, import_id)
    assert result["status"] == "cancelled"
    assert result["error"] == request["error"]
    assert request["result_id"] == result["_id"]
    assert STOP_AFTER_CONTACTS <= result["customers_fetched"] < CUSTOMERS, "stopped part-way"
    assert_counts_add_up(result, result["customers_fetched"])
    written = db[store.CONTACTS].count_documents({"parent_account": account_id})
    assert written == result["records_added"], "the counts are those of what was written"
    return result


def test_a_request_cancelled_while_it_runs_stops_between_pages(
    db, store_uri, slow_sandbox, instance, monkeypatch
):
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings={"name": "name"})

    def cancel_from_the_crm() -> None:
        # The embedded store's connections belong to the thread that opened them.
        store.connect(store_uri)[store.QUEUES].update_one(
            {"_id": import_id}, {"$set": {"status": "cancelled"}}
        )

    result = run_stopping_part_way(
        store_uri, slow_sandbox, import_id, instance, monkeypatch, cancel_from_the_crm
    )

    assert not result.success
    document = assert_cancelled_with_partial_counts(db, import_id, account_id)
    assert run_failure_message(result) == document["error"]
    assert document["error"].startswith("Cancelled on request after")
    assert evaluate_sensor(instance, store_uri).run_requests == [], "not launched again"


def test_a_terminated_run_records_the_import_cancelled(
    db, store_uri, slow_sandbox, instance, monkeypatch
):
    account_id = add_account(db)
    import_id = add_request(db, account_id)

    def terminate() -> None:
        # What terminating a run does: the run is CANCELING, then the op is interrupted.
        [run] = instance.get_runs()
        instance.report_run_canceling(run, "Terminate requested from the UI")
        raise DagsterExecutionInterruptedError()

    result = run_stopping_part_way(
        store_uri, slow_sandbox, import_id, instance, monkeypatch, terminate
    )

    assert not result.success
    document = assert_cancelled_with_partial_counts(db, import_id, account_id)
    assert document["error"].startswith("Run terminated; import cancelled after")
    assert evaluate_sensor(instance, store_uri).run_requests == []


def test_an_interrupted_worker_that_nobody_terminated_resumes_from_its_checkpoint(
    db, store_uri, slow_sandbox, instance, monkeypatch
):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    interrupted = []

    def preempt() -> None:
        if not interrupted:
            interrupted.append(True)
            raise DagsterExecutionInterruptedError()

    result = run_stopping_part_way(
        store_uri, slow_sandbox, import_id, instance, monkeypatch, preempt
    )

    assert result.success, "Dagster retries an interrupted op that has a retry policy"
    document = import_result(db, import_id)
    assert document["status"] == "completed"
    assert_counts_add_up(document, CUSTOMERS)
    assert document["records_updated"] == 0, "the retry resumed from the checkpoint"
    assert interrupted
    assert db[store.CONTACTS].count_documents({}) == document["records_added"]
