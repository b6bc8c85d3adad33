"""Print an account's past billing imports from ``contact_import_results``, newest first.

Reads the store the import job writes its results to: ``MONGODB_URI`` when set, else, run in the
project directory (where ``workspace.yaml`` is), ``make dev``'s store ``.local/store``, else the
default embedded store; the first line on stderr says which. Each row is one import, dry run,
sync or revert: when it started and finished, its status and type, the contact counts, the
Stripe requests it made, the error of a failed one, and the Dagster run that did it (open it in
the UI under Runs, or filter runs by the tag ``stripe_crm/account_id``). Times are UTC.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import pymongo.errors
from bson import ObjectId

from stripe_crm_pipelines import cli_store, store

DEFAULT_LIMIT = 20
FORMATS = ("table", "csv", "json", "markdown")

COLUMNS = {
    # field: table heading. CSV, JSON and markdown use the field names and every column.
    "started_at": "started",
    "finished_at": "finished",
    "status": "status",
    "kind": "kind",
    "type": "type",
    "records_added": "added",
    "records_updated": "updated",
    "records_skipped": "skipped",
    "import_errors": "errors",
    "duplicates": "duplicates",
    "customers_fetched": "fetched",
    "stripe_requests": "stripe requests",
    "records_restored": "restored",
    "records_removed": "removed",
    "conflicts": "conflicts",
    "records_archived": "archived",
    "events_read": "events",
    "import_id": "import id",
    "reverted_import_id": "reverted import",
    "run_id": "run id",
    "error": "error",
}
SYNC_ONLY = ("records_archived", "events_read")
"""Columns the table shows only when a sync is listed."""
COUNT_COLUMNS = (
    "records_added",
    "records_updated",
    "records_skipped",
    "import_errors",
    "duplicates",
    "customers_fetched",
    "records_archived",
    "events_read",
    "stripe_requests",
    "records_restored",
    "records_removed",
    "conflicts",
)
TABLE_HIDDEN = frozenset({"import_id", "reverted_import_id"})
"""Left out of the table to keep it readable; CSV, JSON and markdown carry them."""
REVERT_ONLY = ("records_restored", "records_removed", "conflicts")
"""Shown in the table only when one of the rows is a revert."""
TABLE_ERROR_WIDTH = 60
TABLE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
KINDS = {"stripe": "import", "stripe-sync": "sync", "stripe-revert": "revert"}


def parse_account_id(value: str) -> ObjectId:
    """The account id as an ``ObjectId``; ``ValueError`` naming the value when it is not one."""
    if not ObjectId.is_valid(value.strip()):
        raise ValueError(
            f"account id {value!r} is not valid: expected the account's 24-character hex "
            "ObjectId, e.g. 650000000000000000000001"
        )
    return ObjectId(value.strip())


def load_history(db, account_id: ObjectId, limit: int = DEFAULT_LIMIT) -> pd.DataFrame:
    """The account's last ``limit`` imports, newest first, one row each (see :data:`COLUMNS`).

    Results written before ``started_at`` existed sort after the rest, newest ``_id`` first.
    Seed-era documents that store the account id as a string are included.
    """
    cursor = (
        db[store.IMPORT_RESULTS]
        .find({"account_id": {"$in": [account_id, str(account_id)]}})
        .sort([("started_at", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)])
        .limit(limit)
    )
    return history_frame(cursor)


def history_frame(documents: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """``contact_import_results`` documents as one typed frame, tolerating older shapes.

    Times are UTC timestamps (missing: NaT); counts are nullable integers (missing: NA).
    """
    frame = pd.DataFrame([_history_record(document) for document in documents], columns=[*COLUMNS])
    for column in ("started_at", "finished_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    for column in COUNT_COLUMNS:
        frame[column] = frame[column].astype("Int64")
    return frame


def _history_record(document: Mapping[str, Any]) -> dict[str, Any]:
    errors = document.get("import_errors_count", document.get("revert_errors_count"))
    if errors is None and isinstance(document.get("importerrors"), list):
        errors = len(document["importerrors"])
    name = str(document.get("name") or "stripe")
    kind = "dry run" if document.get("dry_run") is True else KINDS.get(name, name)
    return {
        "started_at": _datetime(document.get("started_at")),
        "finished_at": _datetime(document.get("finished_at")),
        "status": str(document.get("status") or ""),
        "kind": kind,
        "type": str(document.get("type") or ""),
        **{column: _count(document.get(column)) for column in COUNT_COLUMNS},
        "import_errors": _count(errors),
        "import_id": _text(document.get("import_id")),
        "reverted_import_id": _text(document.get("reverted_import_id")),
        "run_id": _text(document.get("run_id")),
        "error": _text(document.get("error")),
    }


def _count(value: Any) -> int | None:
    """A count field: an int, or a list whose length is the count (duplicates may be listed)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, list | tuple):
        return len(value)
    return None


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _datetime(value: Any) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    # The embedded store and mongomock may hand back naive datetimes; the job writes UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def render(frame: pd.DataFrame, output_format: str) -> str:
    """The frame as ``table`` (people), ``markdown``, ``csv`` or ``json`` (tools)."""
    if output_format == "csv":
        return _for_tools(frame).to_csv(index=False)
    if output_format == "json":
        records = _for_tools(frame).to_json(orient="records", indent=2, date_format="iso")
        return ("[]" if frame.empty else records) + "\n"
    if output_format == "markdown":
        shown = _for_people(frame)
        align = ["right" if name in COUNT_COLUMNS else "left" for name in shown.columns]
        return shown.to_markdown(index=False, colalign=align) + "\n"
    return _table(frame)


