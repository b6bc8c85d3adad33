"""Cost of keeping an account in step: an incremental sync against a full re-import, same data.

    .venv/bin/python benchmarks/sync_throughput.py            # 10,000 customers, 100 changed
    .venv/bin/python benchmarks/sync_throughput.py --help

The local Stripe sandbox, in a process of its own, is seeded with ``--customers`` customers on one
connected account (seeding records no events), answers every request after ``--latency-ms`` and
allows ``--rate-limit`` requests per second per key. The CRM store is the import benchmark's
in-memory store (``memory_store.py``) in a process of its own, holding ``--existing`` contacts.
Then, each run in a fresh process:

1. a ``keep_in_sync`` full import (``billing_contact_import``), with the events cursor taken when
   it starts and the sync state recorded when it completes, as the import engine does;
2. ``--changes`` customers that have a contact are edited in Stripe (city, street and name),
   through the API;
3. ``billing_contact_sync`` applies them;
4. a full re-import of the same account, the only way to pick the changes up without a sync.

Printed for the sync and the re-import: claim → completed seconds (the sync's claim is the
attempt it records on its state; the import's, its request's claim), the Stripe requests each
made (from the sandbox's request log), the contacts each wrote, and whether every changed
customer's contact holds its new values afterwards; then the targets and a one-line summary.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from import_throughput import ACCOUNT, SECRET_KEY, SEED, prepare_store, start_store

TARGET_SYNC_REQUESTS = 3
TARGET_SPEEDUP = 10.0
CITIES = ("Lisbon", "Porto", "Braga", "Faro", "Coimbra", "Aveiro", "Evora", "Sintra")


# --- the sandbox process ---------------------------------------------------------------------


def sandbox_process(conn: Connection, customers: int, latency_ms: float, rate_limit: float) -> None:
    """Serve a seeded sandbox; answer ``requests``, ``clear``, ``ids`` and ``stop`` on ``conn``."""
    from stripe_crm_pipelines.sandbox import SandboxServer

    server = SandboxServer(latency_ms=latency_ms, rate_limit=rate_limit).start()
    ids = server.state.seed_customers(customers, SEED, ACCOUNT)
    conn.send(server.url)
    while True:
        command = conn.recv()
        if command == "requests":
            conn.send(server.state.request_counts())
        elif command == "clear":
            server.state.clear_requests()
            conn.send(True)
        elif command == "ids":
            conn.send(ids)
        else:
            server.stop()
            conn.send(True)
            return


class Sandbox:
    def __init__(self, context, customers: int, latency_ms: float, rate_limit: float) -> None:
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=sandbox_process, args=(child, customers, latency_ms, rate_limit), daemon=True
        )
        self._process.start()
        self.url = self._conn.recv()

    def ask(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def stop(self) -> None:
        self.ask("stop")
        self._process.join(10)


# --- the measured processes ------------------------------------------------------------------


def _database(params: dict[str, Any]):
    from memory_store import RemoteDatabase

    database = RemoteDatabase(tuple(params["address"]), params["authkey"])
    database.connect()  # the run's ops execute in this thread
    return database


def _resources(database, params: dict[str, Any]) -> dict[str, Any]:
    from stripe_crm_pipelines.resources import MongoResource, StripeResource

    class BenchmarkMongo(MongoResource):
        def database(self):
            return database

    return {"mongo": BenchmarkMongo(), "stripe": StripeResource(api_base=params["url"])}


def import_process(conn: Connection, params: dict[str, Any]) -> None:
    """A keep_in_sync import (``billing_contact_import`` takes the events cursor when it starts
    and records the sync state when it completes)."""
    from dagster import DagsterInstance

    from stripe_crm_pipelines import store
    from stripe_crm_pipelines.billing_import.job import billing_contact_import

    database = _database(params)
    result = billing_contact_import.execute_in_process(
        run_config={
            "ops": {
                "claim_import_request": {
                    "config": {"import_id": str(params["import_id"]), "max_customers": params["n"]}
                },
                "sync_customers": {"config": {"requests_per_second": params["rate_limit"]}},
            }
        },
        resources=_resources(database, params),
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    request = database[store.QUEUES].find_one({"_id": params["import_id"]})
    [document] = database[store.IMPORT_RESULTS].find({"import_id": params["import_id"]})
    conn.send(
        {
            "success": result.success,
            "seconds": _seconds(request["claimed_at"], request.get("finished_at")),
            "added": document.get("records_added", 0),
            "updated": document.get("records_updated", 0),
        }
    )


def sync_process(conn: Connection, params: dict[str, Any]) -> None:
    """One ``billing_contact_sync`` run of the account's person contacts."""
    from dagster import DagsterInstance

    from stripe_crm_pipelines import store
    from stripe_crm_pipelines.billing_sync.job import billing_contact_sync
    from stripe_crm_pipelines.billing_sync.state import SYNC_STATE
    from stripe_crm_pipelines.billing_sync.syncer import SYNC_RESULT_NAME

    database = _database(params)
    result = billing_contact_sync.execute_in_process(
        run_config={
            "ops": {
                "sync_billing_contacts": {
                    "config": {
                        "account_id": str(params["account_id"]),
                        "requests_per_second": params["rate_limit"],
                    }
                }
            }
        },
        resources=_resources(database, params),
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    state = database[SYNC_STATE].find_one({"account_id": params["account_id"]})
    [document] = database[store.IMPORT_RESULTS].find(
        {"name": SYNC_RESULT_NAME, "run_id": result.run_id}
    )
    conn.send(
        {
            "success": result.success and document["status"] == "completed",
            "seconds": _seconds(state["last_attempt_at"], document["finished_at"]),
            "added": document["records_added"],
            "updated": document["records_updated"],
            "events_read": document["events_read"],
            "stripe_requests_counted": document["stripe_requests"],
        }
    )


def _seconds(start: datetime, end: datetime | None) -> float:
    return (end - start).total_seconds() if end is not None else float("nan")


def measure(context, target, params: dict[str, Any], sandbox: Sandbox, name: str) -> dict:
    """Run ``target`` in a fresh process; its answer plus the Stripe requests it made."""
    sandbox.ask("clear")
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
    answer["requests"] = sandbox.ask("requests")
    answer["stripe_requests"] = sum(answer["requests"].values())
    return answer


# --- the changes between syncs ---------------------------------------------------------------


def edit_customers(url: str, ids: list[str], changes: int) -> dict[str, dict[str, str]]:
    """Change ``changes`` customers through the API, as someone in Stripe's dashboard would;
    returns the new city and street of each."""
    from stripe_crm_pipelines.resources import StripeResource

    client = StripeResource(api_base=url).client(SECRET_KEY, ACCOUNT)
    rng = random.Random(SEED)
    edited: dict[str, dict[str, str]] = {}
    for number, customer_id in enumerate(rng.sample(ids, changes)):
        values = {"city": rng.choice(CITIES), "line1": f"{number + 1} Rua Nova"}
        client.v1.customers.update(
            customer_id, params={"address": values, "name": f"Changed {number}"}
        )
        edited[customer_id] = values
    return edited


def with_contacts(params: dict[str, Any], ids: list[str]) -> list[str]:
    """The customers the import gave a contact of their own (not merged into another customer's
    contact as a duplicate email), in ``ids`` order: those whose changes a sync writes."""
    from stripe_crm_pipelines import store

    held = {
        contact["stripe_customer_id"]
        for contact in _database(params)[store.CONTACTS].find(
            {"stripe_customer_id": {"$in": ids}}, {"stripe_customer_id": 1}
        )
    }
    return [customer_id for customer_id in ids if customer_id in held]


def contacts_in_step(params: dict[str, Any], edited: dict[str, dict[str, str]]) -> int:
    """How many edited customers' contacts hold the new city and street."""
    from stripe_crm_pipelines import store

    database = _database(params)
    contacts = database[store.CONTACTS].find(
        {"stripe_customer_id": {"$in": list(edited)}},
        {"stripe_customer_id": 1, "address": 1},
    )
    return sum(
        1
        for contact in contacts
        if (contact.get("address") or {}).get("city")
        == edited[contact["stripe_customer_id"]]["city"]
        and contact["address"].get("street") == edited[contact["stripe_customer_id"]]["line1"]
    )


def keep_in_sync(params: dict[str, Any]) -> None:
    """Make the prepared request a ``keep_in_sync`` one."""
    from stripe_crm_pipelines import store

    _database(params)[store.QUEUES].update_one(
        {"_id": params["import_id"]},
        {"$set": {"keep_in_sync": True, "deletion_policy": "keep"}},
    )


def queue_reimport(params: dict[str, Any]) -> Any:
    """A new pending request for the same account, as the CRM would write it."""
    from stripe_crm_pipelines import store

    database = _database(params)
    original = database[store.QUEUES].find_one({"_id": params["import_id"]})
    fields = ("source", "type", "account_id", "user_id", "parent_account", "client_id",
              "mappings", "new_contact", "keep_in_sync", "deletion_policy")  # fmt: skip
    request = {name: original[name] for name in fields if name in original}
    request.update(status="pending", in_progress=False, createdAt=datetime.now())
    return database[store.QUEUES].insert_one(request).inserted_id


# --- report -----------------------------------------------------------------------------------


def report(args, first: dict, sync: dict, reimport: dict, in_step: int) -> list[str]:
    speedup = reimport["seconds"] / sync["seconds"] if sync["seconds"] else float("inf")
    lines = [
        f"Sync throughput: {args.customers:,} customers, {args.changes:,} changed between "
        f"syncs, {args.latency_ms:g} ms pages, {args.rate_limit:g} requests/s",
        "",
        f"{'':34}{'sync':>12}{'full re-import':>16}{'ratio':>10}",
    ]

    def row(label: str, mine: str, theirs: str = "", ratio: str = "") -> None:
        lines.append(f"{label:34}{mine:>12}{theirs:>16}{ratio:>10}".rstrip())

    row("claim → completed seconds", f"{sync['seconds']:.2f}", f"{reimport['seconds']:.2f}",
        f"{speedup:.1f}x")  # fmt: skip
    row(
        "Stripe requests",
        str(sync["stripe_requests"]),
        str(reimport["stripe_requests"]),
        f"{reimport['stripe_requests'] / max(1, sync['stripe_requests']):.0f}x",
    )
    row("contacts added / updated", f"{sync['added']}/{sync['updated']}",
        f"{reimport['added']}/{reimport['updated']}")  # fmt: skip
    row("events read", str(sync["events_read"]), "-")
    lines.append(
        f"first keep_in_sync import: {first['seconds']:.2f} s, {first['stripe_requests']} Stripe "
        f"requests, {first['added']}/{first['updated']} added/updated"
    )
    lines.append(
        "Stripe requests by endpoint: sync "
        + ", ".join(f"{k} {v}" for k, v in sorted(sync["requests"].items()))
        + "; re-import "
        + ", ".join(f"{k} {v}" for k, v in sorted(reimport["requests"].items()))
    )
    lines.append("")
    checks = [
        (
            f"sync used {sync['stripe_requests']} Stripe request(s)",
            sync["stripe_requests"] <= TARGET_SYNC_REQUESTS,
            f"<= {TARGET_SYNC_REQUESTS}",
        ),
        (
            f"sync {speedup:.1f}x faster than the full re-import",
            speedup >= TARGET_SPEEDUP,
            f">= {TARGET_SPEEDUP:g}x",
        ),
        (
            f"{in_step}/{args.changes} changed customers' contacts hold their new values after "
            "the sync",
            in_step == args.changes,
            "all",
        ),
    ]
    lines.append("targets:")
    for text, met, target in checks:
        lines.append(f"  [{'met' if met else 'MISSED'}] {text} (target {target})")
    lines.append("")
    lines.append(
        f"summary: {args.changes:,} changes of {args.customers:,} customers synced in "
        f"{sync['seconds']:.2f} s with {sync['stripe_requests']} Stripe request(s); the full "
        f"re-import took {reimport['seconds']:.2f} s and {reimport['stripe_requests']} requests "
        f"({speedup:.1f}x slower)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark billing_contact_sync against a full re-import of the same account "
        "on the local Stripe sandbox and an in-memory store (see the module docstring)."
    )
    parser.add_argument("--customers", type=int, default=10_000, help="Stripe customers (10,000)")
    parser.add_argument(
        "--changes", type=int, default=100, help="customers changed between syncs (100)"
    )
    parser.add_argument(
        "--existing", type=int, default=None, help="existing contacts (default: customers / 2)"
    )
    parser.add_argument("--latency-ms", type=float, default=200.0, help="page latency (200)")
    parser.add_argument(
        "--rate-limit", type=float, default=25.0, help="sandbox requests/s per key (25)"
    )
    args = parser.parse_args(argv)
    if args.existing is None:
        args.existing = args.customers // 2
    if not 0 < args.changes <= args.customers:
        parser.error("--changes must be between 1 and --customers")

    context = multiprocessing.get_context("spawn")
    store_process, address, authkey = start_store(context)
    print(f"seeding {args.customers:,} customers ...", file=sys.stderr)
    sandbox = Sandbox(context, args.customers, args.latency_ms, args.rate_limit)
    try:
        prepared = prepare_store(address, authkey, args.customers, args.existing)
        params = {
            "address": address,
            "authkey": authkey,
            "url": sandbox.url,
            "n": args.customers,
            "rate_limit": args.rate_limit,
            **prepared,
        }
        keep_in_sync(params)
        print("running the keep_in_sync import ...", file=sys.stderr)
        first = measure(context, import_process, params, sandbox, "import")
        print(f"changing {args.changes} customers in Stripe ...", file=sys.stderr)
        edited = edit_customers(
            sandbox.url, with_contacts(params, sandbox.ask("ids")), args.changes
        )
        print("running billing_contact_sync ...", file=sys.stderr)
        sync = measure(context, sync_process, params, sandbox, "sync")
        in_step = contacts_in_step(params, edited)
        print("running the full re-import ...", file=sys.stderr)
        reimport_params = {**params, "import_id": queue_reimport(params)}
        reimport = measure(context, import_process, reimport_params, sandbox, "re-import")
    finally:
        sandbox.stop()
        store_process.kill()
    for line in report(args, first, sync, reimport, in_step):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
