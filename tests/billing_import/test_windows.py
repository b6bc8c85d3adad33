"""The scheduler of created windows (windows.py): cutting, stealing and the threaded walk,
against the Stripe sandbox."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from stripe_crm_pipelines.billing_import.batches import FetchSettings
from stripe_crm_pipelines.billing_import.windows import (
    RAMP_PAGES,
    Window,
    WindowedWalk,
    cut_open,
    steal_older_half,
)
from tests.billing_import.conftest import (
    SNAPSHOT,
    add_customers_sharing_seconds,
    client_for,
    list_batches,
    listed_ids,
    listing_requests,
    most_requests_at_once,
)
from tests.billing_import.test_job import CONNECTED_ACCOUNT

WINDOWED = FetchSettings(concurrency=4, fan_out_after_seconds=0, window_pages=2, batch_size=250)


def newest_first_created(sandbox) -> list[int]:
    return [customer["created"] for customer in sandbox.state.customers(CONNECTED_ACCOUNT)]


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


@pytest.mark.parametrize(
    ("requests_per_second", "expected_at_once"),
    [(20, 4), (None, 6)],
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
    # 20 requests/s of pages a little over 100 ms: 2.x in flight use the rate (3 windows),
    # plus one whose request waits for a token.
    assert most_requests_at_once(stripe_sandbox) == expected_at_once


def test_windowed_walk_resumes_after_a_cursor(stripe_sandbox):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 900, per_second=5)
    cursor = newest_first[333]

    batches = list_batches(stripe_sandbox, WINDOWED, starting_after=cursor)

    assert listed_ids(batches) == newest_first[334:]


def test_the_walk_stops_its_workers_when_the_consumer_stops(stripe_sandbox):
    add_customers_sharing_seconds(stripe_sandbox, 2000, per_second=5)
    walk = WindowedWalk(client_for(stripe_sandbox), created_lte=SNAPSHOT, settings=WINDOWED)
    with walk:
        next(walk.pages())
    requests_after_stop = len(listing_requests(stripe_sandbox))
    time.sleep(0.2)

    assert len(listing_requests(stripe_sandbox)) == requests_after_stop
    assert requests_after_stop < 20


def test_the_open_window_is_cut_by_its_last_page_density_into_growing_chunks():
    owner = Window(None, 10_000, cursor="cus_x", span=10, position=9_000)

    cut = cut_open(owner, 3, window_pages=10, ramp=True)

    # The owner keeps RAMP_PAGES pages of 10 seconds; the next windows get 4 and 6 pages, the
    # last one is open-ended.
    assert owner.lo == 9_000 - RAMP_PAGES * 10 + 1
    assert [(w.lo, w.hi) for w in cut] == [(8_941, 8_980), (8_881, 8_940), (None, 8_880)]
    assert cut_open(owner, 0, window_pages=10, ramp=False) == []


def test_a_cut_stops_at_second_zero():
    owner = Window(None, 500, cursor="cus_x", span=100, position=450)

    cut = cut_open(owner, 4, window_pages=2, ramp=False)

    assert owner.lo == 251
    assert [(w.lo, w.hi) for w in cut] == [(51, 250), (None, 50)]


def test_an_idle_worker_steals_the_older_half_of_the_longest_window():
    short = Window(100, 200, span=10, position=150)
    long = Window(1_000, 2_000, span=10, position=1_900)

    victim, older = steal_older_half([short, long])

    assert victim is long
    assert (long.lo, older.lo, older.hi) == (1_450, 1_000, 1_449)
    assert steal_older_half([Window(100, 200, span=10, position=110)]) is None


def test_a_server_refusing_created_is_walked_sequentially_without_a_snapshot(stripe_sandbox):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 450, per_second=37)
    stripe_sandbox.state.configure(reject_created=True)
    walk = WindowedWalk(client_for(stripe_sandbox), created_lte=SNAPSHOT, settings=WINDOWED)

    with walk:
        ids = [customer["id"] for page in walk.pages() for customer in page.customers]
        snapshot = walk.snapshot

    assert ids == newest_first
    assert not snapshot
    requests = listing_requests(stripe_sandbox)
    assert [entry["status"] for entry in requests] == [400] + [200] * 5
    assert all("created" not in entry["query"] for entry in requests[1:])


def test_without_a_snapshot_the_walk_sends_no_created_filter(stripe_sandbox):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 250, per_second=1)

    batches = list_batches(stripe_sandbox, WINDOWED, created_lte=None)

    assert listed_ids(batches) == newest_first
    assert [len(batch.customers) for batch in batches] == [100, 100, 50]
    assert all("created" not in entry["query"] for entry in listing_requests(stripe_sandbox))
