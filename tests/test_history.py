"""`python -m stripe_crm_pipelines.history`: an account's past imports, newest first."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from bson import ObjectId

from stripe_crm_pipelines import history, store

ACCOUNT = ObjectId("650000000000000000000001")
OTHER_ACCOUNT = ObjectId("650000000000000000000099")
T0 = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)


def _result(started: dt.datetime | None, **fields) -> dict:
    document = {
        "status": "completed",
        "name": "stripe",
        "type": "contacts",
        "records_added": 10,
        "records_updated": 2,
        "records_skipped": 0,
        "import_errors_count": 0,
        "duplicates": 1,
        "customers_fetched": 13,
        "pages_fetched": 1,
        "stripe_requests": 4,
        "user_id": ObjectId(),
        "account_id": ACCOUNT,
        "importerrors": [],
        "import_id": ObjectId(),
        "run_id": f"run-{started:%H%M}" if started else "run-old",
    }
    if started is not None:
        document["started_at"] = started
        document["finished_at"] = started + dt.timedelta(seconds=42)
    document.update(fields)
    return document


@pytest.fixture
def results(db, mongo_uri, monkeypatch):
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    documents = [
        _result(T0, records_added=250, records_updated=5, customers_fetched=256, duplicates=1),
        _result(
            T0 + dt.timedelta(days=1),
            status="failed",
            type="companies",
            records_added=0,
            records_updated=0,
            customers_fetched=0,
            import_errors_count=1,
            importerrors=[{"message": "Stripe key was revoked", "email": None}],
            error="Stripe rejected the account's key (401): the key was revoked in the "
            "Stripe dashboard; connect Stripe again in the CRM",
            stripe_requests=1,
        ),
        _result(T0 + dt.timedelta(days=2), records_added=0, records_updated=261),
        _result(T0 + dt.timedelta(days=3), account_id=OTHER_ACCOUNT, run_id="run-other"),
    ]
    db[store.IMPORT_RESULTS].insert_many(documents)
    return documents


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = history.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_lists_the_accounts_imports_newest_first(results, capsys):
    code, out, _ = _run(capsys, "--account", str(ACCOUNT))

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "started", "finished", "status", "kind", "type", "added", "updated", "skipped", "errors",
        "duplicates", "fetched", "stripe", "requests", "run", "id", "error",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["2026-03-03", "2026-03-02", "2026-03-01"]
    assert lines[2].split()[:15] == [
        "2026-03-02", "09:00:00", "2026-03-02", "09:00:42", "failed", "import", "companies",
        "0", "0", "0", "1", "1", "0", "1", "run-0900",
    ]  # fmt: skip
    # The error, shortened to fit a terminal line.
    assert lines[2].endswith("Stripe rejected the account's key (401): the key was revoke…")
    assert lines[3].split()[4:14] == [
        "completed", "import", "contacts", "250", "5", "0", "0", "1", "256", "4",
    ]  # fmt: skip
    assert lines[3].split()[14:] == ["run-0900", "-"]
    assert "run-other" not in out


def test_table_leaves_out_columns_no_import_uses(db, mongo_uri, monkeypatch, capsys):
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    db[store.IMPORT_RESULTS].insert_one(_result(T0))

    heading = _run(capsys, "--account", str(ACCOUNT))[1].splitlines()[0]

    assert heading.split()[-2:] == ["run", "id"]
    assert "restored" not in heading


def test_kinds_dry_run_sync_and_revert(db, mongo_uri, monkeypatch, capsys):
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    imported = _result(T0)
    db[store.IMPORT_RESULTS].insert_many(
        [
            imported,
            _result(T0 + dt.timedelta(hours=1), dry_run=True),
            _result(T0 + dt.timedelta(hours=2), name="stripe-sync"),
            {
                "status": "completed",
                "name": "stripe-revert",
                "type": "contacts",
                "account_id": ACCOUNT,
                "reverted_import_id": imported["import_id"],
                "records_restored": 7,
                "records_removed": 3,
                "conflicts": 1,
                "started_at": T0 + dt.timedelta(hours=3),
            },
        ]
    )

    code, out, _ = _run(capsys, "--account", str(ACCOUNT))
    records = json.loads(_run(capsys, "--account", str(ACCOUNT), "--format", "json")[1])

    assert code == 0
    rows = out.splitlines()[1:]
    assert ["revert" in rows[0], "sync" in rows[1], "dry run" in rows[2]] == [True] * 3
    assert out.splitlines()[0].split()[13:16] == ["restored", "removed", "conflicts"]
    assert [record["kind"] for record in records] == ["revert", "sync", "dry run", "import"]
    assert records[0]["reverted_import_id"] == str(imported["import_id"])
    assert (records[0]["records_restored"], records[0]["conflicts"]) == (7, 1)


def test_limit_keeps_the_newest(results, capsys):
    code, out, _ = _run(capsys, "--account", str(ACCOUNT), "--limit", "1")

    assert code == 0
    assert len(out.splitlines()) == 2
    assert out.splitlines()[1].startswith("2026-03-03 09:00:00")


def test_csv_carries_every_field(results, capsys):
    code, out, _ = _run(capsys, "--account", str(ACCOUNT), "--format", "csv")

    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["started_at"] for row in rows] == [
        "2026-03-03T09:00:00+00:00", "2026-03-02T09:00:00+00:00", "2026-03-01T09:00:00+00:00",
    ]  # fmt: skip
    assert rows[2]["records_added"] == "250"
    assert rows[2]["import_id"] == str(results[0]["import_id"])
    assert rows[1]["status"] == "failed"
    assert rows[1]["error"].startswith("Stripe rejected the account's key (401)")
    assert rows[2]["error"] == ""
    assert rows[2]["stripe_requests"] == "4"


def test_json_is_machine_readable(results, capsys):
    code, out, _ = _run(capsys, "--account", str(ACCOUNT), "--format", "json")

    assert code == 0
    records = json.loads(out)
    assert len(records) == 3
    assert records[2] == {
        "started_at": "2026-03-01T09:00:00+00:00",
        "finished_at": "2026-03-01T09:00:42+00:00",
        "status": "completed",
        "kind": "import",
        "type": "contacts",
        "records_added": 250,
        "records_updated": 5,
        "records_skipped": 0,
        "import_errors": 0,
        "duplicates": 1,
        "customers_fetched": 256,
        "stripe_requests": 4,
        "records_restored": None,
        "records_removed": None,
        "conflicts": None,
        "import_id": str(results[0]["import_id"]),
        "reverted_import_id": None,
        "run_id": "run-0900",
        "error": None,
        "records_archived": None,
        "events_read": None,
    }
    assert records[1]["error"] == (
        "Stripe rejected the account's key (401): the key was revoked in the Stripe dashboard; "
        "connect Stripe again in the CRM"
    )


def test_markdown_is_one_table_of_every_field(results, capsys):
    code, out, _ = _run(capsys, "--account", str(ACCOUNT), "--format", "markdown")

    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 5
    headings = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert headings == list(history.COLUMNS)
    cells = [cell.strip() for cell in lines[3].strip("|").split("|")]
    failed = dict(zip(headings, cells, strict=True))
    assert failed["status"] == "failed"
    assert failed["finished_at"] == "2026-03-02 09:00:42"
    assert failed["error"].startswith("Stripe rejected the account's key (401)")
    assert failed["records_restored"] == "-"


def test_older_result_shapes_still_show(db, mongo_uri, monkeypatch, capsys):
    """Seed-era results: no timestamps, counts or run id, errors only as a list, string ids."""
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    db[store.IMPORT_RESULTS].insert_many(
        [
            {
                "status": "completed",
                "name": "stripe",
                "type": "contacts",
                "records_added": 3,
                "records_updated": 1,
                "account_id": str(ACCOUNT),
                "importerrors": [{"message": "bad email", "email": "x@"}],
            },
            _result(T0, duplicates=["a@example.com", "b@example.com"]),
        ]
    )

    code, out, _ = _run(capsys, "--account", str(ACCOUNT), "--format", "json")

    assert code == 0
    newest, oldest = json.loads(out)
    assert newest["duplicates"] == 2
    assert oldest["started_at"] is None
    assert oldest["import_errors"] == 1
    assert oldest["records_skipped"] is None
    assert oldest["run_id"] is None

    code, out, _ = _run(capsys, "--account", str(ACCOUNT))
    assert out.splitlines()[2].split()[:5] == ["-", "-", "completed", "import", "contacts"]


def test_no_imports_says_so(db, mongo_uri, monkeypatch, capsys):
    monkeypatch.setenv("MONGODB_URI", mongo_uri)

    code, out, _ = _run(capsys, "--account", str(ACCOUNT))

    assert code == 0
    assert out.strip() == f"No imports recorded for account {ACCOUNT}."
    assert _run(capsys, "--account", str(ACCOUNT), "--format", "json")[1].strip() == "[]"


@pytest.mark.parametrize("bad", ["acct_123", "65000000000000000000000", "not an id", ""])
def test_malformed_account_id_is_a_clear_usage_error(bad, mongo_uri, monkeypatch, capsys):
    monkeypatch.setenv("MONGODB_URI", mongo_uri)

    with pytest.raises(SystemExit) as exit_info:
        history.main(["--account", bad])

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--account: account id {bad!r} is not valid" in err
    assert "24-character hex ObjectId" in err


def test_limit_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        history.main(["--account", str(ACCOUNT), "--limit", "0"])

    assert exit_info.value.code == 2
    assert "must be a positive whole number" in capsys.readouterr().err


def test_unsupported_store_uri_is_reported(monkeypatch, capsys):
    monkeypatch.setenv("MONGODB_URI", "redis://localhost")

    code, _, err = _run(capsys, "--account", str(ACCOUNT))

    assert code == 2
    assert "scheme 'redis' is not supported" in err


def test_help_explains_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        history.main(["--help"])

    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in (
        "--account ID", "--limit N", "{table,csv,json,markdown}", "MONGODB_URI", "newest first",
        ".local/store", "workspace.yaml", "make dev",
    ):  # fmt: skip
        assert text in out


def test_syncs_show_with_their_kind_archived_events_and_stripe_requests(
    db, mongo_uri, monkeypatch, capsys
):
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    db[store.IMPORT_RESULTS].insert_many(
        [
            _result(T0, stripe_requests=101),
            _result(
                T0 + dt.timedelta(hours=1),
                name="stripe-sync",
                type="person",
                records_added=1,
                records_updated=7,
                records_archived=2,
                events_read=12,
                stripe_requests=1,
                customers_fetched=None,
                duplicates=0,
                import_id=None,
                run_id="run-sync",
            ),
        ]
    )

    code, out, _ = _run(capsys, "--account", str(ACCOUNT))

    assert code == 0
    sync_line, import_line = out.splitlines()[1:]
    assert sync_line.split()[4:] == [
        "completed", "sync", "person", "1", "7", "0", "0", "0", "-", "1", "2", "12", "run-sync",
    ]  # fmt: skip
    assert import_line.split()[-4:] == ["101", "-", "-", "run-0900"]
