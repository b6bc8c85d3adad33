"""Throughput of ``billing_contact_import`` against the seed's algorithm, on the same data.

    .venv/bin/python benchmarks/import_throughput.py            # 10,000 customers
    .venv/bin/python benchmarks/import_throughput.py --help

The local Stripe sandbox, in a process of its own, is seeded with ``--customers`` customers on one
connected account, answers every request after ``--latency-ms`` and allows ``--rate-limit``
requests per second per key (429 with ``Retry-After`` beyond), as Stripe does for test keys. The
CRM store is in-memory (mongomock with hash indexes, ``memory_store.py``) in a process of its own,
as MongoDB would be, holding ``--existing`` contacts of the account, half of them with the email
of a customer; ``--store-latency-ms`` adds a network's round-trip time to every call to it, as
for a MongoDB on another host. Then, each in a fresh process and on a freshly reset store:

1. the real ``billing_contact_import`` job (claim → sync → record) with its production defaults;
2. the seed's algorithm (``seed_baseline.py``): one sequential walk with SDK objects, per
   customer a find then an insert or update;
3. the import again with ``--memory-customers`` customers (100,000), for its time and peak
   memory at that size.

An import's time is claim → completed: from its request's ``claimed_at`` to its ``finished_at``
(recording the result in the asset catalog, with the asset checks, follows and is shown apart).
The rate-limit bound is the fewest seconds any import can take: one request per 100 customers
at ``--rate-limit`` requests/s (4.0 s for 10,000 customers at 25/s).

Printed for each: wall seconds, customers/s, Stripe list requests, the fetch phase (first to
last Stripe request) and what comes before and after it, MongoDB round trips per 1,000
customers (every collection method call is one), peak RSS, and the ratios; then the targets
(the import within 1.15x of the rate-limit bound at both sizes, peak RSS at 100,000 at most 1.3x
that at 10,000, at most 5 round trips per 1,000 customers) and a one-line summary. ``--profile``
adds a timeline, the CPU seconds of each process, a cProfile of the import's op thread and the
store time per collection method.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import multiprocessing
import pstats
import random
import resource
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from bson import ObjectId

ACCOUNT = "acct_1BenchmarkThroughput"
SECRET_KEY = "sk_test_benchmark_import_throughput"
SEED = 20_260_101
PAGE_SIZE = 100
MAPPINGS = {
    "name": "name",
    "phone": "phone",
    "address-street": "address.street",
    "address-city": "address.city",
    "address-state": "address.state_province",
    "address-postal_code": "address.zip",
    "address-country": "address.country",
    "shipping-address-city": "shipping.address.city",
}

TARGET_BOUND_RATIO = 1.15
"""Import (claim → completed) at most this many times the rate-limit bound, at either size."""
TARGET_ROUND_TRIPS = 5.0
TARGET_RSS_RATIO = 1.3


@dataclass
class RunFigures:
    """What one run of the import or of the baseline measured."""

    name: str
    customers: int
    wall_seconds: float
    round_trips: int
    round_trip_seconds: float
    peak_rss_bytes: int
    stripe_requests: int = 0
    throttled: int = 0
    fetch_seconds: float = 0.0
    first_request_seconds: float | None = None
    """Claim → first Stripe request."""
    tail_seconds: float | None = None
    """End of the last Stripe request → completed."""
    added: int = 0
    updated: int = 0
    detail: str = ""

    def bound_ratio(self, rate_limit: float) -> float:
        """Wall seconds over the rate-limit bound: the pages at ``rate_limit`` requests/s."""
        return self.wall_seconds / rate_limit_bound(self.customers, rate_limit)

    @property
    def per_second(self) -> float:
        return self.customers / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def round_trips_per_1000(self) -> float:
        return self.round_trips * 1000 / self.customers if self.customers else 0.0


def rate_limit_bound(customers: int, rate_limit: float) -> float:
    """The fewest seconds any import can list ``customers`` in: one request per page."""
    return math.ceil(customers / PAGE_SIZE) / rate_limit


# --- the sandbox process ---------------------------------------------------------------------


def sandbox_process(conn: Connection, customers: int, latency_ms: float, rate_limit: float) -> None:
    """Serve a seeded sandbox; answer ``stats``, ``clear`` and ``stop`` on ``conn``."""
    from stripe_crm_pipelines.sandbox import SandboxServer

    server = SandboxServer(latency_ms=latency_ms, rate_limit=rate_limit).start()
    server.state.seed_customers(customers, SEED, ACCOUNT)
    conn.send(server.url)
    while True:
        command = conn.recv()
        if command == "stats":
            listing = server.state.requests(path="/v1/customers", method="GET")
            conn.send(
                {
                    "requests": len(listing),
                    "throttled": sum(1 for entry in listing if entry["status"] == 429),
                    "first": min((e["time"] for e in listing), default=0.0),
                    "last": max((e["time"] + e["duration_ms"] / 1000 for e in listing), default=0),
                    "cpu": time.process_time(),
                }
            )
        elif command == "clear":
            server.state.clear_requests()
            conn.send(time.process_time())
        else:
            server.stop()
            conn.send(True)
            return


class Sandbox:
    def __init__(self, context, customers: int, latency_ms: float, rate_limit: float) -> None:
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=sandbox_process,
            args=(child, customers, latency_ms, rate_limit),
            daemon=True,
        )
        self._process.start()
        self.url = self._conn.recv()

    def ask(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def stop(self) -> None:
        self.ask("stop")
        self._process.join(10)


# --- the store ---------------------------------------------------------------------------------


def start_store(context) -> tuple[Any, tuple[str, int], bytes]:
    from memory_store import serve

    authkey = secrets.token_bytes(16)
    ready, child = context.Pipe()
    process = context.Process(target=serve, args=(child, authkey), daemon=True)
    process.start()
    return process, ready.recv(), authkey


def prepare_store(address, authkey: bytes, customers: int, existing: int) -> dict[str, Any]:
    """Reset the store to an account, its key, ``existing`` contacts and one pending request."""
    from memory_store import RemoteDatabase

    from stripe_crm_pipelines import store
    from stripe_crm_pipelines.sandbox.data import CustomerGenerator

    db = RemoteDatabase(address, authkey)
    db.reset()
    store.ensure_indexes(db)
    account_id = db[store.ACCOUNTS].insert_one({"name": "Benchmark Agency"}).inserted_id
    db[store.STRIPE_KEYS].insert_one(
        {
            "account_id": account_id,
            "connected_apps": ["billing"],
            "token": {"access_token": SECRET_KEY, "stripe_user_id": ACCOUNT},
        }
    )
    emails = [c.email for c in CustomerGenerator(SEED, ACCOUNT).generate(customers) if c.email]
    rng = random.Random(SEED)
    overlapping = rng.sample(emails, min(len(emails), existing // 2))
    owner = ObjectId()
    contacts = [
        {"parent_account": account_id, "type": "person", "email": email, "owner": owner}
        for email in overlapping
    ] + [
        {
            "parent_account": account_id,
            "type": "person",
            "email": f"crm.only{index}@example.org",
            "owner": owner,
        }
        for index in range(existing - len(overlapping))
    ]
    for start in range(0, len(contacts), 5000):
        db[store.CONTACTS].insert_many(contacts[start : start + 5000])
    import_id = (
        db[store.QUEUES]
        .insert_one(
            {
                "status": "pending",
                "source": "billing-contacts",
                "in_progress": False,
                "type": "contacts",
                "account_id": account_id,
                "user_id": owner,
                "parent_account": account_id,
                "client_id": ObjectId(),
                "mappings": MAPPINGS,
                "new_contact": True,
                "createdAt": datetime.now(UTC),
            }
        )
        .inserted_id
    )
    return {"account_id": account_id, "owner": owner, "import_id": import_id}


# --- the measured processes -----------------------------------------------------------------


def import_process(conn: Connection, params: dict[str, Any]) -> None:
    """Run ``billing_contact_import`` once and send back its figures."""
    from dagster import DagsterInstance
    from memory_store import RemoteDatabase, RoundTrips

    from stripe_crm_pipelines import store
    from stripe_crm_pipelines.billing_import.job import billing_contact_import
    from stripe_crm_pipelines.resources import MongoResource, StripeResource

    round_trips = RoundTrips()
    address, authkey = tuple(params["address"]), params["authkey"]
    # One client per process, as store.connect() caches its MongoClient.
    database = RemoteDatabase(
        address, authkey, round_trips, network_seconds=params["store_latency_ms"] / 1000
    )
    database.connect()  # the run's ops execute in this thread

    class BenchmarkMongo(MongoResource):
        def database(self):
            return database

    sync_config = {
        name: params[name]
        for name in (
            "fetch_concurrency",
            "write_batch_size",
            "fan_out_after_seconds",
            "requests_per_second",
        )
        if params.get(name) is not None
    }
    run_config: dict[str, Any] = {
        "ops": {
            "claim_import_request": {
                "config": {"import_id": str(params["import_id"]), "max_customers": params["n"]}
            },
            "sync_customers": {"config": sync_config},
        }
    }
    profile = cProfile.Profile() if params.get("profile") else None
    store_cpu = database.cpu_seconds()
    own_cpu = _cpu_seconds()
    started = time.perf_counter()
    if profile:
        profile.enable()
    instance = DagsterInstance.ephemeral()
    result = billing_contact_import.execute_in_process(
        run_config=run_config,
        resources={"mongo": BenchmarkMongo(), "stripe": StripeResource(api_base=params["url"])},
        instance=instance,
        raise_on_error=False,
    )
    ended = datetime.now(UTC)
    if profile:
        profile.disable()
    run_seconds = time.perf_counter() - started
    cpu = {"import": _cpu_seconds() - own_cpu, "store": database.cpu_seconds() - store_cpu}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    counted = (round_trips.count, round_trips.seconds)
    remote = RemoteDatabase(address, authkey)
    [document] = remote[store.IMPORT_RESULTS].find({})
    request = remote[store.QUEUES].find_one({"_id": params["import_id"]})
    profile_text = ""
    if profile:
        stream = io.StringIO()
        for line in instance_logs(instance, result.run_id):
            stream.write(line + "\n")
        stats = pstats.Stats(profile, stream=stream).sort_stats("cumulative")
        stats.print_stats(r"billing_import|memory_store|threading.py.*\(wait\)", 30)
        stream.write("store round trips by collection method:\n" + round_trips.breakdown() + "\n")
        profile_text = stream.getvalue()
    conn.send(
        {
            "success": result.success,
            # The import ends when its request is completed; recording it in the asset
            # catalog (the asset checks) follows.
            "wall": (request["finished_at"] - request["claimed_at"]).total_seconds(),
            "claimed": request["claimed_at"].timestamp(),
            "finished": request["finished_at"].timestamp(),
            "recorded": (ended - request["finished_at"]).total_seconds(),
            "run_seconds": run_seconds,
            "cpu": cpu,
            "peak": peak,
            "round_trips": counted,
            "customers": document.get("customers_fetched", 0),
            "added": document.get("records_added", 0),
            "updated": document.get("records_updated", 0),
            "status": document.get("status"),
            "run_started": instance.all_logs(result.run_id)[0].timestamp,
            "profile": profile_text,
        }
    )


def instance_logs(instance, run_id: str) -> list[str]:
    """When each step started and ended and what it logged, relative to the run's start."""
    entries = instance.all_logs(run_id)
    start = entries[0].timestamp
    lines = ["timeline of the import run (seconds from run start):"]
    for entry in entries:
        event = entry.dagster_event
        kind = event.event_type_value if event else "LOG"
        if kind in ("STEP_START", "STEP_SUCCESS", "LOG", "RUN_SUCCESS"):
            text = entry.user_message if kind == "LOG" else f"{kind} {entry.step_key or ''}"
            lines.append(f"  {entry.timestamp - start:7.2f}  {text[:110]}")
    return lines


