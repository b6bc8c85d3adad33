"""Customers in write batches (batches.py), and the import over them, against the Stripe sandbox
and, where it is installed, localstripe."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time

import pytest
import stripe
from dagster import DagsterEventType

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.batches import FetchSettings, customer_batches
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.billing_import.results import LISTING_WITHOUT_SNAPSHOT
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from tests.billing_import.conftest import (
    SNAPSHOT,
    add_customers_sharing_seconds,
    client_for,
    list_batches,
    listed_ids,
    listing_requests,
    most_requests_at_once,
)
from tests.conftest import (
    CONNECTED_ACCOUNT,
    SECRET_KEY,
    add_account,
    add_request,
    import_result,
    op_metadata,
)

WINDOWED = FetchSettings(concurrency=4, fan_out_after_seconds=0, window_pages=2, batch_size=250)


@pytest.mark.parametrize("min_batch_size", [None, 1000])
def test_a_batch_goes_early_at_half_its_size_rather_than_keep_the_writer_waiting(
    stripe_sandbox, min_batch_size
):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 3000, per_second=2)
    stripe_sandbox.state.configure(latency_ms=20)
    settings = FetchSettings(
        concurrency=2,
        fan_out_after_seconds=0,
        window_pages=5,
        batch_size=1000,
        min_batch_size=min_batch_size,
    )

    batches = list_batches(stripe_sandbox, settings)

    assert listed_ids(batches) == newest_first
    assert [batch.has_more for batch in batches] == [True] * (len(batches) - 1) + [False]
    sizes = [len(batch.customers) for batch in batches[:-1]]
    smallest = min_batch_size or 500
    assert all(smallest <= size < 1000 + 100 for size in sizes), sizes
    if min_batch_size is None:
        # This consumer never keeps the walk waiting: batches go as soon as half full.
        assert any(size < 1000 for size in sizes), sizes


@pytest.mark.parametrize(("concurrency", "first_batch"), [(4, range(1000, 1100)), (1, [100])])
def test_a_first_page_the_fan_out_follows_joins_the_first_batch(
    stripe_sandbox, concurrency, first_batch
):
    """Fanning out after two pages, the first page is not a batch (and its round trips) of its
    own; a walk that stays sequential still writes page by page."""
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 2000, per_second=2)
    stripe_sandbox.state.configure(latency_ms=20)
    settings = FetchSettings(
        concurrency=concurrency,
        fan_out_after_seconds=0.03,  # two pages of 20 ms
        batch_size=1000,
        min_batch_size=1000,
    )

    batches = list_batches(stripe_sandbox, settings)

    assert listed_ids(batches) == newest_first
    assert len(batches[0].customers) in first_batch
    assert batches[0].pages >= len(batches[0].customers) // 100


def test_min_batch_size_must_fit_the_batch():
    with pytest.raises(ValueError, match="min_batch_size"):
        FetchSettings(batch_size=1000, min_batch_size=1001)
    assert FetchSettings(batch_size=1000).early_batch_size == 500


def test_windowed_walk_keeps_the_newest_customers_up_to_the_limit(stripe_sandbox):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 900, per_second=5)

    batches = list_batches(stripe_sandbox, WINDOWED, max_customers=420)

    assert listed_ids(batches) == newest_first[:420]
    assert batches[-1].has_more


def test_a_failing_window_stops_the_walk_after_what_came_before(stripe_sandbox):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 900, per_second=5)
    listed: list[str] = []
    fail_at = 4

    sent = iter(range(1, 10_000))

    def inject() -> None:
        if next(sent) == fail_at:
            stripe_sandbox.state.inject_fault(endpoint="GET /v1/customers", status=400)

    client = StripeResource(api_base=stripe_sandbox.url, max_retries=0).client(
        SECRET_KEY, CONNECTED_ACCOUNT, before_request=inject
    )
    with (
        pytest.raises(stripe.InvalidRequestError),
        customer_batches(client, created_lte=SNAPSHOT, settings=WINDOWED) as listing,
    ):
        for batch in listing:
            listed.extend(customer["id"] for customer in batch.customers)

    assert listed == newest_first[: len(listed)], "what came before the error, in order"
    assert listed, "customers fetched before the failure were handed over"


# --- the job with windows ------------------------------------------------------------------------


def run_windowed_import(
    mongo_uri, sandbox, import_id, instance, stripe_resource=None, write_batch_size=300
):
    return billing_contact_import.execute_in_process(
        run_config={
            "ops": {
                "claim_import_request": {"config": {"import_id": str(import_id)}},
                "sync_customers": {
                    "config": {
                        "fetch_concurrency": 4,
                        "fan_out_after_seconds": 0,
                        "write_batch_size": write_batch_size,
                    }
                },
            }
        },
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "stripe": stripe_resource
            or StripeResource(api_base=sandbox.url, initial_retry_delay_seconds=0.01),
        },
        instance=instance,
        raise_on_error=False,
    )


FAIL_AFTER_CHECKPOINT: dict = {}


class StripeFailingAfterCheckpoint(StripeResource):
    """The first client's fourth request waits for the import's first checkpoint, then gets a
    503; the op's retry gets a healthy client."""

    def client(self, secret_key, stripe_account, *, stats=None, before_request=None):
        hook = FAIL_AFTER_CHECKPOINT.copy()
        FAIL_AFTER_CHECKPOINT.clear()
        sent = iter(range(1, 1_000_000))

        def inject() -> None:
            if not hook or next(sent) != 4:
                return
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                request = hook["db"][store.QUEUES].find_one({"_id": hook["import_id"]})
                if (request.get("checkpoint") or {}).get("cursor"):
                    break
                time.sleep(0.01)
            hook["sandbox"].state.inject_fault(endpoint="GET /v1/customers", status=503)

        return super().client(secret_key, stripe_account, stats=stats, before_request=inject)