def _for_tools(frame: pd.DataFrame) -> pd.DataFrame:
    """Times as ISO 8601 UTC text; missing values stay missing (empty in CSV, null in JSON)."""
    shown = frame.copy()
    for column in ("started_at", "finished_at"):
        shown[column] = shown[column].map(_iso, na_action="ignore")
    return shown


def _iso(value: pd.Timestamp) -> str:
    return value.to_pydatetime().isoformat()


def _for_people(frame: pd.DataFrame) -> pd.DataFrame:
    """Times to the second, missing values as ``-``."""
    shown = frame.copy()
    for column in ("started_at", "finished_at"):
        shown[column] = shown[column].dt.strftime(TABLE_TIME_FORMAT)
    return shown.astype(object).where(shown.notna(), "-")


def _table(frame: pd.DataFrame) -> str:
    """Aligned columns for a terminal: text left, counts right; columns no row uses left out."""
    hidden = set(TABLE_HIDDEN)
    if not (frame["kind"] == "revert").any():
        hidden.update(REVERT_ONLY)
    if not (frame["kind"] == "sync").any():
        hidden.update(SYNC_ONLY)
    if frame["error"].isna().all():
        hidden.add("error")
    shown = frame.drop(columns=sorted(hidden))
    if "error" in shown:
        shown["error"] = shown["error"].map(_shortened, na_action="ignore")
    shown = _for_people(shown)
    formatters = {
        name: _aligned(shown[name], COLUMNS[name], right=name in COUNT_COLUMNS)
        for name in shown.columns
    }
    text = shown.rename(columns=COLUMNS).to_string(
        index=False, justify="left", formatters={COLUMNS[name]: f for name, f in formatters.items()}
    )
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def _aligned(values: pd.Series, heading: str, right: bool) -> Callable[[Any], str]:
    width = max(len(heading), *(len(str(value)) for value in values))
    if right:
        return lambda value: f"{value!s:>{width}}"
    return lambda value: f"{value!s:<{width}}"


def _shortened(message: str) -> str:
    message = " ".join(message.split())
    if len(message) <= TABLE_ERROR_WIDTH:
        return message
    return message[: TABLE_ERROR_WIDTH - 1] + "…"


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
            "  python -m stripe_crm_pipelines.history --account 650000000000000000000001 \\\n"
            "      --format markdown >> report.md\n"
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
        help="table: aligned columns for people (default); markdown: every field, for reports; "
        "csv or json: every field, for tools",
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
        db = cli_store.open_store(cli_store.choose_store(), sys.stderr)
        frame = history_frame([]) if db is None else load_history(db, account_id, args.limit)
    except store.StoreConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except pymongo.errors.PyMongoError as error:
        print(f"error: cannot read {store.IMPORT_RESULTS}: {error}", file=sys.stderr)
        return 1
    if frame.empty and args.format in ("table", "markdown"):
        text = f"No imports recorded for account {account_id}.\n"
    else:
        text = render(frame, args.format)
    return _write(text)


def _write(text: str) -> int:
    """Print ``text`` line by line; a reader that stops early (``| head``) ends it quietly."""
    try:
        for line in text.splitlines(keepends=True):
            sys.stdout.write(line)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
