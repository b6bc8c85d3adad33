"""What the Dagster UI shows of an import: run metadata and the account's asset event.

The same counts as the ``contact_import_results`` document (``results``), so the run page tells
the story without opening the store.
"""

from __future__ import annotations

import json
from typing import Any

from bson import ObjectId
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from stripe_crm_pipelines.billing_import.results import LISTING_WITHOUT_SNAPSHOT, ImportOutcome

METADATA_ERROR_ROWS = 20


def run_metadata(outcome: ImportOutcome) -> dict[str, Any]:
    """What the run page shows for an import: counts, Stripe traffic, errors and a sample."""
    metadata: dict[str, Any] = {
        "records_added": MetadataValue.int(outcome.records_added),
        "records_updated": MetadataValue.int(outcome.records_updated),
        "records_skipped": MetadataValue.int(outcome.records_skipped),
        "import_errors": MetadataValue.int(outcome.import_errors_count),
        "duplicates": MetadataValue.int(outcome.duplicates),
        "customers_fetched": MetadataValue.int(outcome.customers_fetched),
        "pages_fetched": MetadataValue.int(outcome.pages_fetched),
        "email_keys_backfilled": MetadataValue.int(outcome.email_keys_backfilled),
        "limit_reached": MetadataValue.bool(outcome.limit_reached),
        "stripe_requests": MetadataValue.int(outcome.stripe_requests),
        "stripe_retries": MetadataValue.int(outcome.stripe_retries),
        "stripe_throttled": MetadataValue.int(outcome.stripe_throttled),
        "duration_seconds": MetadataValue.float(outcome.duration_seconds),
    }
    if outcome.created_filter_refused:
        metadata["listing"] = MetadataValue.text(LISTING_WITHOUT_SNAPSHOT)
    if outcome.max_customers is not None:
        metadata["max_customers"] = MetadataValue.int(outcome.max_customers)
    if outcome.importerrors:
        metadata["first_errors"] = MetadataValue.table(
            records=[
                TableRecord(
                    {
                        "stripe_customer_id": error["stripe_customer_id"] or "",
                        "email": error["email"] or "",
                        "message": error["message"],
                    }
                )
                for error in outcome.importerrors[:METADATA_ERROR_ROWS]
            ],
            schema=TableSchema(
                columns=[
                    TableColumn("stripe_customer_id", "string"),
                    TableColumn("email", "string"),
                    TableColumn("message", "string"),
                ]
            ),
        )
    if outcome.duplicate_customers:
        metadata["first_duplicates"] = MetadataValue.json(
            outcome.duplicate_customers[:METADATA_ERROR_ROWS]
        )
    if outcome.skip_reasons:
        metadata["skip_reasons"] = MetadataValue.json(outcome.skip_reasons)
    if outcome.dry_run:
        metadata["dry_run"] = MetadataValue.bool(True)
        metadata["preview"] = preview_table(outcome.preview)
    if outcome.samples:
        metadata["sample_contacts"] = MetadataValue.json(_json_safe(outcome.samples))
    return metadata


def closed_metadata(
    import_id: str, result_id: ObjectId | None, outcome: ImportOutcome
) -> dict[str, Any]:
    """The metadata of a failure that closed the request: which request, which result, counts."""
    return {
        "import_id": MetadataValue.text(import_id),
        "result_id": MetadataValue.text(str(result_id)),
        **run_metadata(outcome),
    }


def import_asset_metadata(outcome: ImportOutcome, result_id: ObjectId) -> dict[str, Any]:
    """What the account's ``crm_contacts`` partition records of a completed import, so the asset
    catalog lists every account's import history."""
    return {
        **{name: MetadataValue.int(value) for name, value in outcome.counts().items()},
        "stripe_requests": MetadataValue.int(outcome.stripe_requests),
        "import_id": MetadataValue.text(outcome.import_id),
        "result_id": MetadataValue.text(str(result_id)),
    }


def preview_table(preview: list[dict[str, Any]]) -> MetadataValue:
    """A dry run's planned changes as a table: one row per customer, changes as text."""
    return MetadataValue.table(
        records=[
            TableRecord(
                {
                    "stripe_customer_id": entry["stripe_customer_id"] or "",
                    "email": entry["email"] or "",
                    "action": entry["action"],
                    "changes": _describe_changes(entry),
                }
            )
            for entry in preview
        ],
        schema=TableSchema(
            columns=[
                TableColumn("stripe_customer_id", "string"),
                TableColumn("email", "string"),
                TableColumn("action", "string"),
                TableColumn("changes", "string"),
            ]
        ),
    )


def _describe_changes(entry: dict[str, Any]) -> str:
    if entry["action"] == "skip":
        return f"skipped: {entry.get('reason', '')}"
    return "; ".join(
        f"{name}: {_shown(before)} → {_shown(after)}"
        for name, (before, after) in entry["changes"].items()
    )


def _shown(value: Any) -> str:
    return "∅" if value is None else json.dumps(_json_safe(value), ensure_ascii=False)


def _json_safe(value: Any) -> Any:
    """ObjectIds and datetimes as strings, so samples render as JSON."""
    return json.loads(json.dumps(value, default=str))
