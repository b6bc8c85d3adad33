"""The burst benchmark runs a tiny burst end to end under the real dev stack (not timed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from stripe_crm_pipelines.billing_import.sensor import SENSOR_INTERVAL_VARIABLE
from tests.devstack import SENSOR_INTERVAL_SECONDS

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

SUMMARY = re.compile(
    r"burst: 3 imports of <=5 customers done in \d+\.\d s after insert \(\d+/min\); "
    r"target <= 60 s \[(met|MISSED)\]"
)


@pytest.mark.timeout(600)
def test_the_burst_benchmark_imports_every_request_and_checks_every_account():
    before = set(_command_lines())
    completed = subprocess.run(
        [sys.executable, "benchmarks/burst_imports.py", "--requests", "3", "--max-customers", "5"],
        cwd=ROOT,
        # The benchmark's stack takes the environment: the dev stack's short sensor interval.
        env={**os.environ, SENSOR_INTERVAL_VARIABLE: str(SENSOR_INTERVAL_SECONDS)},
        capture_output=True,
        text=True,
        timeout=540,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr[-4000:]
    lines = completed.stdout.splitlines()
    assert lines[0].endswith(f"batching: default; sensor every {SENSOR_INTERVAL_SECONDS} s"), lines[
        0
    ]
    rows = {line[:27].strip(): line[27:] for line in lines if line.startswith("  ")}
    assert rows["completed / failed"] == "3 / 0"
    # A burst of small imports shares a billing_import_batch run (a lone one has its own).
    assert re.match(r"([123]) \(\1 succeeded\), at most ", rows["runs"]), rows["runs"]
    assert rows["own result, with run id"] == "3/3 requests"
    assert rows["contacts right"].startswith("3/3 accounts: ")
    assert SUMMARY.fullmatch(lines[-1]), lines[-1]
    # Everything the stack started names the benchmark's temporary directory on its command line.
    left = [
        command
        for pid, command in _command_lines().items()
        if pid not in before and "burst-imports-" in command
    ]
    assert not left, f"processes left running: {left}"


def _command_lines() -> dict[int, str]:
    commands = {}
    for process in psutil.process_iter():
        try:
            commands[process.pid] = " ".join(process.cmdline())
        except psutil.Error:
            continue
    return commands