def baseline_process(conn: Connection, params: dict[str, Any]) -> None:
    """Run the seed's algorithm once and send back its figures."""
    from memory_store import RemoteDatabase, RoundTrips
    from seed_baseline import run_seed_import

    from stripe_crm_pipelines.resources import StripeResource

    round_trips = RoundTrips()
    db = RemoteDatabase(
        tuple(params["address"]),
        params["authkey"],
        round_trips,
        network_seconds=params["store_latency_ms"] / 1000,
    )
    db.connect()
    client = StripeResource(api_base=params["url"]).client(SECRET_KEY, ACCOUNT)
    started = time.perf_counter()
    outcome = run_seed_import(
        client,
        db,
        account_id=params["account_id"],
        owner=params["owner"],
        mappings=MAPPINGS,
        new_contact=True,
        import_id=params["import_id"],
    )
    wall = time.perf_counter() - started
    conn.send(
        {
            "success": outcome.errors == 0,
            "wall": wall,
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "round_trips": (round_trips.count, round_trips.seconds),
            "customers": outcome.customers,
            "added": outcome.added,
            "updated": outcome.updated,
        }
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(context, target, params: dict[str, Any], sandbox: Sandbox, name: str) -> RunFigures:
    sandbox_cpu = sandbox.ask("clear")
    receive, child = context.Pipe()
    process = context.Process(target=target, args=(child, params))
    process.start()
    while not receive.poll(1):
        if not process.is_alive():
            raise SystemExit(f"{name}: its process died (exit code {process.exitcode})")
    answer = receive.recv()
    process.join()
    if not answer["success"]:
        raise SystemExit(f"{name} failed: {answer}")
    stats = sandbox.ask("stats")
    figures = RunFigures(
        name=name,
        customers=answer["customers"],
        wall_seconds=answer["wall"],
        round_trips=answer["round_trips"][0],
        round_trip_seconds=answer["round_trips"][1],
        peak_rss_bytes=answer["peak"],
        stripe_requests=stats["requests"],
        throttled=stats["throttled"],
        fetch_seconds=stats["last"] - stats["first"],
        first_request_seconds=stats["first"] - answer["claimed"] if "claimed" in answer else None,
        tail_seconds=answer["finished"] - stats["last"] if "finished" in answer else None,
        added=answer["added"],
        updated=answer["updated"],
    )
    if "run_seconds" in answer:
        figures.detail = (
            f"wall seconds are claim to completed (the request's finished_at); recording the "
            f"result and the asset checks took {answer['recorded']:.2f} s more, the whole "
            f"execute_in_process call {answer['run_seconds']:.2f} s"
        )
    if answer.get("profile"):
        started = answer["run_started"]
        cpu = answer["cpu"]
        params["profile_text"] = (
            f"Stripe requests from {stats['first'] - started:.2f} s to "
            f"{stats['last'] - started:.2f} s after the run started\n"
            f"CPU seconds during the run: import process {cpu['import']:.2f}, store server "
            f"{cpu['store']:.2f}, Stripe sandbox {stats['cpu'] - sandbox_cpu:.2f}\n"
            + answer["profile"]
        )
    return figures


# --- report -----------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    ours: RunFigures,
    seed: RunFigures | None,
    large: RunFigures | None,
) -> list[str]:
    bound = rate_limit_bound(args.customers, args.rate_limit)
    lines = [
        f"Import throughput: {args.customers:,} customers, {args.existing:,} existing contacts "
        f"({args.existing // 2:,} matching), {args.latency_ms:g} ms pages, "
        f"{args.rate_limit:g} requests/s"
        + (
            f", {args.store_latency_ms:g} ms network per store round trip"
            if args.store_latency_ms
            else ""
        ),
        "",
        f"{'':34}{'import':>14}{'seed algorithm':>16}{'ratio':>10}",
    ]

    def row(label: str, mine: str, theirs: str = "", ratio: str = "") -> None:
        lines.append(f"{label:34}{mine:>14}{theirs:>16}{ratio:>10}".rstrip())

    row(
        "wall seconds",
        f"{ours.wall_seconds:.2f}",
        f"{seed.wall_seconds:.2f}" if seed else "-",
        f"{seed.wall_seconds / ours.wall_seconds:.1f}x" if seed else "",
    )
    row("  rate-limit bound, s", f"{bound:.2f}")
    row("customers/s", f"{ours.per_second:,.0f}", f"{seed.per_second:,.0f}" if seed else "-")
    row(
        "Stripe list requests (429s)",
        f"{ours.stripe_requests} ({ours.throttled})",
        f"{seed.stripe_requests} ({seed.throttled})" if seed else "-",
    )
    row(
        "fetch phase seconds",
        f"{ours.fetch_seconds:.2f}",
        f"{seed.fetch_seconds:.2f}" if seed else "-",
        f"{seed.fetch_seconds / ours.fetch_seconds:.1f}x" if seed else "",
    )
    row("  claim → first Stripe request, s", f"{ours.first_request_seconds:.2f}")
    row("  last Stripe request → done, s", f"{ours.tail_seconds:.2f}")
    row(
        "MongoDB round trips / 1,000",
        f"{ours.round_trips_per_1000:.1f}",
        f"{seed.round_trips_per_1000:,.0f}" if seed else "-",
        f"{seed.round_trips_per_1000 / ours.round_trips_per_1000:,.0f}x" if seed else "",
    )
    row(
        "  time in MongoDB calls, s",
        f"{ours.round_trip_seconds:.2f}",
        f"{seed.round_trip_seconds:.2f}" if seed else "-",
    )
    row(
        "peak RSS MB",
        f"{ours.peak_rss_bytes / 2**20:.0f}",
        f"{seed.peak_rss_bytes / 2**20:.0f}" if seed else "-",
    )
    row(
        "contacts added / updated",
        f"{ours.added}/{ours.updated}",
        f"{seed.added}/{seed.updated}" if seed else "-",
    )
    lines.append(f"import: {ours.detail}")
    if seed:
        # No import can list the customers faster than the rate limit allows.
        lines.append(
            f"seed algorithm: {seed.wall_seconds / ours.wall_seconds:.1f}x the import's time; "
            f"the rate-limit bound caps any import at {seed.wall_seconds / bound:.1f}x on this run"
        )
    lines.append("")
    checks = [
        (
            f"import {ours.wall_seconds:.2f} s = {ours.bound_ratio(args.rate_limit):.2f}x the "
            f"rate-limit bound {bound:.1f} s at {ours.customers:,} customers",
            ours.bound_ratio(args.rate_limit) <= TARGET_BOUND_RATIO,
            f"<= {TARGET_BOUND_RATIO}x",
        ),
        (
            f"{ours.round_trips_per_1000:.1f} MongoDB round trips per 1,000 customers",
            ours.round_trips_per_1000 <= TARGET_ROUND_TRIPS,
            f"<= {TARGET_ROUND_TRIPS:g}",
        ),
    ]
    if large:
        large_bound = rate_limit_bound(large.customers, args.rate_limit)
        ratio = large.peak_rss_bytes / ours.peak_rss_bytes
        checks[1:1] = [
            (
                f"import {large.wall_seconds:.1f} s = {large.bound_ratio(args.rate_limit):.2f}x "
                f"the rate-limit bound {large_bound:.1f} s at {large.customers:,} customers "
                f"(first Stripe request {large.first_request_seconds:.2f} s after the claim, "
                f"done {large.tail_seconds:.2f} s after the last; "
                f"{large.round_trips_per_1000:.1f} round trips/1,000)",
                large.bound_ratio(args.rate_limit) <= TARGET_BOUND_RATIO,
                f"<= {TARGET_BOUND_RATIO}x",
            ),
        ]
        checks.append(
            (
                f"peak RSS {large.peak_rss_bytes / 2**20:.0f} MB at {large.customers:,} customers"
                f" = {ratio:.2f}x the {ours.customers:,}-customer run",
                ratio <= TARGET_RSS_RATIO,
                f"<= {TARGET_RSS_RATIO}x",
            )
        )
    lines.append("targets:")
    for text, met, target in checks:
        lines.append(f"  [{'met' if met else 'MISSED'}] {text} (target {target})")
    lines.append("")
    summary = (
        f"summary: {ours.customers:,} customers imported in {ours.wall_seconds:.2f} s "
        f"({ours.per_second:,.0f}/s), import {ours.bound_ratio(args.rate_limit):.2f}x the "
        f"rate-limit bound"
    )
    if large:
        summary += (
            f"; {large.customers:,} in {large.wall_seconds:.1f} s, "
            f"{large.bound_ratio(args.rate_limit):.2f}x"
        )
    if seed:
        summary += (
            f"; {seed.wall_seconds / ours.wall_seconds:.1f}x faster than the seed algorithm "
            f"({seed.wall_seconds:.1f} s)"
        )
    summary += f"; {ours.round_trips_per_1000:.1f} MongoDB round trips/1,000"
    if large:
        summary += f"; RSS {large.peak_rss_bytes / ours.peak_rss_bytes:.2f}x at {large.customers:,}"
    lines.append(summary)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark billing_contact_import against the seed's algorithm on the local "
        "Stripe sandbox and an in-memory store (see the module docstring)."
    )
    parser.add_argument("--customers", type=int, default=10_000, help="Stripe customers (10,000)")
    parser.add_argument(
        "--existing", type=int, default=None, help="existing contacts (default: customers / 2)"
    )
    parser.add_argument("--latency-ms", type=float, default=200.0, help="page latency (200)")
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=25.0,
        help="sandbox requests/s per key, and the import's requests_per_second (25)",
    )
    parser.add_argument(
        "--store-latency-ms",
        type=float,
        default=0.0,
        help="network time added to every store round trip, as to a MongoDB on another host "
        "(0: the in-memory store's own cost only)",
    )
    parser.add_argument(
        "--memory-customers",
        type=int,
        default=100_000,
        help="customers of the second import, timed against the rate-limit bound, whose peak RSS "
        "is compared (100,000; 0: skip)",
    )
    parser.add_argument(
        "--skip-baseline", action="store_true", help="do not run the seed's algorithm"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="fetch_concurrency config")
    parser.add_argument("--batch-size", type=int, default=None, help="write_batch_size config")
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile of the import's op thread"
    )
    args = parser.parse_args(argv)
    if args.existing is None:
        args.existing = args.customers // 2

    context = multiprocessing.get_context("spawn")
    store_process, address, authkey = start_store(context)
    try:
        ours, seed = run_pair(context, args, address, authkey)
        large = None
        if args.memory_customers:
            large = run_import_only(context, args, address, authkey, args.memory_customers)
    finally:
        store_process.kill()
    for line in report(args, ours, seed, large):
        print(line)
    if args.profile and getattr(args, "profile_text", ""):
        print("\nprofile of the import's op thread (cumulative):", file=sys.stderr)
        print(args.profile_text, file=sys.stderr)
    return 0


