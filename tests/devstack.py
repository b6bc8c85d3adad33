"""`make dev` as a pytest fixture: one real `dagster dev` stack shared by the slow tests.

``dev_stack`` (session-scoped) starts ``python -m stripe_crm_pipelines.dev`` on free ports with
its own DAGSTER_HOME and embedded store, waits for the UI, and stops the launcher (and checks that
nothing it started is left running) at the end of the session. Its import sensor ticks every
:data:`SENSOR_INTERVAL_SECONDS` (``STRIPE_CRM_IMPORT_SENSOR_INTERVAL_SECONDS``) rather than 30 s,
so that the tests wait for the daemon's loop rather than the production interval. Tests that
use it must leave the demo data as they found it apart from their own accounts and requests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.sensor import SENSOR_INTERVAL_VARIABLE

PROJECT = Path(__file__).resolve().parents[1]
UI_DEADLINE_SECONDS = 120
SENSOR_INTERVAL_SECONDS = 5
"""The stack's import sensor interval; the daemon evaluates sensors at most every 5 s anyway."""
ACTIVE_RUN_STATUSES = frozenset({"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"})

RUNS_QUERY = """
query Runs($job: String!) {
  runsOrError(filter: {pipelineName: $job}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""


@dataclass
class DevStack:
    process: subprocess.Popen
    url: str
    sandbox_url: str
    db: object
    log: Path

    def wait(self, predicate: Callable[[], object], timeout: float, what: str):
        """Poll ``predicate`` each second until it returns something truthy; fail the test on
        timeout or when the launcher exits, with the end of its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"the dev launcher exited with {self.process.returncode} while waiting for "
                    f"{what}:\n{self.log_tail()}"
                )
            value = predicate()
            if value:
                return value
            time.sleep(1)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.log_tail()}")

    def log_tail(self, characters: int = 5000) -> str:
        return self.log.read_text(errors="replace")[-characters:]

    def runs(self, job: str) -> list[dict]:
        """Runs of ``job`` from the webserver's GraphQL API, tags as a dict."""
        response = requests.post(
            f"{self.url}/graphql",
            json={"query": RUNS_QUERY, "variables": {"job": job}},
            timeout=10,
        )
        response.raise_for_status()
        return [
            {**run, "tags": {tag["key"]: tag["value"] for tag in run["tags"]}}
            for run in response.json()["data"]["runsOrError"]["results"]
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ui_up(url: str) -> bool:
    try:
        return requests.get(f"{url}/server_info", timeout=2).ok
    except requests.RequestException:
        return False


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory) -> Iterator[DevStack]:
    root = tmp_path_factory.mktemp("dev_stack")
    ports = {name: free_port() for name in ("ui", "sandbox", "shortener")}
    store_dir = root / "store"
    env = {key: value for key, value in os.environ.items() if key != "MONGODB_URI"}
    env["PYTHONUNBUFFERED"] = "1"
    env[SENSOR_INTERVAL_VARIABLE] = str(SENSOR_INTERVAL_SECONDS)
    log_path = root / "dev.log"
    log = log_path.open("w")
    options = {
        "--project-dir": PROJECT,
        "--dagster-home": root / "dagster_home",
        "--store-dir": store_dir,
        "--port": ports["ui"],
        "--sandbox-port": ports["sandbox"],
        "--shortener-port": ports["shortener"],
    }
    command = [sys.executable, "-m", "stripe_crm_pipelines.dev"]
    for option, value in options.items():
        command += [option, str(value)]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT)
    stack = DevStack(
        process=process,
        url=f"http://127.0.0.1:{ports['ui']}",
        sandbox_url=f"http://127.0.0.1:{ports['sandbox']}",
        db=store.connect(store_dir.as_uri()),
        log=log_path,
    )
    try:
        stack.wait(lambda: ui_up(stack.url), UI_DEADLINE_SECONDS, "the Dagster UI")
        yield stack
    finally:
        try:
            descendants = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            log.close()
        _, alive = psutil.wait_procs(descendants, timeout=30)
        for leftover in alive:
            leftover.kill()
        assert not alive, f"processes left running after the launcher stopped: {alive}"
