"""Which store `history` and `imports` read: MONGODB_URI, else make dev's, else the default."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bson import ObjectId

from stripe_crm_pipelines import cli_store, history, imports, store

ACCOUNT = ObjectId("650000000000000000000001")


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project directory (it holds workspace.yaml), the current one; MONGODB_URI unset."""
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.setattr(store, "DEFAULT_STORE_DIR", tmp_path / "default-store")
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "workspace.yaml").write_text("load_from: []\n")
    monkeypatch.chdir(directory)
    return directory


def _result(started: dt.datetime) -> dict:
    return {
        "status": "completed",
        "name": "stripe",
        "type": "person",
        "records_added": 229,
        "records_updated": 5,
        "account_id": str(ACCOUNT),
        "run_id": "run-1",
        "started_at": started,
    }


def test_run_in_the_project_directory_history_reads_make_devs_store(project, capsys):
    dev_store = (project / ".local" / "store").as_uri()
    store.connect(dev_store)[store.IMPORT_RESULTS].insert_one(_result(dt.datetime.now(dt.UTC)))

    code = history.main(["--account", str(ACCOUNT)])

    out, err = capsys.readouterr()
    assert code == 0
    assert err.splitlines()[0] == f"store: {dev_store} (make dev's store in .local/store)"
    assert "229" in out.splitlines()[1]
    assert not store.DEFAULT_STORE_DIR.exists()


def test_mongodb_uri_wins_over_make_devs_store(project, monkeypatch):
    monkeypatch.setenv("MONGODB_URI", "mongomock://elsewhere")

    assert cli_store.choose_store() == cli_store.StoreChoice(
        "mongomock://elsewhere", "from MONGODB_URI"
    )


def test_outside_a_project_the_default_store_is_read(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    choice = cli_store.choose_store()

    assert choice.uri == store.DEFAULT_STORE_DIR.as_uri()
    assert choice.origin == "the default embedded store; MONGODB_URI is unset"


def test_reading_a_store_that_does_not_exist_creates_nothing(project, capsys):
    dev_store = project / ".local" / "store"

    code = history.main(["--account", str(ACCOUNT)])

    out, err = capsys.readouterr()
    assert code == 0
    assert out == f"No imports recorded for account {ACCOUNT}.\n"
    assert f"warning: there is no store at {dev_store} yet" in err
    assert "`make dev`" in err
    assert not (project / ".local").exists()

    code = imports.main(["queue", "--account", str(ACCOUNT), "--type", "contacts"])

    assert code == 1
    assert "error: not queued: there is no store to queue it in" in capsys.readouterr().err
    assert not (project / ".local").exists()


def test_an_empty_directory_is_read_as_no_store_and_left_empty(project, capsys):
    dev_store = project / ".local" / "store"
    dev_store.mkdir(parents=True)

    code = history.main(["--account", str(ACCOUNT), "--format", "json"])

    out, err = capsys.readouterr()
    assert code == 0
    assert out == "[]\n"
    assert f"warning: there is no store at {dev_store} yet" in err
    assert list(dev_store.iterdir()) == []


def test_a_store_without_collections_is_called_empty(project, capsys):
    store.connect((project / ".local" / "store").as_uri())[store.QUEUES].drop()

    code = history.main(["--account", str(ACCOUNT), "--format", "json"])

    out, err = capsys.readouterr()
    assert code == 0
    assert out == "[]\n"
    assert "warning: the store holds no collections" in err


def test_passwords_are_not_printed():
    # Built at run time, so no URI with a password is committed.
    uri = "mongodb://crm" + ":s3cret" + "@db.example.com:27017/crm"
    choice = cli_store.StoreChoice(uri, "test")

    assert choice.describe() == "store: mongodb://crm" + ":***" + "@db.example.com:27017/crm (test)"


@pytest.mark.parametrize("password", ["Pa#ss", "a?b", "a/b", "p[w", "a@b", "x:y"])
def test_passwords_pymongo_takes_unescaped_are_not_printed_either(password):
    uri = "mongodb://crm:" + password + "@h1:27017,h2:27017/crm?replicaSet=rs0"

    described = cli_store.StoreChoice(uri, "test").describe()

    assert (
        described
        == "store: mongodb://crm" + ":***" + "@h1:27017,h2:27017/crm?replicaSet=rs0 (test)"
    )
    assert password not in described


def test_a_mongodb_uri_pymongo_refuses_is_named_without_its_password(project, monkeypatch, capsys):
    monkeypatch.setenv("MONGODB_URI", "mongodb://crm:" + "s3cret#1" + "@db.example.com:port/crm")

    code = history.main(["--account", str(ACCOUNT)])

    err = capsys.readouterr().err
    assert code == 2
    assert (
        "error: MONGODB_URI mongodb://crm" + ":***" + "@db.example.com:port/crm is not usable: "
        in err
    )
    assert "Port contains non-digit characters" in err
    assert "s3cret" not in err


def test_a_relative_file_uri_is_refused_not_read_as_a_host(project, monkeypatch, capsys):
    monkeypatch.setenv("MONGODB_URI", "file://.local/store")

    code = history.main(["--account", str(ACCOUNT)])

    assert code == 2
    err = capsys.readouterr().err
    assert "error: MONGODB_URI file:// path must be absolute, got 'file://.local/store'" in err


def test_an_empty_xdg_data_home_counts_as_unset(tmp_path):
    code = "from stripe_crm_pipelines import store; print(store.DEFAULT_STORE_DIR)"
    environment = {**os.environ, "XDG_DATA_HOME": "", "HOME": str(tmp_path)}
    printed = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    ).stdout.strip()

    assert printed == str(tmp_path / ".local" / "share" / "stripe-crm-pipelines" / "store")


@pytest.mark.parametrize("output_format", ["csv", "table"])
def test_a_reader_that_stops_early_gets_no_traceback(tmp_path, output_format):
    """`history ... | head -1`: enough rows that the pipe closes while history still writes."""
    uri = (tmp_path / "store").as_uri()
    started = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    store.connect(uri)[store.IMPORT_RESULTS].insert_many(
        [_result(started + dt.timedelta(minutes=minute)) for minute in range(3000)]
    )

    process = subprocess.Popen(
        [sys.executable, "-m", "stripe_crm_pipelines.history", "--account", str(ACCOUNT),
         "--limit", "3000", "--format", output_format],
        env={**os.environ, "MONGODB_URI": uri},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first_line = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    process.wait(timeout=120)

    assert first_line.startswith("started")
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr
    assert process.returncode == 0
