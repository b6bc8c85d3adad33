"""Under the real daemon (``dagster dev``, see tests/devstack.py): many requests over a few
accounts are each processed exactly once, never two imports of one account at a time (small ones
share batch runs), and a
run terminated from the UI ends its import ``cancelled`` with the counts so far."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
import requests
from bson import ObjectId

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import tags
from stripe_crm_pipelines.sandbox import SandboxControl
from tests.conftest import add_account, add_request, import_result
from tests.reliability import assert_counts_add_up, checkpointed

pytestmark = pytest.mark.slow

ACCOUNTS = 5
REQUESTS_PER_ACCOUNT = 4
CUSTOMERS_PER_ACCOUNT = 40
DEADLINE_SECONDS = 540

RUNS_QUERY = """
query Runs($job: String!) {
  runsOrError(filter: {pipelineName: $job}) {
    ... on Runs { results { runId status startTime endTime tags { key value } } }
  }
}
"""
TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) { __typename ... on PythonError { message } }
}
"""


def graphql(dev_stack, query: str, **variables) -> dict:
    response = requests.post(
        f"{dev_stack.url}/graphql", json={"query": query, "variables": variables}, timeout=30
    )
    response.raise_for_status()
    return response.json()["data"]


def import_runs(dev_stack, import_ids: set[str]) -> list[dict]:
    runs = graphql(dev_stack, RUNS_QUERY, job="billing_contact_import")["runsOrError"]["results"]
    for run in runs:
        run["tags"] = {tag["key"]: tag["value"] for tag in run["tags"]}
    return [run for run in runs if run["tags"].get(tags.IMPORT_ID) in import_ids]


def runs_by_id(dev_stack, run_ids: set[str]) -> dict[str, dict]:
    """The runs of ``run_ids`` (imports alone or in batches), by id."""
    found = {}
    for job in ("billing_contact_import", "billing_import_batch"):
        for run in graphql(dev_stack, RUNS_QUERY, job=job)["runsOrError"]["results"]:
            if run["runId"] in run_ids:
                found[run["runId"]] = run
    return found


def closed(db, import_ids) -> bool:
    return db[store.QUEUES].count_documents(
        {"_id": {"$in": list(import_ids)}, "status": {"$ne": "pending"}}
    ) == len(import_ids)


@pytest.mark.timeout(DEADLINE_SECONDS + 60)
def test_requests_over_several_accounts_run_once_each_one_account_at_a_time(dev_stack):
    db = dev_stack.db
    sandbox = SandboxControl(dev_stack.sandbox_url)
    import_ids: list[ObjectId] = []
    for number in range(ACCOUNTS):
        stripe_account = f"acct_1Concurrency{number:02d}{ObjectId()}"[:32]
        sandbox.seed(CUSTOMERS_PER_ACCOUNT, seed=100 + number, account=stripe_account)
        account_id = add_account(db, stripe_account=stripe_account)
        import_ids += [
            add_request(db, account_id, mappings={"name": "name"})
            for _ in range(REQUESTS_PER_ACCOUNT)
        ]

    dev_stack.wait(lambda: closed(db, import_ids), DEADLINE_SECONDS, "all import requests")

    run_ids = set()
    by_account = defaultdict(list)
    for import_id in import_ids:
        request = db[store.QUEUES].find_one({"_id": import_id})
        assert (request["status"], request["attempts"]) == ("completed", 1)
        [result] = db[store.IMPORT_RESULTS].find({"import_id": import_id})
        assert result["run_id"] == request["claimed_by_run"]
        assert_counts_add_up(import_result(db, import_id), CUSTOMERS_PER_ACCOUNT)
        run_ids.add(result["run_id"])
        by_account[result["account_id"]].append((result["started_at"], result["finished_at"]))
    assert len(by_account) == ACCOUNTS
    for account_id, spans in by_account.items():
        spans.sort()
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert next_start >= end, f"two imports of account {account_id} overlapped"
    dev_stack.wait(
        lambda: all(run["endTime"] for run in runs_by_id(dev_stack, run_ids).values()),
        120,
        "the runs to end",
    )
    runs = runs_by_id(dev_stack, run_ids)
    assert set(runs) == run_ids
    assert {run["status"] for run in runs.values()} == {"SUCCESS"}
    # A burst of small imports shares runs: fewer runs than requests.
    assert len(run_ids) < len(import_ids)


def test_a_run_terminated_from_the_ui_records_its_import_cancelled(dev_stack):
    db = dev_stack.db
    sandbox = SandboxControl(dev_stack.sandbox_url)
    stripe_account = "acct_1TerminatedFromUi"
    sandbox.seed(3000, seed=200, account=stripe_account)
    account_id = add_account(db, stripe_account=stripe_account)
    import_id = add_request(db, account_id)
    sandbox.configure(endpoint_latency_ms={"GET /v1/customers": 1500})
    try:
        # Wait for a counted batch: a batch's contacts can be seen before its bulk write returns
        # and the batch is counted, and a terminate landing then cancels with nothing counted.
        dev_stack.wait(
            lambda: checkpointed(db, import_id),
            240,
            "the import to checkpoint its first batch",
        )
        [run] = import_runs(dev_stack, {str(import_id)})
        answer = graphql(dev_stack, TERMINATE, runId=run["runId"])["terminateRun"]
        assert answer["__typename"] == "TerminateRunSuccess", answer
        dev_stack.wait(lambda: closed(db, [import_id]), 120, "the request to be closed")
    finally:
        sandbox.configure(endpoint_latency_ms={})

    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == ("cancelled", False)
    result = import_result(db, import_id)
    assert result["status"] == "cancelled"
    assert 0 < result["customers_fetched"] < 3000
    assert_counts_add_up(result, result["customers_fetched"])
    written = db[store.CONTACTS].count_documents({"parent_account": account_id})
    assert written >= result["records_added"], "every counted contact was written"
    dev_stack.wait(
        lambda: import_runs(dev_stack, {str(import_id)})[0]["status"] == "CANCELED",
        60,
        "the run to be cancelled",
    )