DELETE_CHECKPOINT_CURSOR: dict = {}


class StripeDeletingTheCheckpointCursor(StripeFailingAfterCheckpoint):
    """As its parent, and before the retry resumes, the customer its checkpoint names is
    deleted in Stripe (as from the dashboard)."""

    def client(self, secret_key, stripe_account, *, stats=None, before_request=None):
        retry = not FAIL_AFTER_CHECKPOINT
        if retry and DELETE_CHECKPOINT_CURSOR:
            hook = DELETE_CHECKPOINT_CURSOR.copy()
            DELETE_CHECKPOINT_CURSOR.clear()
            request = hook["db"][store.QUEUES].find_one({"_id": hook["import_id"]})
            cursor = request["checkpoint"]["cursor"]
            client_for(hook["sandbox"]).v1.customers.delete(cursor)
            hook["deleted"].append(cursor)
        return super().client(
            secret_key, stripe_account, stats=stats, before_request=before_request
        )


def run_failing_after_checkpoint(db, mongo_uri, sandbox, instance, import_id, resource_class):
    """A windowed import whose first attempt fails after its first checkpoint, so that the op's
    retry resumes from it; the run, checked to have succeeded after that retry."""
    FAIL_AFTER_CHECKPOINT.update(sandbox=sandbox, db=db, import_id=import_id)
    result = run_windowed_import(
        mongo_uri,
        sandbox,
        import_id,
        instance,
        resource_class(api_base=sandbox.url, max_retries=0),
        write_batch_size=100,
    )
    assert result.success
    assert any(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)
    return result


def contact_values(db) -> list[tuple]:
    return sorted(
        (c.get("stripe_customer_id"), c.get("email"), c.get("name"), str(c.get("address")))
        for c in db[store.CONTACTS].find({})
    )


@pytest.fixture
def instance():
    from dagster import DagsterInstance

    return DagsterInstance.ephemeral()


