"""`make dev` for real: dagster dev (webserver + daemon), the embedded store and the sandbox.

The sensor, not the test, launches the imports: the demo request and one inserted by the test
must both end completed, with contacts written and a successful run in run history.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from bson import ObjectId

from stripe_crm_pipelines import demo, store

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
IMPORT_DEADLINE_SECONDS = 120
ACTIVE_STATUSES = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED"}

RUNS_QUERY = """
query Runs($job: String!) {
  runsOrError(filter: {pipelineName: $job}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"the dev launcher exited with {process.returncode} while waiting for {what}"
            )
        value = predicate()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _ui_up(url: str) -> bool:
    try:
        return requests.get(f"{url}/server_info", timeout=2).ok
    except requests.RequestException:
        return False


def _request_status(db, import_id: ObjectId) -> str | None:
    document = db[store.QUEUES].find_one({"_id": import_id})
    return document["status"] if document and document["status"] != "pending" else None


def _runs(url: str) -> list[dict]:
    response = requests.post(
        f"{url}/graphql",
        json={"query": RUNS_QUERY, "variables": {"job": "billing_contact_import"}},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["data"]["runsOrError"]["results"]


@pytest.fixture
def dev_stack(tmp_path):
    ports = {name: _free_port() for name in ("ui", "sandbox", "shortener")}
    store_dir = tmp_path / "store"
    env = {key: value for key, value in os.environ.items() if key != "MONGODB_URI"}
    env["PYTHONUNBUFFERED"] = "1"
    log = (tmp_path / "dev.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stripe_crm_pipelines.dev",
            "--project-dir",
            str(PROJECT),
            "--dagster-home",
            str(tmp_path / "dagster_home"),
            "--store-dir",
            str(store_dir),
            "--port",
            str(ports["ui"]),
            "--sandbox-port",
            str(ports["sandbox"]),
            "--shortener-port",
            str(ports["shortener"]),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=PROJECT,
    )
    url = f"http://127.0.0.1:{ports['ui']}"
    try:
        yield process, url, store.connect(store_dir.as_uri()), tmp_path / "dev.log"
    finally:
        descendants = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            log.close()
        _, alive = psutil.wait_procs(descendants, timeout=30)
        for leftover in alive:
            leftover.kill()
        assert not alive, f"processes left running after the launcher stopped: {alive}"


def test_sensor_driven_imports_complete_under_dagster_dev(dev_stack):
    process, url, db, log_path = dev_stack
    _wait(lambda: _ui_up(url), 90, "the Dagster UI", process)

    assert (
        _wait(
            lambda: _request_status(db, demo.DEMO_IMPORT_ID),
            IMPORT_DEADLINE_SECONDS,
            "the demo import request",
            process,
        )
        == "completed"
    ), log_path.read_text()[-5000:]

    import_id = ObjectId()
    db[store.QUEUES].insert_one(
        {
            "_id": import_id,
            "status": "pending",
            "source": "billing-contacts",
            "in_progress": False,
            "type": "companies",
            "account_id": demo.DEMO_ACCOUNT_ID,
            "user_id": demo.DEMO_USER_ID,
            "parent_account": demo.DEMO_ACCOUNT_ID,
            "client_id": demo.DEMO_CLIENT_ID,
            "mappings": {"name": "name"},
            "new_contact": True,
            "createdAt": dt.datetime.now(dt.UTC),
        }
    )
    assert (
        _wait(
            lambda: _request_status(db, import_id),
            IMPORT_DEADLINE_SECONDS,
            "the inserted import request",
            process,
        )
        == "completed"
    ), log_path.read_text()[-5000:]

    people = db[store.CONTACTS].count_documents(
        {"parent_account": demo.DEMO_ACCOUNT_ID, "type": "person", "source": "stripe"}
    )
    businesses = db[store.CONTACTS].count_documents(
        {"parent_account": demo.DEMO_ACCOUNT_ID, "type": "business", "source": "stripe"}
    )
    assert people > 0
    assert businesses > 0
    result = db[store.IMPORT_RESULTS].find_one({"import_id": import_id})
    assert result["status"] == "completed"
    assert result["records_added"] == businesses

    wanted = {str(demo.DEMO_IMPORT_ID), str(import_id)}

    def finished_runs() -> dict[str, dict] | None:
        # The request is marked completed by the run's last op, just before the run ends.
        by_import = {
            tag["value"]: run
            for run in _runs(url)
            for tag in run["tags"]
            if tag["key"] == "stripe_crm/import_id" and run["status"] not in ACTIVE_STATUSES
        }
        return by_import if wanted <= set(by_import) else None

    by_import = _wait(finished_runs, 60, "both runs to finish", process)
    assert by_import[str(demo.DEMO_IMPORT_ID)]["status"] == "SUCCESS"
    assert by_import[str(import_id)]["status"] == "SUCCESS"
    tags = {tag["key"]: tag["value"] for tag in by_import[str(import_id)]["tags"]}
    assert tags["stripe_crm/account_id"] == str(demo.DEMO_ACCOUNT_ID)
    assert tags["stripe_crm/import_type"] == "companies"
    assert demo.DEMO_SECRET_KEY not in str(by_import)
