"""The throughput benchmark runs end to end and reports every figure (tiny sizes, not timed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
            "0",
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
    rows = {line[:34].strip(): line[34:].split() for line in lines[2:12] if line.strip()}
    # Both imported the same 250 customers, one page at a time for the seed's algorithm.
    assert rows["Stripe list requests (429s)"][2:] == ["3", "(0)"]
    seed_round_trips = float(rows["MongoDB round trips / 1,000"][1].replace(",", ""))
    # A find and a write per customer, then the result and the queue entry.
    assert seed_round_trips == (2 * 250 + 2) * 1000 / 250
    assert float(rows["MongoDB round trips / 1,000"][0]) < 100
    added, updated = (int(n) for n in rows["contacts added / updated"][0].split("/"))
    assert 0 < added + updated <= 250
    targets = [line for line in lines if line.startswith("  [")]
    assert len(targets) == 5
    assert any("the rate-limit bound caps any import at" in line for line in targets)
    assert lines[-1].startswith("summary: 250 customers imported in ")


def test_the_benchmark_store_matches_the_import_lookup_as_mongomock_does(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from memory_store import _matching
    from mongomock.filtering import filter_applies

    documents = [
        {"type": "person", "email_key": "a@x.com"},
        {"type": "business", "email_key": "a@x.com"},
        {"type": "business", "stripe_customer_id": "cus_1"},
        {"type": "person", "stripe_customer_id": "cus_2"},
    ]
    query = {
        "$or": [
            {"stripe_customer_id": {"$in": ["cus_1"]}},
            {"type": "person", "email_key": {"$in": ["a@x.com"]}},
        ]
    }

    fast = list(_matching(query, documents))

    assert fast == [d for d in documents if filter_applies(query, d)] == documents[::2]
