"""Print an account's past billing imports from ``contact_import_results``, newest first.

Reads the CRM store named by ``MONGODB_URI`` (the embedded store when it is unset), the same
store the import job writes its results to. Each line is one import (kind ``stripe``) or one
incremental sync (kind ``stripe-sync``): when it started and finished, its status and type, the
contact counts, the Stripe requests it used, and the Dagster run that did it (open it in the UI
under Runs, or filter runs by the tag ``stripe_crm/account_id``). Times are UTC.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import pymongo.errors
from bson import ObjectId

from stripe_crm_pipelines import store

DEFAULT_LIMIT = 20
FORMATS = ("table", "csv", "json")


@dataclass(frozen=True)
class ImportHistoryRow:
    """One past import, as the history shows it."""

    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    status: str
    type: str
    records_added: int | None
    records_updated: int | None
    records_skipped: int | None
    import_errors: int | None
    duplicates: int | None
    customers_fetched: int | None
    import_id: str
    run_id: str
    kind: str = ""
    """The result's ``name``: ``stripe`` for a full import, ``stripe-sync`` for a sync."""
    records_archived: int | None = None
    events_read: int | None = None
    stripe_requests: int | None = None


# (table heading, row field); csv and json use the field names.
TABLE_COLUMNS = (
    ("started", "started_at"),
    ("finished", "finished_at"),
    ("status", "status"),
    ("type", "type"),
    ("added", "records_added"),
    ("updated", "records_updated"),
    ("skipped", "records_skipped"),
    ("errors", "import_errors"),
    ("duplicates", "duplicates"),
    ("fetched", "customers_fetched"),
    ("kind", "kind"),
    ("archived", "records_archived"),
    ("events", "events_read"),
    ("requests", "stripe_requests"),
    ("run id", "run_id"),
)


def parse_account_id(value: str) -> ObjectId:
    """The account id as an ``ObjectId``; ``ValueError`` naming the value when it is not one."""
    if not ObjectId.is_valid(value.strip()):
        raise ValueError(
            f"account id {value!r} is not valid: expected the account's 24-character hex "
            "ObjectId, e.g. 650000000000000000000001"
        )
    return ObjectId(value.strip())


def load_history(db, account_id: ObjectId, limit: int = DEFAULT_LIMIT) -> list[ImportHistoryRow]:
    """The account's last ``limit`` imports, newest first.

    Results written before ``started_at`` existed sort after the rest, newest ``_id`` first.
    Seed-era documents that store the account id as a string are included.
    """
    cursor = (
        db[store.IMPORT_RESULTS]
        .find({"account_id": {"$in": [account_id, str(account_id)]}})
        .sort([("started_at", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)])
        .limit(limit)
    )
    return [history_row(document) for document in cursor]


def history_row(document: Mapping[str, Any]) -> ImportHistoryRow:
    """Map one ``contact_import_results`` document onto a history row, tolerating old shapes."""
    errors = document.get("import_errors_count")
    if errors is None and isinstance(document.get("importerrors"), list):
        errors = len(document["importerrors"])
    return ImportHistoryRow(
        started_at=_datetime(document.get("started_at")),
        finished_at=_datetime(document.get("finished_at")),
        status=str(document.get("status") or ""),
        type=str(document.get("type") or ""),
        records_added=_count(document.get("records_added")),
        records_updated=_count(document.get("records_updated")),
        records_skipped=_count(document.get("records_skipped")),
        import_errors=_count(errors),
        duplicates=_count(document.get("duplicates")),
        customers_fetched=_count(document.get("customers_fetched")),
        import_id=str(document.get("import_id") or ""),
        run_id=str(document.get("run_id") or ""),
        kind=str(document.get("name") or ""),
        records_archived=_count(document.get("records_archived")),
        events_read=_count(document.get("events_read")),
        stripe_requests=_count(document.get("stripe_requests")),
    )


def _count(value: Any) -> int | None:
    """A count field: an int, or a list whose length is the count (duplicates may be listed)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, list | tuple):
        return len(value)
    return None


def _datetime(value: Any) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    # The embedded store and mongomock may hand back naive datetimes; the job writes UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def write_table(rows: Sequence[ImportHistoryRow], out: TextIO) -> None:
    """Aligned columns: text left, counts right; empty cells as ``-``."""
    cells = [[_cell(getattr(row, field)) for _, field in TABLE_COLUMNS] for row in rows]
    numeric = [
        field not in {"started_at", "finished_at", "status", "type", "kind", "run_id"}
        for _, field in TABLE_COLUMNS
    ]
    headings = [heading for heading, _ in TABLE_COLUMNS]
    widths = [
        max([len(heading), *(len(line[index]) for line in cells)])
        for index, heading in enumerate(headings)
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out.write(line(headings) + "\n")
    for values in cells:
        out.write(line(values) + "\n")


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def write_csv(rows: Sequence[ImportHistoryRow], out: TextIO) -> None:
    """One header line of field names, then one line per import; times in ISO 8601 UTC."""
    fields = list(ImportHistoryRow.__dataclass_fields__)
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _plain(value) for key, value in asdict(row).items()})


def write_json(rows: Sequence[ImportHistoryRow], out: TextIO) -> None:
    """A JSON array of objects keyed by field name; times in ISO 8601 UTC, missing counts null."""
    records = [
        {key: _plain(value, missing=None) for key, value in asdict(row).items()} for row in rows
    ]
    json.dump(records, out, indent=2)
    out.write("\n")


def _plain(value: Any, missing: Any = "") -> Any:
    if value is None:
        return missing
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    return value


WRITERS = {"table": write_table, "csv": write_csv, "json": write_json}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stripe_crm_pipelines.history",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m stripe_crm_pipelines.history --account 650000000000000000000001\n"
            "  MONGODB_URI=mongodb+srv://... python -m stripe_crm_pipelines.history \\\n"
            "      --account 650000000000000000000001 --limit 100 --format csv > imports.csv\n"
            "\n"
            "exit status: 0 on success (also when the account has no imports), 1 when the store\n"
            "cannot be read, 2 for invalid arguments."
        ),
    )
    parser.add_argument(
        "--account",
        required=True,
        metavar="ID",
        help="the CRM account's id (24-character hex ObjectId), as in the import request's "
        "account_id",
    )
    parser.add_argument(
        "--limit",
        type=_positive_int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N imports, newest first (default {DEFAULT_LIMIT})",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table: aligned columns for people (default); csv or json: every field, for tools",
    )
    return parser


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value!r}")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        account_id = parse_account_id(args.account)
    except ValueError as error:
        parser.error(f"--account: {error}")
    try:
        rows = load_history(store.connect(), account_id, args.limit)
    except store.StoreConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except pymongo.errors.PyMongoError as error:
        print(f"error: cannot read {store.IMPORT_RESULTS}: {error}", file=sys.stderr)
        return 1
    if not rows and args.format == "table":
        print(f"No imports recorded for account {account_id}.")
        return 0
    WRITERS[args.format](rows, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
