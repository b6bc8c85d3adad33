"""`python -m stripe_crm_pipelines.imports queue`: queue an import as the CRM would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from bson import ObjectId
from dagster import DagsterInstance

from stripe_crm_pipelines import imports, store
from stripe_crm_pipelines.billing_import import tags
from tests.billing_import.test_job import add_account
from tests.billing_import.test_sensor import evaluate

USER = "65b000000000000000000001"


@pytest.fixture
def account_id(db, mongo_uri, monkeypatch):
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    return str(add_account(db))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = imports.main(["queue", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_queue_inserts_a_pending_request_and_prints_its_id(db, mongo_uri, account_id, capsys):
    code, out, err = _run(
        capsys,
        "--account", account_id, "--type", "contacts",
        "--map", "name=name", "--map", "address-city=address.city",
        "--no-new-contacts", "--dry-run", "--max-customers", "25", "--user", USER,
    )  # fmt: skip

    assert code == 0
    import_id = ObjectId(out.strip())
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert {key: request[key] for key in request if key not in ("_id", "createdAt")} == {
        "status": "pending",
        "source": "billing-contacts",
        "in_progress": False,
        "type": "contacts",
        "account_id": ObjectId(account_id),
        "user_id": ObjectId(USER),
        "parent_account": ObjectId(account_id),
        "client_id": None,
        "mappings": {"name": "name", "address-city": "address.city"},
        "new_contact": False,
        "dry_run": True,
        "keep_in_sync": False,
        "deletion_policy": "keep",
        "queued_by": "cli",
        "max_customers": 25,
    }
    assert f"Queued dry run {import_id} of account {account_id}" in err


def test_a_queued_request_is_run_by_the_sensor_with_its_tags(mongo_uri, account_id, capsys):
    code, out, _ = _run(capsys, "--account", account_id, "--type", "companies", "--user", USER)
    assert code == 0

    [run] = evaluate(DagsterInstance.ephemeral(), mongo_uri).run_requests

    assert run.tags[tags.IMPORT_ID] == out.strip()
    assert run.tags[tags.ACCOUNT_ID] == account_id
    assert run.tags[tags.IMPORT_TYPE] == "companies"


def test_keep_in_sync_with_archive(db, account_id, capsys):
    code, out, _ = _run(
        capsys, "--account", account_id, "--type", "contacts", "--user", USER,
        "--keep-in-sync", "--deletion-policy", "archive",
    )  # fmt: skip

    assert code == 0
    request = db[store.QUEUES].find_one({"_id": ObjectId(out.strip())})
    assert (request["keep_in_sync"], request["deletion_policy"]) == (True, "archive")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--map", "adress-city=address.city"],
            "error: not queued: mappings['adress-city']: Stripe key names no field of a Stripe "
            "customer ('adress' is not one of its fields); did you mean 'address-city'?",
        ),
        (["--map", "name=owner"], "error: not queued: mappings['name']: CRM field 'owner'"),
        (["--max-customers", "0"], "error: not queued: max_customers: must be a positive"),
        (["--deletion-policy", "archive"], "error: not queued: deletion_policy: 'archive'"),
        (["--dry-run", "--keep-in-sync"], "error: not queued: keep_in_sync: a dry run"),
        (["--user", "someone"], "error: not queued: user_id: 'someone' is not an ObjectId"),
    ],
)
def test_bad_input_is_refused_before_anything_is_queued(db, account_id, capsys, argv, message):
    code, out, err = _run(
        capsys, "--account", account_id, "--type", "contacts", "--user", USER, *argv
    )

    assert code == 2
    assert out == ""
    assert err.splitlines()[-1].startswith(message)
    assert db[store.QUEUES].count_documents({}) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--map", "name"], "--map 'name': expected STRIPE_KEY=CRM_FIELD"),
        (["--map", "name=name", "--map", "name=title"], "'name' is already mapped"),
        (["--type", "people"], "argument --type: invalid choice: 'people'"),
    ],
)
def test_malformed_options_are_usage_errors(db, account_id, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        imports.main(["queue", "--account", account_id, "--type", "contacts", *argv])

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert db[store.QUEUES].count_documents({}) == 0


def test_unknown_account_and_account_without_key_are_refused(db, account_id, capsys):
    missing = str(ObjectId())
    code, _, err = _run(capsys, "--account", missing, "--type", "contacts", "--user", USER)
    assert code == 2
    assert f"account_id: no account {missing} in _accounts" in err

    keyless = str(add_account(db, secret_key=None))
    code, _, err = _run(capsys, "--account", keyless, "--type", "contacts", "--user", USER)
    assert code == 2
    assert "has no Stripe key connected for billing" in err
    assert db[store.QUEUES].count_documents({}) == 0


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        imports.main(["queue", "--help"])

    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--account ID", "--type {contacts,companies}", "--map STRIPE_KEY=CRM_FIELD",
        "--no-new-contacts", "--dry-run", "--keep-in-sync", "--deletion-policy {keep,archive}",
        "--max-customers N", "--user ID", "exit status",
    ):  # fmt: skip
        assert option in out


def test_the_command_queues_into_a_shared_store(tmp_path):
    """As a person runs it: a separate process, the embedded on-disk store."""
    uri = (tmp_path / "store").as_uri()
    db = store.connect(uri)
    account_id = str(add_account(db))
    env = {**os.environ, "MONGODB_URI": uri}

    queued = subprocess.run(
        [sys.executable, "-m", "stripe_crm_pipelines.imports", "queue", "--account", account_id,
         "--type", "contacts", "--map", "name=name", "--user", USER],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    refused = subprocess.run(
        [sys.executable, "-m", "stripe_crm_pipelines.imports", "queue", "--account", account_id,
         "--type", "contacts", "--map", "nmae=name", "--user", USER],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert queued.returncode == 0, queued.stderr
    import_id = ObjectId(queued.stdout.strip())
    assert db[store.QUEUES].find_one({"_id": import_id})["queued_by"] == "cli"
    assert refused.returncode == 2
    assert "did you mean 'name'?" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert db[store.QUEUES].count_documents({}) == 1