def test_a_windowed_import_writes_what_a_sequential_one_does(stripe_sandbox, instance):
    stripe_sandbox.state.seed_customers(700, seed=21, account=CONNECTED_ACCOUNT)
    results = []
    for name in ("sequential", "windowed"):
        mongo_uri = f"mongomock://fetch-{name}-{id(results)}"
        db = store.connect(mongo_uri)
        import_id = add_request(db, add_account(db), mappings={"name": "name"})
        if name == "sequential":
            run = billing_contact_import.execute_in_process(
                run_config={
                    "ops": {
                        "claim_import_request": {"config": {"import_id": str(import_id)}},
                        "sync_customers": {"config": {"fetch_concurrency": 1}},
                    }
                },
                resources={
                    "mongo": MongoResource(uri=mongo_uri),
                    "stripe": StripeResource(api_base=stripe_sandbox.url),
                },
                instance=instance,
            )
        else:
            run = run_windowed_import(mongo_uri, stripe_sandbox, import_id, instance)
        assert run.success
        document = import_result(db, import_id)
        results.append(
            (
                contact_values(db),
                {k: document[k] for k in ("records_added", "duplicates", "customers_fetched")},
                document["duplicate_customers"],
            )
        )

    assert results[0] == results[1]


def test_the_import_walks_as_many_windows_as_its_rate_limit_serves(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.seed_customers(1500, seed=23, account=CONNECTED_ACCOUNT)
    stripe_sandbox.state.configure(latency_ms=100)
    import_id = add_request(db, add_account(db))

    run = billing_contact_import.execute_in_process(
        run_config={
            "ops": {
                "claim_import_request": {"config": {"import_id": str(import_id)}},
                "sync_customers": {
                    "config": {
                        "fetch_concurrency": 8,
                        "fan_out_after_seconds": 0,
                        "requests_per_second": 20,
                    }
                },
            }
        },
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "stripe": StripeResource(api_base=stripe_sandbox.url),
        },
        instance=instance,
    )

    assert run.success
    assert import_result(db, import_id)["customers_fetched"] == 1500
    # 20/s x 100+ ms, rounded up, + 1 = 4 windows, not 8; on a loaded machine a late answer can
    # overlap the next window's first request, so one more may be seen at an instant.
    assert 4 <= most_requests_at_once(stripe_sandbox) <= 5


def test_a_windowed_import_resumes_from_its_checkpoint(db, mongo_uri, stripe_sandbox, instance):
    stripe_sandbox.state.seed_customers(700, seed=22, account=CONNECTED_ACCOUNT)
    clean_uri = f"{mongo_uri}-clean"
    clean_db = store.connect(clean_uri)
    clean_id = add_request(clean_db, add_account(clean_db), mappings={"name": "name"})
    assert run_windowed_import(clean_uri, stripe_sandbox, clean_id, instance).success

    import_id = add_request(db, add_account(db), mappings={"name": "name"})
    result = run_failing_after_checkpoint(
        db, mongo_uri, stripe_sandbox, instance, import_id, StripeFailingAfterCheckpoint
    )

    assert any(
        "Resuming after page" in (entry.user_message or "")
        for entry in instance.all_logs(result.run_id)
    )
    resumed, clean = import_result(db, import_id), import_result(clean_db, clean_id)
    for key in ("customers_fetched", "records_added", "records_updated", "duplicates"):
        assert resumed[key] == clean[key], key
    assert resumed["records_updated"] == 0, "nothing written twice"
    assert contact_values(db) == contact_values(clean_db)


# --- customers deleted while the walk lists them ---------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_customer_deleted_after_its_page_was_listed_does_not_stop_the_walk(
    stripe_sandbox, concurrency
):
    # Three customers a second, so the deleted one shares its second with others.
    expected = add_customers_sharing_seconds(stripe_sandbox, 250, per_second=3)
    client = client_for(stripe_sandbox)
    raw, deleted = client.raw_request, []

    def raw_request(method, path, **params):
        response = raw(method, path, **params)
        if not deleted and path == "/v1/customers":
            # Someone deletes the page's last customer, the next page's cursor, meanwhile.
            deleted.append(json.loads(response.body)["data"][-1]["id"])
            client_for(stripe_sandbox).v1.customers.delete(deleted[0])
        return response

    client.raw_request = raw_request
    settings = FetchSettings(concurrency=concurrency, fan_out_after_seconds=0, window_pages=1)
    with customer_batches(client, created_lte=SNAPSHOT, settings=settings) as listing:
        ids = listed_ids(list(listing))

    assert ids == expected  # each once, in list order; the deleted one was listed before
    refused = [r for r in listing_requests(stripe_sandbox) if r["status"] == 400]
    assert [r["query"].get("starting_after") for r in refused] == deleted


