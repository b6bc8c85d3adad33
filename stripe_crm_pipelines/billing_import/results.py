"""What an import did: its counts and its ``contact_import_results`` document.

:class:`ImportOutcome` is the one value that travels between ops (Dagster pickles op outputs),
so it holds counts and a bounded number of error rows and samples, never the customers.

An import ends ``completed``, ``failed`` or ``cancelled`` (:data:`RESULT_STATUSES`); its request
gets the same status.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo import ReturnDocument

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.upsert import (
    PREVIEW_SIZE,
    SAMPLE_SIZE,
    BackfillResult,
    BatchResult,
    DuplicateCustomer,
    ImportErrorEntry,
    SkippedCustomer,
)

if TYPE_CHECKING:
    from stripe_crm_pipelines.resources.stripe import RequestStats

RESULT_NAME = "stripe"
RESULT_STATUSES = ("completed", "failed", "cancelled")
MAX_LISTED = 1000
"""Error and duplicate rows kept in the result document; the counts stay exact beyond it."""
LISTING_WITHOUT_SNAPSHOT = "sequential, no snapshot (server refused created)"
"""How the run page describes a listing the server would not filter by ``created``."""


@dataclass
class ImportOutcome:
    """Counts of one import, accumulated page by page inside its run."""

    import_id: str
    account_id: str
    user_id: str
    contact_type: str
    started_at: datetime
    max_customers: int | None = None
    records_added: int = 0
    records_updated: int = 0
    records_skipped: int = 0
    import_errors_count: int = 0
    duplicates: int = 0
    customers_fetched: int = 0
    pages_fetched: int = 0
    email_keys_backfilled: int = 0
    email_key_conflicts: int = 0
    limit_reached: bool = False
    created_filter_refused: bool = False
    """The server refused the ``created`` filter: the customers were listed sequentially without
    a snapshot, so customers created during the import may or may not be included."""
    stripe_requests: int = 0
    stripe_retries: int = 0
    stripe_throttled: int = 0
    finished_at: datetime | None = None
    importerrors: list[dict[str, Any]] = field(default_factory=list)
    duplicate_customers: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    """Nothing was written: the counts are what the import would have written."""
    skip_reasons: dict[str, int] = field(default_factory=dict)
    skipped_customers: list[dict[str, Any]] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)
    """Dry runs: the first planned changes (see ``upsert.PlannedChange.preview``)."""
    events_cursor: dict[str, Any] | None = None
    """Of a ``keep_in_sync`` import: where Stripe's event log stood when the import began, so the
    first sync applies every change made while it ran (kept across resumes)."""

    def add_backfill(self, backfill: BackfillResult) -> None:
        self.email_keys_backfilled += backfill.updated
        self.email_key_conflicts += backfill.conflicts

    def add_batch(self, pages: int, customers: int, batch: BatchResult) -> None:
        """Count a written batch: the Stripe pages it took, its customers and what they did."""
        self.pages_fetched += pages
        self.customers_fetched += customers
        self.records_added += batch.added
        self.records_updated += batch.updated
        self.records_skipped += batch.skipped
        self.add_errors(batch.errors)
        self.add_duplicates(batch.duplicates)
        self.samples.extend(batch.samples[: SAMPLE_SIZE - len(self.samples)])
        self.add_skips(batch.skip_reasons, batch.skipped_customers)
        if self.dry_run:
            self.preview.extend(batch.preview[: PREVIEW_SIZE - len(self.preview)])

    def add_skips(self, reasons: dict[str, int], skipped: list[SkippedCustomer]) -> None:
        for reason, count in reasons.items():
            self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + count
        room = MAX_LISTED - len(self.skipped_customers)
        self.skipped_customers.extend(item.as_document() for item in skipped[:room])

    def add_errors(self, errors: list[ImportErrorEntry]) -> None:
        self.import_errors_count += len(errors)
        room = MAX_LISTED - len(self.importerrors)
        self.importerrors.extend(error.as_document() for error in errors[:room])

    def add_duplicates(self, duplicates: list[DuplicateCustomer]) -> None:
        self.duplicates += len(duplicates)
        room = MAX_LISTED - len(self.duplicate_customers)
        self.duplicate_customers.extend(item.as_document() for item in duplicates[:room])

    def record_requests(self, stats: RequestStats) -> None:
        self.stripe_requests = stats.requests
        self.stripe_retries = stats.retries
        self.stripe_throttled = stats.throttled

    def finish(self, now: datetime | None = None) -> None:
        self.finished_at = now or datetime.now(UTC)

    @property
    def duration_seconds(self) -> float:
        end = self.finished_at or datetime.now(UTC)
        return round((end - self.started_at).total_seconds(), 3)

    def counts(self) -> dict[str, int]:
        """The counts the result document, the run page and the asset catalog all show."""
        return {
            "records_added": self.records_added,
            "records_updated": self.records_updated,
            "records_skipped": self.records_skipped,
            "import_errors_count": self.import_errors_count,
            "duplicates": self.duplicates,
            "customers_fetched": self.customers_fetched,
            "pages_fetched": self.pages_fetched,
        }

    def checkpoint(self) -> dict[str, Any]:
        """The progress saved on the request after each page (see :meth:`resume`)."""
        state = asdict(self)
        del state["samples"]
        return state

    @classmethod
    def resume(cls, checkpoint: dict[str, Any]) -> ImportOutcome:
        """The outcome as a checkpoint left it, to continue an import after an op retry."""
        names = {name for name in cls.__dataclass_fields__ if name != "samples"}
        return cls(**{name: value for name, value in checkpoint.items() if name in names})


def result_document(
    outcome: ImportOutcome, *, status: str, run_id: str, error: str | None = None
) -> dict[str, Any]:
    """The ``contact_import_results`` document of an import (see :data:`RESULT_STATUSES`)."""
    document: dict[str, Any] = {
        "status": status,
        "name": RESULT_NAME,
        "type": outcome.contact_type,
        **outcome.counts(),
        "user_id": _object_id_or_none(outcome.user_id),
        "account_id": outcome.account_id,
        "importerrors": list(outcome.importerrors),
        "duplicate_customers": list(outcome.duplicate_customers),
        "skip_reasons": dict(outcome.skip_reasons),
        "skipped_customers": list(outcome.skipped_customers),
        "dry_run": outcome.dry_run,
        "email_keys_backfilled": outcome.email_keys_backfilled,
        "email_key_conflicts": outcome.email_key_conflicts,
        "max_customers": outcome.max_customers,
        "limit_reached": outcome.limit_reached,
        "created_filter_refused": outcome.created_filter_refused,
        "stripe_requests": outcome.stripe_requests,
        "stripe_retries": outcome.stripe_retries,
        "stripe_throttled": outcome.stripe_throttled,
        "import_id": _object_id_or_none(outcome.import_id),
        "run_id": run_id,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
    }
    if outcome.dry_run:
        document["preview"] = list(outcome.preview)
    if error is not None:
        document["error"] = error
    return document


def save_result(db, document: dict[str, Any]) -> ObjectId:
    """Insert the result once per run, even when the op writing it is retried."""
    saved = db[store.IMPORT_RESULTS].find_one_and_replace(
        {"import_id": document["import_id"], "run_id": document["run_id"]},
        document,
        projection={"_id": 1},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return saved["_id"]


def _object_id_or_none(value: str | None) -> ObjectId | None:
    return ObjectId(value) if value and ObjectId.is_valid(value) else None
