"""Listing customers (fetch.py): sequential and windowed walks against the Stripe sandbox."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import stripe
from dagster import DagsterEventType

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.fetch import (
    CustomerWalk,
    FetchSettings,
    iter_customer_batches,
)
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from tests.conftest import (
    CONNECTED_ACCOUNT,
    SECRET_KEY,
    add_account,
    add_request,
    import_result,
)

SNAPSHOT = 1_750_000_000
WINDOWED = FetchSettings(concurrency=4, fan_out_after_seconds=0, window_pages=2, batch_size=250)


def client_for(sandbox, **kwargs) -> stripe.StripeClient:
    resource = StripeResource(api_base=sandbox.url, initial_retry_delay_seconds=0.01, **kwargs)
    return resource.client(SECRET_KEY, CONNECTED_ACCOUNT)


def add_customers_sharing_seconds(sandbox, count: int, per_second: int) -> list[str]:
    """``count`` customers, ``per_second`` of them created in each second; newest first."""
    for index in range(count):
        sandbox.state.add_customer(
            CONNECTED_ACCOUNT,
            id=f"cus_shared{index:05d}",
            email=f"c{index}@example.com",
            created=SNAPSHOT - 10_000 + index // per_second,
        )
    return [customer["id"] for customer in sandbox.state.customers(CONNECTED_ACCOUNT)]


def newest_first_created(sandbox) -> list[int]:
    return [customer["created"] for customer in sandbox.state.customers(CONNECTED_ACCOUNT)]


def list_batches(sandbox, settings: FetchSettings | None = None, **options) -> list:
    """Every batch of a walk of the sandbox's connected account, up to the snapshot."""
    return list(
        iter_customer_batches(
            client_for(sandbox), created_lte=SNAPSHOT, settings=settings, **options
        )
    )


def listed_ids(batches) -> list[str]:
    return [customer["id"] for batch in batches for customer in batch.customers]


def listing_requests(sandbox) -> list[dict]:
    return sandbox.state.requests(path="/v1/customers", method="GET")


def most_requests_at_once(sandbox) -> int:
    """The most listing requests the sandbox was answering at the same moment."""
    events = sorted(
        (entry["time"] + (entry["duration_ms"] / 1000 if end else 0), -1 if end else 1)
        for entry in listing_requests(sandbox)
        for end in (False, True)
    )
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most


@pytest.mark.parametrize("max_buffered_pages", [None, 1])
def test_windows_list_every_customer_exactly_once_in_list_order(stripe_sandbox, max_buffered_pages):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 1500, per_second=37)
    settings = FetchSettings(
        concurrency=4,
        fan_out_after_seconds=0,
        window_pages=2,
        batch_size=250,
        max_buffered_pages=max_buffered_pages,
    )

    batches = list_batches(stripe_sandbox, settings)

    assert listed_ids(batches) == newest_first
    assert [batch.has_more for batch in batches] == [True] * (len(batches) - 1) + [False]
    assert all(len(batch.customers) <= 250 + 100 for batch in batches)
    assert batches[-1].cursor == newest_first[-1]
    requests = listing_requests(stripe_sandbox)
    assert sum(batch.pages for batch in batches) == len(requests)
    windows = {
        (entry["query"]["created"].get("gte"), entry["query"]["created"]["lte"])
        for entry in requests
    }
    assert len(windows) > 4, "the walk fanned out into windows"
    assert all(int(entry["query"]["created"]["lte"]) <= SNAPSHOT for entry in requests)


def test_a_second_shared_by_many_customers_is_never_split_between_windows(stripe_sandbox):
    # 700 customers in three seconds: every page after the first ends inside a crowded second.
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 700, per_second=250)

    ids = listed_ids(list_batches(stripe_sandbox, WINDOWED))

    assert ids == newest_first
    assert not [id_ for id_, seen in Counter(ids).items() if seen > 1]


def test_customers_created_while_the_walk_runs_are_left_for_the_next_import(stripe_sandbox):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 1200, per_second=3)
    stripe_sandbox.state.configure(latency_ms=5)
    stop = threading.Event()
    created: list[str] = []

    def keep_creating() -> None:
        while not stop.is_set():
            customer_id = f"cus_during{len(created):04d}"
            stripe_sandbox.state.add_customer(
                CONNECTED_ACCOUNT,
                id=customer_id,
                email=f"new{len(created)}@example.com",
                created=SNAPSHOT + 1 + len(created) % 3,
            )
            created.append(customer_id)
            time.sleep(0.002)

    creator = threading.Thread(target=keep_creating)
    creator.start()
    try:
        ids = listed_ids(list_batches(stripe_sandbox, WINDOWED))
    finally:
        stop.set()
        creator.join()

    assert created, "customers were created during the walk"
    assert ids == newest_first
    assert len(set(ids)) == len(ids)


def test_sequential_mode_walks_one_cursor_without_created_windows(stripe_sandbox):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 450, per_second=2)
    settings = FetchSettings(concurrency=1, fan_out_after_seconds=0)

    batches = list_batches(stripe_sandbox, settings)

    assert listed_ids(batches) == newest_first
    assert [len(batch.customers) for batch in batches] == [100, 100, 100, 100, 50]
    requests = listing_requests(stripe_sandbox)
    assert [entry["query"].get("starting_after") for entry in requests] == [
        None,
        *newest_first[99:400:100],
    ]
    assert all(entry["query"]["created"] == {"lte": str(SNAPSHOT)} for entry in requests)


