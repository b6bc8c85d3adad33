"""Security: an import reads and writes only its own account's contacts; no run records the
Stripe key or APP_SECRET anywhere; nothing secret is committed."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from bson import ObjectId
from dagster import DagsterInstance
from dagster._serdes import serialize_value

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from tests.conftest import (
    CONNECTED_ACCOUNT,
    SECRET_KEY,
    add_account,
    add_request,
    import_result,
)
from tests.reliability import FaultyDatabase

PROJECT = Path(__file__).resolve().parents[2]
APP_SECRET = "app-secret-of-the-reliability-tests-7f3a9c2e51b04d68"


def run(mongo_uri, sandbox, import_id, instance):
    return billing_contact_import.execute_in_process(
        run_config={"ops": {"claim_import_request": {"config": {"import_id": str(import_id)}}}},
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "stripe": StripeResource(api_base=sandbox.url, initial_retry_delay_seconds=0.01),
        },
        instance=instance,
        raise_on_error=False,
    )


# --- tenant isolation -------------------------------------------------------------------------


def contact_filters(method: str, args: tuple) -> list[dict]:
    """The filters of a contacts call: of the query, or of every operation of a bulk write."""
    if method == "bulk_write":
        return [operation._filter for operation in args[0]]
    if method in ("find", "find_one", "count_documents", "update_one", "update_many",
                  "find_one_and_update", "replace_one", "delete_one", "delete_many"):  # fmt: skip
        return [args[0] if args else {}]
    if method == "aggregate":  # the catalog's checks: their first stage selects the contacts
        return [args[0][0]["$match"]]
    if method in ("create_index", "create_indexes", "index_information"):
        return []
    raise AssertionError(f"the import called contacts.{method}, which this test does not know")


def test_an_import_reads_and_writes_only_its_own_accounts_contacts(
    db, mongo_uri, stripe_sandbox, instance, monkeypatch
):
    stripe_sandbox.state.seed_customers(250, seed=81, account=CONNECTED_ACCOUNT)
    customers = stripe_sandbox.state.customers(CONNECTED_ACCOUNT)
    account_id = add_account(db)
    other_account = add_account(db, stripe_account="acct_1OtherTenant")
    # The other tenant has contacts with the same emails and Stripe ids, of both types, and one
    # without an email key, which the import's backfill must not touch either.
    db[store.CONTACTS].insert_many(
        [
            {"parent_account": other_account, "type": kind, "email": c["email"],
             "stripe_customer_id": c["id"], "name": "Other tenant"}
            for c in customers[:60] if c.get("email") for kind in ("person", "business")
        ]
    )  # fmt: skip
    db[store.CONTACTS].insert_one(
        {"parent_account": account_id, "type": "person", "email": customers[70]["email"]}
    )
    others_before = list(db[store.CONTACTS].find({"parent_account": other_account}))
    import_id = add_request(db, account_id, mappings={"name": "name", "phone": "phone"})
    calls: list[tuple[str, tuple]] = []

    def record(collection: str, method: str, args: tuple) -> None:
        if collection == store.CONTACTS:
            calls.append((method, args))

    open_database = store.open_database
    monkeypatch.setattr(
        store, "open_database", lambda uri, name: FaultyDatabase(open_database(uri, name), record)
    )

    assert run(mongo_uri, stripe_sandbox, import_id, instance).success

    assert {method for method, _ in calls} >= {"find", "bulk_write"}
    filters = [f for method, args in calls for f in contact_filters(method, args)]
    assert filters, "the import touched contacts"
    assert all(f.get("parent_account") == account_id for f in filters), [
        f for f in filters if f.get("parent_account") != account_id
    ]
    writes = [
        f
        for method, args in calls
        if method not in ("find", "aggregate")
        for f in contact_filters(method, args)
    ]
    assert writes and all(f.get("type") == "person" for f in writes)
    # Reads of the other type only ask whether a contact already holds a customer's Stripe id.
    lookups = [alternative for f in filters if "type" not in f for alternative in f.get("$or", [])]
    assert all(
        alternative.get("type") == "person" or set(alternative) == {"stripe_customer_id"}
        for alternative in lookups
    )
    assert list(db[store.CONTACTS].find({"parent_account": other_account})) == others_before
    assert import_result(db, import_id)["records_updated"] == 1


# --- what a run records -----------------------------------------------------------------------


def everything_a_run_recorded(instance: DagsterInstance, run_id: str) -> str:
    """Every event of the run serialised in full (messages, metadata, errors and their causes),
    with its config, tags and the run record itself."""
    run = instance.get_run_by_id(run_id)
    parts = [serialize_value(run), json.dumps(run.run_config, default=str), json.dumps(run.tags)]
    parts += [serialize_value(entry) for entry in instance.all_logs(run_id)]
    return "\n".join(parts)


@pytest.mark.parametrize(
    ("scenario", "succeeds"),
    [("clean", True), ("faults", True), ("rejected key", False), ("cancelled", False)],
)
def test_no_run_records_the_stripe_key_or_app_secret(
    db, mongo_uri, stripe_sandbox, instance, monkeypatch, scenario, succeeds
):
    monkeypatch.setenv("APP_SECRET", APP_SECRET)
    stripe_sandbox.state.seed_customers(150, seed=82, account=CONNECTED_ACCOUNT)
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings={"name": "name", "metadata": "custom"})
    if scenario == "faults":
        for status in (429, 500, 503):
            stripe_sandbox.state.inject_fault(endpoint="GET /v1/customers", status=status)
        stripe_sandbox.state.inject_fault(endpoint="GET /v1/customers", kind="reset")
    if scenario == "rejected key":
        stripe_sandbox.state.forbid_key(SECRET_KEY)
    if scenario == "cancelled":
        db[store.QUEUES].update_one({"_id": import_id}, {"$set": {"status": "cancelled"}})

    result = run(mongo_uri, stripe_sandbox, import_id, instance)

    assert result.success is succeeds
    recorded = everything_a_run_recorded(instance, result.run_id)
    stored = json.dumps(
        [list(db[name].find({}, {"token": 0})) for name in (store.QUEUES, store.IMPORT_RESULTS,
                                                             store.CONTACTS)],
        default=str,
    )  # fmt: skip
    for secret in (SECRET_KEY, APP_SECRET):
        assert secret not in recorded
        assert secret not in stored
    assert SECRET_KEY[8:30] not in recorded, "not even a fragment of the key"


# --- the repository -----------------------------------------------------------------------------

SECRET_PATTERNS = {
    "Stripe live secret or restricted key": re.compile(r"\b[sr]k_live_[0-9A-Za-z]{24,}"),
    "Stripe test key that looks real": re.compile(r"\bsk_test_[0-9A-Za-z]{90,}"),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH )?PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "MongoDB URI with a password": re.compile(r"mongodb(?:\+srv)?://[^:/\s'\"]+:[^@\s'\"]+@"),
    "GitHub token": re.compile(r"\bgh[pousr]_[0-9A-Za-z]{36}\b"),
}
PLACEHOLDER_PASSWORDS = ("USER:PASSWORD@",)
FORBIDDEN_FILES = re.compile(r"(^|/)(\.env(\..*)?|id_rsa|id_ed25519|.*\.pem|.*\.p12)$")


def tracked_files() -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=PROJECT, capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [name for name in listed.stdout.decode().split("\0") if name]


def test_nothing_secret_is_committed():
    found = []
    files = tracked_files()
    for name in files:
        if FORBIDDEN_FILES.search(name):
            found.append((name, "file that holds secrets"))
        path = PROJECT / name
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        for kind, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                value = match.group(0)
                if any(p in value for p in PLACEHOLDER_PASSWORDS):
                    continue
                found.append((name, kind, value[:16] + "…"))
    assert len(files) > 50
    assert found == []


def test_the_patterns_find_what_they_look_for():
    samples = {
        "Stripe live secret or restricted key": "rk_live_" + "a1B2" * 7,
        "MongoDB URI with a password": "mongodb+srv://app:" + "hunter2" + "@cluster0.example.net",
        "private key": "-----BEGIN " + "PRIVATE KEY-----",
    }
    for kind, sample in samples.items():
        assert SECRET_PATTERNS[kind].search(sample), kind
    assert not SECRET_PATTERNS["MongoDB URI with a password"].search("mongodb://localhost:27017")
    assert ObjectId  # ids are not secrets
