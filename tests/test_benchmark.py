"""The throughput benchmark runs end to end and reports every figure (tiny sizes, not timed)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from bson import ObjectId
from pymongo import UpdateOne

ROOT = Path(__file__).resolve().parents[1]


def test_the_walk_schedule_benchmark_lists_every_customer_once_and_compares_with_a_walk():
    completed = subprocess.run(
        [
            sys.executable,
            "benchmarks/walk_schedule.py",
            "--customers",
            "1200",
            "--walks",
            "2",
            "--latency-ms",
            "40",
            "--rate-limit",
            "100",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("Walk schedule: 1,200 customers (12 full pages), 40 ms pages")
    walks = [line.split() for line in lines[2:4]]
    for _, seconds, _, requests, partial, empty, windows in walks:
        assert float(seconds) > 0
        # It fanned out (0.2 s of 40 ms pages): windows, each ending with a partial or empty
        # page, so more requests than pages.
        assert int(windows) > 1
        assert int(partial) + int(empty) >= 1
        assert int(requests) > 12
    # The baseline walks one page after another: a request per full page and the last one.
    assert lines[4].startswith("sequential walk (baseline, walk 0's customers): ")
    assert lines[4].endswith(", 12 requests")
    # 5 sequential pages of 40 ms (0.2 s), then the other 7 pages at once: 20 tokens are saved up
    # at 100/s, so 0.24 s and a request per page.
    assert lines[5] == (
        "a walk that knew the listing (computed: 5 sequential pages, then 7 windows of whole "
        "pages): 0.24 s, 2.00x the bound, 12 requests"
    )
    assert lines[-1].startswith("summary: walk of 1,200 customers ")
    assert "x the rate-limit bound" in lines[-1]
    assert lines[-1].endswith(" s over a walk that knew the listing (0.24 s)")


def test_a_walk_that_knew_the_listing_waits_only_for_tokens_after_its_sequential_start(
    monkeypatch,
):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from walk_schedule import known_listing_schedule

    # 200 ms pages at 25/s: two sequential pages (0.4 s), then the other 98 wait only for the
    # bucket, which holds 5 tokens then: the last goes (98 - 5) / 25 s later and takes 0.2 s.
    schedule = known_listing_schedule(10_000, 0.2, 25)
    assert schedule.sequential_pages == 2
    assert schedule.requests == 100
    assert abs(schedule.seconds - (0.4 + (98 - 5) / 25 + 0.2)) < 1e-6
    # Too few windows leave tokens unused: one window is a sequential walk.
    assert schedule.windows >= 5
    # An account the sequential start lists alone, and one that needs a window more.
    assert known_listing_schedule(150, 0.2, 25).requests == 2
    assert abs(known_listing_schedule(150, 0.2, 25).seconds - 0.4) < 1e-6
    assert known_listing_schedule(250, 0.2, 25).requests == 3
    assert abs(known_listing_schedule(250, 0.2, 25).seconds - 0.6) < 1e-6


def test_the_benchmark_runs_the_import_and_the_seed_algorithm_on_the_same_data():
    completed = subprocess.run(
        [
            sys.executable,
            "benchmarks/import_throughput.py",
            "--customers",
            "250",
            "--latency-ms",
            "5",
            "--rate-limit",
            "100",
            "--store-latency-ms",
            "0.5",
            "--memory-customers",
            "400",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = completed.stdout.splitlines()
    assert lines[0] == (
        "Import throughput: 250 customers, 125 existing contacts (62 matching), 5 ms pages, "
        "100 requests/s, 0.5 ms network per store round trip"
    )
    rows = {line[:34].strip(): line[34:].split() for line in lines[2:18] if line.strip()}
    assert rows["rate-limit bound, s"] == ["0.03"]  # 3 pages at 100 requests/s
    # Both imported the same 250 customers, one page at a time for the seed's algorithm.
    assert rows["Stripe list requests (429s)"][2:] == ["3", "(0)"]
    seed_round_trips = float(rows["MongoDB round trips / 1,000"][1].replace(",", ""))
    # A find and a write per customer, then the result and the queue entry.
    assert seed_round_trips == (2 * 250 + 2) * 1000 / 250
    # The import's fixed two dozen (claim, key, heartbeat, email keys, result) dominate here.
    assert float(rows["MongoDB round trips / 1,000"][0]) < 200
    assert float(rows["claim → first Stripe request, s"][0]) >= 0
    added, updated = (int(n) for n in rows["contacts added / updated"][0].split("/"))
    assert 0 < added + updated <= 250
    assert any("the rate-limit bound caps any import at" in line for line in lines)
    targets = [line for line in lines if line.startswith("  [")]
    assert len(targets) == 4
    assert "the rate-limit bound 0.0 s at 250 customers" in targets[0]
    assert "at 400 customers" in targets[1]
    assert "peak RSS" in targets[3]
    assert lines[-1].startswith("summary: 250 customers imported in ")
    assert "x the rate-limit bound; 400 in " in lines[-1]


def test_the_benchmark_store_matches_the_import_lookup_as_mongomock_does(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from memory_store import _matching
    from mongomock.filtering import filter_applies

    documents = [
        {"type": "person", "email_key": "a@x.com"},
        {"type": "business", "email_key": "a@x.com"},
        {"type": "business", "stripe_customer_id": "cus_1"},
        {"type": "person", "stripe_customer_id": "cus_2"},
        {"type": "person", "email": "b@x.com"},
        {"type": "person", "email": ["b@x.com"], "email_key": None},
    ]
    queries = [
        {
            "$or": [
                {"stripe_customer_id": {"$in": ["cus_1"]}},
                {"type": "person", "email_key": {"$in": ["a@x.com"]}},
            ]
        },
        {"type": "person", "email": {"$type": "string"}, "email_key": None},
        {"email_key": None},
    ]

    for query in queries:
        fast = list(_matching(query, documents))
        assert fast == [d for d in documents if filter_applies(query, d)], query


def strict(value):
    """A value with its types and key order spelled out, so equal means identical."""
    if dataclasses.is_dataclass(value):
        return (type(value).__name__, strict(dataclasses.asdict(value)))
    if hasattr(value, "raw_result"):  # the client's connection number aside
        result = {key: item for key, item in value.raw_result.items() if key != "connectionId"}
        return (type(value).__name__, strict(result))
    if isinstance(value, dict):
        return (type(value).__name__, [(key, strict(item)) for key, item in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__name__, [strict(item) for item in value])
    return (type(value).__name__, value)


def test_the_benchmark_store_copies_as_mongomock_does(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import mongomock.collection
    import mongomock.helpers
    from memory_store import _fast_copy_field, fast_patch_datetime_awareness, fast_timezone_aware

    aware = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    values = [
        {"a": [1, 2.5, None, True, "x", ObjectId()], "b": {"c": aware, "d": (1, 2)}},
        OrderedDict([("z", 1), ("a", {"n": aware.replace(tzinfo=None)})]),
        ["é", b"bytes", {"when": aware}],
        aware,
        7,
    ]

    for value in values:
        assert strict(fast_patch_datetime_awareness(value)) == strict(
            mongomock.helpers.patch_datetime_awareness_in_document(value)
        )
        assert strict(fast_timezone_aware(value)) == strict(
            mongomock.helpers.make_datetime_timezone_aware_in_document(value)
        )
        assert strict(_fast_copy_field(value, dict)) == strict(
            mongomock.collection._copy_field(value, dict)
        )


def test_the_benchmark_store_writes_and_answers_as_mongomock_does(monkeypatch):
    """The import's own writes and reads, and the asset checks, on the benchmark store and on
    plain mongomock: every document stored and every answer are identical."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import memory_store
    import mongomock
    import mongomock.database

    from stripe_crm_pipelines import store
    from stripe_crm_pipelines.billing_import import upsert
    from stripe_crm_pipelines.billing_import.mapping import parse_mappings
    from stripe_crm_pipelines.contact_health import duplicate_values
    from stripe_crm_pipelines.sandbox.data import CustomerGenerator

    customers = [c.to_api() for c in CustomerGenerator(5, "acct_1Equal").generate(400)][::-1]
    customers[3]["name"] = "Zoë Ångström"
    customers[4]["address"] = None
    account, other_account, owner = ObjectId(), ObjectId(), ObjectId()
    emails = [customer["email"] for customer in customers if customer["email"]]
    existing = [
        *({"parent_account": account, "type": "person", "email": e.upper()} for e in emails[::7]),
        *({"parent_account": account, "type": "person", "email": e} for e in emails[:40:9]),
        {"parent_account": account, "type": "business", "stripe_customer_id": customers[1]["id"]},
        {"parent_account": account, "type": "person", "email": emails[2], "address": "a string"},
        {"parent_account": account, "type": "person", "email": [emails[5]], "tags": ["x"]},
        {"parent_account": other_account, "type": "person", "email": emails[0]},
    ]
    target = upsert.UpsertTarget(
        account_id=account,
        contact_type="person",
        user_id=owner,
        new_contact=True,
        mappings=parse_mappings({"name": "name", "phone": "phone", "address-city": "address.city"}),
        import_id=ObjectId(),
    )
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

    class FixedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return when

    def run(collection_class) -> list:
        monkeypatch.setattr(mongomock.database, "Collection", collection_class)
        ids = iter(range(1 << 40, 1 << 41))
        monkeypatch.setattr(upsert, "ObjectId", lambda: ObjectId(f"{next(ids):024x}"))
        monkeypatch.setattr(upsert, "datetime", FixedDatetime)
        db = mongomock.MongoClient(tz_aware=True)["crm"]
        store.ensure_indexes(db)
        contacts, changes = db[store.CONTACTS], db[store.IMPORT_CHANGES]
        contacts.insert_many([{"_id": ObjectId(f"{n:024x}"), **c} for n, c in enumerate(existing)])
        answers: list = [upsert.backfill_email_keys(contacts, target)]
        seen = upsert.SeenCustomers()
        for start in range(0, len(customers), 150):
            page = customers[start : start + 150]
            answers.append(upsert.upsert_customers(contacts, page, target, seen, changes))
        answers.append(contacts.update_one({"email": emails[2]}, {"$set": {"address.city": "X"}}))
        answers.append(
            contacts.bulk_write(
                [
                    UpdateOne({"_id": ObjectId(f"{0:024x}")}, {"$set": {"phone": "1"}}),
                    UpdateOne(
                        {"email_key": "nobody@x.com"},
                        {"$set": {"a": 1}, "$setOnInsert": {"_id": "new"}},
                        upsert=True,
                    ),
                ],
                ordered=False,
            ).bulk_api_result
        )
        for key in ("stripe_customer_id", "email_key"):
            answers.append(duplicate_values(db, account, key))
        answers.append(list(contacts.find({"type": "person"}, {"email": 1, "_id": 0})))
        return [
            strict(answers),
            strict(list(contacts._store._documents.values())),
            strict(list(changes._store._documents.values())),
        ]

    with monkeypatch.context() as patched:
        patched.setattr(
            mongomock.helpers,
            "patch_datetime_awareness_in_document",
            memory_store.fast_patch_datetime_awareness,
        )
        patched.setattr(
            mongomock.helpers,
            "make_datetime_timezone_aware_in_document",
            memory_store.fast_timezone_aware,
        )
        patched.setattr(mongomock.collection, "_copy_field", memory_store._fast_copy_field)
        fast = run(memory_store.IndexedCollection)
    plain = run(mongomock.Collection)

    assert fast == plain


def test_the_benchmark_store_server_has_no_collector_pauses_and_keeps_each_threads_connection(
    monkeypatch,
):
    import multiprocessing
    import threading

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from memory_store import RemoteDatabase, serve

    context = multiprocessing.get_context("spawn")
    ready, child = context.Pipe()
    server = context.Process(target=serve, args=(child, b"benchmark-test"), daemon=True)
    server.start()
    try:
        assert ready.poll(60), "the store server did not start"
        db = RemoteDatabase(ready.recv(), b"benchmark-test")
        db["contacts"].insert_one({"email": "a@x.com"})
        writer = threading.Thread(target=lambda: db["contacts"].insert_one({"email": "b@x.com"}))
        writer.start()
        writer.join()

        # Collections over the stored documents would pause whichever call is in progress.
        assert db.connections[0].collector_enabled() is False
        # The writer thread's connection outlives the thread, as a MongoClient's pool does:
        # it still answers, and nothing was torn down when the thread ended.
        assert len(db.connections) == 2
        assert db.connections[1].call("contacts", "count_documents", ({},), {}) == 2
    finally:
        server.kill()
        server.join(10)
