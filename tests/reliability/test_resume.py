"""Resume: a run whose process is SIGKILLed mid-import is noticed by the sensor, queued again,
and the next run finishes with the same contacts as an uninterrupted import.

The import runs as ``dagster job execute`` in its own process group, on an embedded store and a
Dagster instance on disk that this test shares with it; the kill takes the run worker and its
step processes at once, as a lost machine would. Nothing here reads the checkpoint's format:
progress is watched through the contacts, and the outcome is compared with a clean import.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import recovery, tags
from tests.conftest import (
    CONNECTED_ACCOUNT,
    SEED_MAPPINGS,
    add_account,
    add_request,
    import_result,
    run_import,
)
from tests.reliability import (
    assert_counts_add_up,
    assert_no_duplicate_contacts,
    checkpointed,
    contact_snapshot,
    evaluate_sensor,
)

PROJECT = Path(__file__).resolve().parents[2]
CUSTOMERS = 1500
MAPPINGS = {"name": "name", "phone": "phone", **SEED_MAPPINGS}

pytestmark = pytest.mark.slow


def launch(run_request, *, home: Path, store_uri: str, sandbox_url: str, log: Path):
    """Start the run a sensor asked for, as ``dagster job execute`` in a new process group.

    The job's steps run in the run's own process (its in-process executor), so one process is
    one kill."""
    config = home / f"run-{uuid.uuid4().hex}.yaml"
    config.write_text(yaml.safe_dump(run_request.run_config))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MONGODB_URI": store_uri,
        "STRIPE_API_BASE": sandbox_url,
    }
    command = [
        *(sys.executable, "-m", "dagster", "job", "execute"),
        *("-m", "stripe_crm_pipelines.definitions", "-j", "billing_contact_import"),
        *("-c", str(config), "--tags", json.dumps(dict(run_request.tags))),
    ]
    return subprocess.Popen(
        command,
        env=env,
        cwd=PROJECT,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(predicate, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            pytest.fail(f"the run's process exited ({process.returncode}) before {what}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_a_run_killed_mid_import_is_resumed_and_ends_as_an_uninterrupted_one(
    tmp_path, stripe_sandbox, monkeypatch
):
    stripe_sandbox.state.seed_customers(CUSTOMERS, seed=71, account=CONNECTED_ACCOUNT)

    # The reference: the same import, uninterrupted, into a store of its own.
    clean_uri = (tmp_path / "clean").as_uri()
    clean_db = store.connect(clean_uri)
    store.ensure_indexes(clean_db)
    clean_account = add_account(clean_db)
    clean_import = add_request(clean_db, clean_account, mappings=MAPPINGS)
    assert run_import(clean_uri, stripe_sandbox, clean_import, DagsterInstance.ephemeral()).success
    clean = import_result(clean_db, clean_import)

    store_uri = (tmp_path / "store").as_uri()
    db = store.connect(store_uri)
    store.ensure_indexes(db)
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings=MAPPINGS)
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    log = tmp_path / "runs.log"

    # 1. The sensor asks for a run; it starts importing slowly and is killed part-way, once a
    #    batch is written and checkpointed.
    [first] = evaluate_sensor(instance, store_uri).run_requests
    stripe_sandbox.state.configure(endpoint_latency_ms={"GET /v1/customers": 150})
    process = launch(first, home=home, store_uri=store_uri, sandbox_url=stripe_sandbox.url, log=log)
    contacts = db[store.CONTACTS]

    wait_for(
        lambda: checkpointed(db, import_id),
        timeout=90,
        what="a checkpointed batch",
        process=process,
    )
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stripe_sandbox.state.configure(endpoint_latency_ms={})
    written = contacts.count_documents({"parent_account": account_id})
    assert written < len(contact_snapshot(clean_db, clean_account)), "killed part-way"
    [dead] = instance.get_runs(RunsFilter(tags={tags.IMPORT_ID: str(import_id)}))
    assert dead.status == DagsterRunStatus.STARTED, "nothing told Dagster the process died"
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["in_progress"], request["claimed_by_run"]) == (True, dead.run_id)

    # 2. While its heartbeat is recent the run counts as alive; once silent, the sensor marks
    #    it failed and queues the request again under a new run key.
    assert evaluate_sensor(instance, store_uri).run_requests == []
    monkeypatch.setattr(recovery, "STALE_AFTER_SECONDS", 1.0)
    time.sleep(1.5)
    [second] = evaluate_sensor(instance, store_uri).run_requests
    assert second.run_key == f"{import_id}:1" != first.run_key
    assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"], request["attempts"]) == (
        "pending",
        False,
        1,
    )
    assert "no heartbeat" in request["last_error"]

    # 3. The next run resumes and finishes.
    process = launch(
        second, home=home, store_uri=store_uri, sandbox_url=stripe_sandbox.url, log=log
    )
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]

    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"], request["attempts"]) == (
        "completed",
        False,
        2,
    )
    assert contact_snapshot(db, account_id) == contact_snapshot(clean_db, clean_account)
    assert_no_duplicate_contacts(db, account_id)
    [result] = db[store.IMPORT_RESULTS].find({"import_id": import_id})
    assert result["status"] == "completed"
    assert result["run_id"] != dead.run_id
    assert_counts_add_up(result, CUSTOMERS)
    assert (result["duplicates"], result["records_skipped"]) == (clean["duplicates"], 0)
    assert (
        result["records_added"] + result["records_updated"]
        == clean["records_added"]
        == len(contact_snapshot(db, account_id))
    )
    # Resumed, not started over (which would update every contact the first run wrote): only a
    # batch written but not yet checkpointed when the process died is written again.
    assert result["records_updated"] < written
    assert evaluate_sensor(instance, store_uri).run_requests == []