def test_a_small_account_stays_sequential_until_the_walk_has_taken_a_while(stripe_sandbox):
    add_customers_sharing_seconds(stripe_sandbox, 450, per_second=2)

    list_batches(stripe_sandbox)

    requests = listing_requests(stripe_sandbox)
    assert len(requests) == 5
    assert all("gte" not in entry["query"]["created"] for entry in requests)


def test_the_first_windows_grow_so_the_newest_are_done_first(stripe_sandbox):
    # One customer a second: the first page spans 99 seconds.
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 2500, per_second=1)
    stripe_sandbox.state.configure(latency_ms=30)  # the other workers are idle by the first page
    settings = FetchSettings(concurrency=4, fan_out_after_seconds=0, window_pages=10)

    batches = list_batches(stripe_sandbox, settings)

    assert listed_ids(batches) == newest_first
    # The first page's owner keeps 2 pages (198 seconds); the idle workers' windows follow it
    # with 4, 6, 8 pages (the last one open-ended), instead of 10 pages each.
    requests = [entry["query"] for entry in listing_requests(stripe_sandbox)]
    owner_lo = min(
        int(query["created"]["gte"])
        for query in requests
        if "starting_after" in query and int(query["created"]["lte"]) == SNAPSHOT
    )
    assert owner_lo == int(newest_first_created(stripe_sandbox)[99]) - 2 * 99 + 1
    opened = {  # each window's first request, before any steal narrowed it
        int(query["created"]["lte"]): query["created"].get("gte")
        for query in reversed(requests)
        if "starting_after" not in query
    }
    hi, checked = owner_lo - 1, 0
    for pages in (4, 6):
        if opened[hi] is None:  # the last window of the cut is open-ended
            break
        assert hi - int(opened[hi]) + 1 == pages * 99
        hi, checked = int(opened[hi]) - 1, checked + 1
    assert checked, "the first cut made at least one bounded window"


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


def test_min_batch_size_must_fit_the_batch():
    with pytest.raises(ValueError, match="min_batch_size"):
        FetchSettings(batch_size=1000, min_batch_size=1001)
    assert FetchSettings(batch_size=1000).early_batch_size == 500


@pytest.mark.parametrize(
    ("requests_per_second", "expected_at_once"),
    [(20, 3), (None, 6)],
    ids=["rate-limited", "no rate given"],
)
def test_the_walk_keeps_as_many_windows_going_as_the_rate_can_serve(
    stripe_sandbox, requests_per_second, expected_at_once
):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 4000, per_second=2)
    stripe_sandbox.state.configure(latency_ms=100)
    settings = FetchSettings(
        concurrency=6,
        requests_per_second=requests_per_second,
        fan_out_after_seconds=0,
        window_pages=3,
    )

    batches = list_batches(stripe_sandbox, settings)

    assert listed_ids(batches) == newest_first
    # 20 requests/s of 100 ms pages: 2 in flight use the rate, plus one between pages.
    assert most_requests_at_once(stripe_sandbox) == expected_at_once


def test_windowed_walk_resumes_after_a_cursor(stripe_sandbox):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 900, per_second=5)
    cursor = newest_first[333]

    batches = list_batches(stripe_sandbox, WINDOWED, starting_after=cursor)

    assert listed_ids(batches) == newest_first[334:]


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
    with pytest.raises(stripe.InvalidRequestError):
        for batch in iter_customer_batches(client, created_lte=SNAPSHOT, settings=WINDOWED):
            listed.extend(customer["id"] for customer in batch.customers)

    assert listed == newest_first[: len(listed)], "what came before the error, in order"
    assert listed, "customers fetched before the failure were handed over"


def test_the_walk_stops_its_workers_when_the_consumer_stops(stripe_sandbox):
    add_customers_sharing_seconds(stripe_sandbox, 2000, per_second=5)
    walk = CustomerWalk(client_for(stripe_sandbox), created_lte=SNAPSHOT, settings=WINDOWED)
    with walk:
        next(walk.pages())
    requests_after_stop = len(listing_requests(stripe_sandbox))
    time.sleep(0.2)

    assert len(listing_requests(stripe_sandbox)) == requests_after_stop
    assert requests_after_stop < 20


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
    assert most_requests_at_once(stripe_sandbox) == 3  # 20/s x 100 ms + 1, not 8


def test_a_windowed_import_resumes_from_its_checkpoint(db, mongo_uri, stripe_sandbox, instance):
    stripe_sandbox.state.seed_customers(700, seed=22, account=CONNECTED_ACCOUNT)
    clean_uri = f"{mongo_uri}-clean"
    clean_db = store.connect(clean_uri)
    clean_id = add_request(clean_db, add_account(clean_db), mappings={"name": "name"})
    assert run_windowed_import(clean_uri, stripe_sandbox, clean_id, instance).success

    import_id = add_request(db, add_account(db), mappings={"name": "name"})
    FAIL_AFTER_CHECKPOINT.update(sandbox=stripe_sandbox, db=db, import_id=import_id)
    result = run_windowed_import(
        mongo_uri,
        stripe_sandbox,
        import_id,
        instance,
        StripeFailingAfterCheckpoint(api_base=stripe_sandbox.url, max_retries=0),
        write_batch_size=100,
    )

    assert result.success
    assert any(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)
    assert any(
        "Resuming after page" in (entry.user_message or "")
        for entry in instance.all_logs(result.run_id)
    )
    resumed, clean = import_result(db, import_id), import_result(clean_db, clean_id)
    for key in ("customers_fetched", "records_added", "records_updated", "duplicates"):
        assert resumed[key] == clean[key], key
    assert resumed["records_updated"] == 0, "nothing written twice"
    assert contact_values(db) == contact_values(clean_db)
