"""The sync benchmark runs end to end and reports every figure (tiny sizes, not timed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_runs_a_sync_and_a_full_reimport_on_the_same_account():
    completed = subprocess.run(
        [
            sys.executable,
            "benchmarks/sync_throughput.py",
            "--customers",
            "250",
            "--changes",
            "12",
            "--latency-ms",
            "5",
            "--rate-limit",
            "100",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = completed.stdout.splitlines()
    assert lines[0] == (
        "Sync throughput: 250 customers, 12 changed between syncs, 5 ms pages, 100 requests/s"
    )
    rows = {line[:34].strip(): line[34:].split() for line in lines[2:8] if line.strip()}
    # One events page holds the 12 changes; the re-import lists 3 pages and takes its cursor.
    assert rows["Stripe requests"][:2] == ["1", "4"]
    assert rows["events read"][0] == "12"
    assert rows["contacts added / updated"][0] == "0/12"
    targets = [line for line in lines if line.startswith("  [")]
    assert len(targets) == 3
    assert targets[0] == "  [met] sync used 1 Stripe request(s) (target <= 3)"
    assert targets[2].startswith("  [met] 12/12 changed customers' contacts hold their new values")
    assert lines[-1].startswith("summary: 12 changes of 250 customers synced in ")