def test_an_import_resumed_after_a_deleted_customer_completes(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.seed_customers(700, seed=22, account=CONNECTED_ACCOUNT)
    import_id = add_request(db, add_account(db), mappings={"name": "name"})
    deleted: list[str] = []
    DELETE_CHECKPOINT_CURSOR.update(
        sandbox=stripe_sandbox, db=db, import_id=import_id, deleted=deleted
    )

    run_failing_after_checkpoint(
        db, mongo_uri, stripe_sandbox, instance, import_id, StripeDeletingTheCheckpointCursor
    )

    refused = [r for r in listing_requests(stripe_sandbox) if r["status"] == 400]
    assert len(deleted) == 1
    assert [r["query"].get("starting_after") for r in refused] == deleted
    document = import_result(db, import_id)
    assert document["status"] == "completed"
    assert document["customers_fetched"] == 700
    assert db[store.CONTACTS].count_documents({}) == document["records_added"] > 0


# --- servers without the created filter ------------------------------------------------------


def test_an_import_from_a_server_refusing_created_completes_without_a_snapshot(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.seed_customers(450, seed=24, account=CONNECTED_ACCOUNT)
    stripe_sandbox.state.configure(reject_created=True)
    import_id = add_request(db, add_account(db))

    run = run_windowed_import(mongo_uri, stripe_sandbox, import_id, instance)

    assert run.success
    document = import_result(db, import_id)
    assert document["customers_fetched"] == 450
    assert document["created_filter_refused"] is True
    assert db[store.CONTACTS].count_documents({}) == document["records_added"] > 0
    assert op_metadata(run, "sync_customers")["listing"] == LISTING_WITHOUT_SNAPSHOT
    requests = listing_requests(stripe_sandbox)
    assert [entry["status"] for entry in requests] == [400] + [200] * 5


def test_an_import_with_the_created_filter_says_it_kept_its_snapshot(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.seed_customers(150, seed=25, account=CONNECTED_ACCOUNT)
    import_id = add_request(db, add_account(db))

    run = run_windowed_import(mongo_uri, stripe_sandbox, import_id, instance)

    assert run.success
    assert import_result(db, import_id)["created_filter_refused"] is False
    assert "listing" not in op_metadata(run, "sync_customers")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def localstripe_url():
    """localstripe, an independent Stripe-compatible server that has no ``created`` filter."""
    if importlib.util.find_spec("localstripe") is None:
        pytest.skip("localstripe is not installed (pip install -e '.[test]')")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "localstripe.server", "--port", str(port), "--from-scratch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("localstripe did not start")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_localstripe_customers_are_listed_without_a_snapshot(localstripe_url):
    client = StripeResource(api_base=localstripe_url, max_retries=0).client(SECRET_KEY, None)
    created = {
        client.customers.create(params={"email": f"ls{index}@example.com"}).id
        for index in range(130)
    }

    with customer_batches(
        client, created_lte=int(time.time()) + 1, max_customers=1000, settings=WINDOWED
    ) as listing:
        batches = list(listing)
        snapshot = listing.snapshot

    assert not snapshot
    assert set(listed_ids(batches)) == created
    assert len(listed_ids(batches)) == 130
    assert not batches[-1].has_more


def test_an_import_without_a_snapshot_resumes_without_one(db, mongo_uri, stripe_sandbox, instance):
    stripe_sandbox.state.seed_customers(450, seed=26, account=CONNECTED_ACCOUNT)
    stripe_sandbox.state.configure(reject_created=True)
    import_id = add_request(db, add_account(db))
    FAIL_AFTER_CHECKPOINT.update(sandbox=stripe_sandbox, db=db, import_id=import_id)

    run = run_windowed_import(
        mongo_uri,
        stripe_sandbox,
        import_id,
        instance,
        StripeFailingAfterCheckpoint(api_base=stripe_sandbox.url, max_retries=0),
    )

    assert run.success
    assert any(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in run.all_events)
    document = import_result(db, import_id)
    assert (document["customers_fetched"], document["records_updated"]) == (450, 0)
    assert document["created_filter_refused"] is True
    refused = [e for e in listing_requests(stripe_sandbox) if e["status"] == 400]
    assert len(refused) == 1, "the resumed attempt lists without created from the start"
