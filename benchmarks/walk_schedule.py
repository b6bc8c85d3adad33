"""The customer walk alone: how close the windows come to the rate-limit bound, with no writing.

    .venv/bin/python benchmarks/walk_schedule.py              # 10,000 customers, 10 walks
    .venv/bin/python benchmarks/walk_schedule.py --customers 150 --walks 5
    .venv/bin/python benchmarks/walk_schedule.py --help

``import_throughput.py`` times the whole import: HTTP, the SDK, parsing, matching and writing
share two cores, and its figures move with the machine's load. This script isolates the
scheduler (``billing_import/windows.py``): a :class:`WindowedWalk` with the import's default
settings lists customers from an in-process listing that behaves like Stripe's (newest first,
100 a page, ``created[gte]``/``created[lte]`` and ``starting_after``), answers each request after
``--latency-ms`` and lets requests through a token bucket of ``--rate-limit`` per second, as the
import's client does. The customers' ``created`` seconds are spread at random over five years,
as the sandbox seeds them; each walk draws them with its own seed.

Printed per walk and on average: the walk's seconds against the rate-limit bound (one request
per 100 customers at the rate), the requests it made against the pages the customers fill, the
partial and empty pages (each window ends with one), and the windows walked. Two baselines in
the same run: one sequential walk (``concurrency=1``) of the same customers, which is what the
walk would take without windows; and the schedule of a walk that knew the listing (computed, not
walked: :func:`known_listing_schedule`), which is the least any walk starting the same way could
take. Exit status 1 if a walk lists a customer twice or misses one.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import math
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from stripe_crm_pipelines.billing_import.batches import FetchSettings
from stripe_crm_pipelines.billing_import.paging import PAGE_SIZE
from stripe_crm_pipelines.billing_import.rate_limit import TokenBucket
from stripe_crm_pipelines.billing_import.windows import (
    DEFAULT_CONCURRENCY,
    DEFAULT_FAN_OUT_AFTER_SECONDS,
    WindowedWalk,
)

SNAPSHOT = 1_767_225_600
"""``created[lte]`` of every walk (2026-01-01 UTC); the customers are created in the five years
before it."""
SPREAD_SECONDS = 5 * 365 * 86_400


@dataclass
class WalkFigures:
    seconds: float
    requests: int
    partial_pages: int
    empty_pages: int
    windows: int


class _Answer:
    def __init__(self, body: str) -> None:
        self.body = body


class ListingClient:
    """Answers ``raw_request("get", "/v1/customers", ...)`` as Stripe would, from memory."""

    def __init__(self, created: list[int], latency: float, bucket: TokenBucket) -> None:
        self._created = created  # newest first, distinct
        self._negated = [-value for value in created]
        self._ids = [f"cus_{index:07d}" for index in range(len(created))]
        self._position = {customer_id: index for index, customer_id in enumerate(self._ids)}
        self._latency = latency
        self._bucket = bucket
        self._lock = threading.Lock()
        self.sizes: list[int] = []
        self.windows: set[tuple[Any, Any]] = set()

    def raw_request(self, method: str, path: str, **params: Any) -> _Answer:
        self._bucket.acquire()
        time.sleep(self._latency)
        created = params.get("created", {})
        lte, gte = created.get("lte"), created.get("gte")
        start = 0 if lte is None else bisect.bisect_left(self._negated, -lte)
        after = params.get("starting_after")
        if after is not None:
            start = max(start, self._position[after] + 1)
        limit = int(params.get("limit", PAGE_SIZE))
        end = start
        while end < len(self._created) and end - start <= limit:
            if gte is not None and self._created[end] < gte:
                break
            end += 1
        data = [
            {"id": self._ids[index], "created": self._created[index]}
            for index in range(start, min(end, start + limit))
        ]
        with self._lock:
            self.sizes.append(len(data))
            if after is None:
                self.windows.add((gte, lte))
        return _Answer(json.dumps({"data": data, "has_more": end - start > limit}))


def walk(customers: int, seed: int, args: argparse.Namespace, *, sequential: bool) -> WalkFigures:
    rng = random.Random(seed)
    created = sorted(rng.sample(range(SNAPSHOT - SPREAD_SECONDS, SNAPSHOT), customers))[::-1]
    client = ListingClient(created, args.latency_ms / 1000, TokenBucket(args.rate_limit))
    settings = FetchSettings(
        concurrency=1 if sequential else FetchSettings.concurrency,
        requests_per_second=args.rate_limit,
    )
    listed: list[str] = []
    started = time.monotonic()
    with WindowedWalk(client, created_lte=SNAPSHOT, settings=settings) as windowed:  # type: ignore[arg-type]
        for page in windowed.pages():
            listed.extend(customer["id"] for customer in page.customers)
    seconds = time.monotonic() - started
    if len(listed) != customers or len(set(listed)) != customers:
        sys.exit(f"walk {seed}: listed {len(listed)} ({len(set(listed))} distinct) of {customers}")
    return WalkFigures(
        seconds,
        len(client.sizes),
        sum(1 for size in client.sizes if 0 < size < PAGE_SIZE),
        sum(1 for size in client.sizes if size == 0),
        len(client.windows),
    )


@dataclass
class Schedule:
    seconds: float
    requests: int
    windows: int
    sequential_pages: int


def known_listing_schedule(customers: int, latency: float, rate: float) -> Schedule:
    """The fastest walk that starts as the walk does (sequential pages until it has listed for
    ``fan_out_after_seconds``, at least two) and then knows the listing exactly: the rest is cut
    into windows of whole pages, as even as can be (no partial or empty page), every window is
    walked one page at a time, and every request takes a token of the import's bucket (``rate``
    per second, on a simulated clock) and ``latency`` seconds. Tried for every number of windows
    up to the walk's concurrency; the fastest wins. Computed event by event, without threads or
    sleeping."""
    sequential = max(2, math.ceil(DEFAULT_FAN_OUT_AFTER_SECONDS / latency - 1e-9))
    pages = math.ceil(customers / PAGE_SIZE)
    if pages <= sequential:
        return Schedule(pages * latency, max(1, pages), 0, pages)
    best: Schedule | None = None
    for windows in range(1, DEFAULT_CONCURRENCY + 1):
        bucket = _SimulatedBucket(rate)
        now = 0.0
        for _ in range(sequential):
            now = bucket.take(now) + latency
        rest = pages - sequential
        left = [rest // windows + (index < rest % windows) for index in range(windows)]
        ready = [(now, index) for index in range(windows) if left[index]]
        heapq.heapify(ready)
        end = now
        while ready:
            at, index = heapq.heappop(ready)
            back = bucket.take(at) + latency
            end = max(end, back)
            left[index] -= 1
            if left[index]:
                heapq.heappush(ready, (back, index))
        schedule = Schedule(end, bucket.taken, windows, sequential)
        if best is None or schedule.seconds < best.seconds - 1e-9:
            best = schedule
    assert best is not None
    return best


class _SimulatedBucket:
    """The import's :class:`TokenBucket` on a simulated clock, first come first served: a wait
    for a token moves the clock on instead of sleeping."""

    def __init__(self, rate: float) -> None:
        self.now = 0.0
        self.taken = 0
        self._bucket = TokenBucket(rate, clock=lambda: self.now, wait=self._wait)

    def _wait(self, _condition: object, timeout: float | None) -> None:
        self.now += timeout or 0.0

    def take(self, now: float) -> float:
        """When a request asked at ``now`` gets its token."""
        self.now = max(self.now, now)
        self._bucket.acquire()
        self.taken += 1
        return self.now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000, help="customers (10,000)")
    parser.add_argument("--walks", type=int, default=10, help="walks, each its own seed (10)")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="page latency (200)")
    parser.add_argument("--rate-limit", type=float, default=25.0, help="requests/s (25)")
    args = parser.parse_args()
    pages = math.ceil(args.customers / PAGE_SIZE)
    bound = pages / args.rate_limit
    print(
        f"Walk schedule: {args.customers:,} customers ({pages} full pages), "
        f"{args.latency_ms:g} ms pages, {args.rate_limit:g} requests/s; bound {bound:.2f} s"
    )
    print(
        f"{'walk':>4} {'seconds':>8} {'x bound':>8} {'requests':>9} {'partial':>8} "
        f"{'empty':>6} {'windows':>8}"
    )
    runs = []
    for seed in range(args.walks):
        figures = walk(args.customers, seed, args, sequential=False)
        runs.append(figures)
        print(
            f"{seed:>4} {figures.seconds:>8.2f} {figures.seconds / bound:>7.2f}x "
            f"{figures.requests:>9} {figures.partial_pages:>8} {figures.empty_pages:>6} "
            f"{figures.windows:>8}"
        )
    mean = statistics.mean(run.seconds for run in runs)
    requests = statistics.mean(run.requests for run in runs)
    sequential = walk(args.customers, 0, args, sequential=True)
    print(
        f"sequential walk (baseline, walk 0's customers): {sequential.seconds:.2f} s, "
        f"{sequential.requests} requests"
    )
    known = known_listing_schedule(args.customers, args.latency_ms / 1000, args.rate_limit)
    print(
        f"a walk that knew the listing (computed: {known.sequential_pages} sequential pages, "
        f"then {known.windows} windows of whole pages): {known.seconds:.2f} s, "
        f"{known.seconds / bound:.2f}x the bound, {known.requests} requests"
    )
    print(
        f"summary: walk of {args.customers:,} customers {mean:.2f} s on average "
        f"({min(r.seconds for r in runs):.2f} to {max(r.seconds for r in runs):.2f}), "
        f"{mean / bound:.2f}x the rate-limit bound, {requests:.1f} requests for {pages} pages; "
        f"{sequential.seconds / mean:.1f}x faster than the sequential walk; "
        f"{mean - known.seconds:.2f} s over a walk that knew the listing ({known.seconds:.2f} s)"
    )


if __name__ == "__main__":
    main()