def _params(args, address, authkey, url: str, prepared: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "address": address,
        "authkey": authkey,
        "url": url,
        "n": n,
        # The sandbox's limit, which the key's default (25/s for test keys) need not be.
        "requests_per_second": args.rate_limit,
        "fetch_concurrency": args.concurrency,
        "write_batch_size": args.batch_size,
        "profile": args.profile,
        "store_latency_ms": args.store_latency_ms,
        **prepared,
    }


def run_pair(context, args, address, authkey) -> tuple[RunFigures, RunFigures | None]:
    print(f"seeding {args.customers:,} customers ...", file=sys.stderr)
    sandbox = Sandbox(context, args.customers, args.latency_ms, args.rate_limit)
    try:
        prepared = prepare_store(address, authkey, args.customers, args.existing)
        print("running billing_contact_import ...", file=sys.stderr)
        params = _params(args, address, authkey, sandbox.url, prepared, args.customers)
        ours = measure(context, import_process, params, sandbox, "import")
        args.profile_text = params.get("profile_text", "")
        seed = None
        if not args.skip_baseline:
            prepared = prepare_store(address, authkey, args.customers, args.existing)
            print("running the seed's algorithm ...", file=sys.stderr)
            params = _params(args, address, authkey, sandbox.url, prepared, args.customers)
            seed = measure(context, baseline_process, params, sandbox, "seed algorithm")
        return ours, seed
    finally:
        sandbox.stop()


def run_import_only(context, args, address, authkey, customers: int) -> RunFigures:
    print(f"seeding {customers:,} customers for the memory check ...", file=sys.stderr)
    sandbox = Sandbox(context, customers, args.latency_ms, args.rate_limit)
    try:
        existing = args.existing * customers // max(1, args.customers)
        prepared = prepare_store(address, authkey, customers, existing)
        print(f"running billing_contact_import on {customers:,} customers ...", file=sys.stderr)
        params = _params(args, address, authkey, sandbox.url, prepared, customers)
        params["profile"] = False
        return measure(context, import_process, params, sandbox, "import (memory check)")
    finally:
        sandbox.stop()


if __name__ == "__main__":
    sys.exit(main())
