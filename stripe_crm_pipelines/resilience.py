"""Retry MongoDB calls that fail for a moment: a dropped connection, a failover, a timeout.

When a server goes away mid-call pymongo raises ``AutoReconnect`` (``NetworkTimeout`` is one) or
another ``ConnectionFailure``; a replica-set election takes seconds. :class:`ResilientDatabase`
wraps a database so that the calls the jobs make are retried with exponential backoff and
jitter (:class:`MongoRetry`). Only calls that are safe to repeat are retried:

* reads (``find`` is read to the end inside the retry, ``find_one``, counts);
* ``$set`` updates and upserts addressed by a key, ``bulk_write`` of them;
* claims by a conditional update (``find_one_and_update``): a repeated claim whose first try did
  take effect finds nothing left to claim, and the claiming op then checks who holds it;
* results replaced by their (import, run) key.

Inserts are passed through unretried: repeating one that took effect would insert it twice.

A repeated ``bulk_write`` whose first try took effect re-applies the same ``$set`` values, so
the documents are right; an upsert that created a document the first time is counted as an
update the second time.

``bulk_write`` also retries, once, the upserts that lost a race with another writer inserting
the same unique key (duplicate key error 11000): the retry finds the document the other writer
inserted and updates it, as MongoDB itself does for a single upsert. Two imports of one account
therefore converge on one contact per email instead of reporting an import error.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from time import sleep
from typing import Any, TypeVar

from dagster import get_dagster_logger
from pymongo.errors import BulkWriteError
from pymongo.results import BulkWriteResult, InsertManyResult

from stripe_crm_pipelines.errors import DUPLICATE_KEY, MONGO_CONNECTION_ERRORS
from stripe_crm_pipelines.store import WrappedCollection, WrappedDatabase

RETRIED_METHODS = frozenset(
    {
        "find_one",
        "count_documents",
        "estimated_document_count",
        "distinct",
        "update_one",
        "update_many",
        "replace_one",
        "find_one_and_update",
        "find_one_and_replace",
        "delete_one",
        "delete_many",
        "create_index",
        "create_indexes",
    }
)
_CURSOR_MODIFIERS = frozenset(
    {"sort", "limit", "skip", "batch_size", "hint", "max_time_ms", "comment", "allow_disk_use"}
)
_COUNTS = ("nInserted", "nUpserted", "nMatched", "nModified", "nRemoved")

T = TypeVar("T")


@dataclass(frozen=True)
class MongoRetry:
    """How often and how patiently a transient MongoDB error is retried."""

    attempts: int = 5
    """Tries in all, the first included."""
    initial_delay: float = 0.2
    """Seconds before the second try; doubles per try, with jitter."""
    max_delay: float = 5.0

    def covers(self, method: str) -> bool:
        """Whether calls of ``method`` are safe to repeat, so retried."""
        return method in RETRIED_METHODS

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based): exponential, jittered
        between half and all of it so that writers that failed together retry apart."""
        return min(self.initial_delay * 2 ** (attempt - 1), self.max_delay) * random.uniform(
            0.5, 1.0
        )

    def run(self, operation: str, function: Callable[[], T]) -> T:
        """``function()``, retried after a transient error until it succeeds or the tries run
        out (then the last error is raised). ``operation`` names it in the log."""
        attempt = 1
        while True:
            try:
                return function()
            except MONGO_CONNECTION_ERRORS as error:
                if attempt >= self.attempts:
                    raise
                delay = self.delay(attempt)
                get_dagster_logger(__name__).warning(
                    f"MongoDB {operation} failed ({type(error).__name__}: {error}); "
                    f"try {attempt + 1} of {self.attempts} in {delay:.2f}s"
                )
                sleep(delay)
                attempt += 1


class ResilientCollection(WrappedCollection):
    """A collection whose idempotent calls retry transient errors (see module doc): the store's
    :class:`~stripe_crm_pipelines.store.WrappedCollection` under a :class:`MongoRetry`, with
    ``find`` read in full inside the retry and ``bulk_write`` finishing lost upsert races."""

    _policy: MongoRetry

    def find(self, *args: Any, **kwargs: Any) -> RetryingCursor:
        return RetryingCursor(
            self._describe("find"), lambda: self._collection.find(*args, **kwargs), self._policy
        )

    def insert_many(self, documents: Sequence[Any], ordered: bool = True, **kwargs: Any) -> Any:
        """Retried when every document carries its own ``_id`` and order does not matter (the
        change log's entries): a try repeated after a lost reply meets the entries the first
        one wrote as duplicate ``_id`` keys, and those count as inserted. Otherwise not
        retried."""
        documents = list(documents)
        if ordered or not all(isinstance(d, dict) and "_id" in d for d in documents):
            return self._collection.insert_many(documents, ordered=ordered, **kwargs)
        tries = 0

        def insert() -> Any:
            nonlocal tries
            tries += 1
            try:
                return self._collection.insert_many(documents, ordered=False, **kwargs)
            except BulkWriteError as error:
                errors = error.details.get("writeErrors", [])
                if tries == 1 or any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                return InsertManyResult([d["_id"] for d in documents], acknowledged=True)

        return self._policy.run(self._describe("insert_many"), insert)

    def bulk_write(self, requests: Sequence[Any], ordered: bool = True, **kwargs: Any) -> Any:
        requests = list(requests)
        try:
            return self._policy.run(
                self._describe("bulk_write"),
                lambda: self._collection.bulk_write(requests, ordered=ordered, **kwargs),
            )
        except BulkWriteError as error:
            if ordered:
                raise
            return self._retry_lost_upsert_races(requests, error, kwargs)

    def _retry_lost_upsert_races(
        self, requests: list[Any], error: BulkWriteError, kwargs: dict[str, Any]
    ) -> BulkWriteResult:
        first = error.details
        lost = [
            entry["index"]
            for entry in first.get("writeErrors", [])
            if entry.get("code") == DUPLICATE_KEY and _is_upsert(requests[entry["index"]])
        ]
        if not lost:
            raise error
        get_dagster_logger(__name__).info(
            f"{len(lost)} upsert(s) lost a race with another writer of the same key; "
            "retrying them as updates"
        )
        retried = [requests[i] for i in lost]
        try:
            second = self._policy.run(
                self._describe("bulk_write"),
                lambda: self._collection.bulk_write(retried, ordered=False, **kwargs),
            ).bulk_api_result
        except BulkWriteError as again:
            second = again.details
        merged = merge_bulk_results(first, second, lost)
        if merged["writeErrors"]:
            raise BulkWriteError(merged)
        return BulkWriteResult(merged, acknowledged=True)


class ResilientDatabase(WrappedDatabase):
    """A pymongo-style database whose collections retry transient errors (see module doc)."""

    collection_class = ResilientCollection

    def __init__(self, database: Any, retry: MongoRetry | None = None):
        super().__init__(database, retry or MongoRetry())


def merge_bulk_results(
    first: dict[str, Any], retry: dict[str, Any], retried: Sequence[int]
) -> dict[str, Any]:
    """One ``bulk_api_result`` for a bulk write whose operations at positions ``retried`` failed
    in ``first`` and were written again as the bulk ``retry`` (its indexes are positions in
    ``retried``)."""
    merged: dict[str, Any] = {name: first.get(name, 0) + retry.get(name, 0) for name in _COUNTS}
    retried_set = set(retried)
    merged["writeErrors"] = sorted(
        [e for e in first.get("writeErrors", []) if e["index"] not in retried_set]
        + [{**e, "index": retried[e["index"]]} for e in retry.get("writeErrors", [])],
        key=lambda entry: entry["index"],
    )
    merged["writeConcernErrors"] = [
        *first.get("writeConcernErrors", []),
        *retry.get("writeConcernErrors", []),
    ]
    merged["upserted"] = sorted(
        [
            *first.get("upserted", []),
            *({**u, "index": retried[u["index"]]} for u in retry.get("upserted", [])),
        ],
        key=lambda entry: entry["index"],
    )
    return merged


class RetryingCursor:
    """A ``find`` whose results are read in full inside the retry, so a connection lost halfway
    through the read starts the read again instead of ending it. Sorting and limiting chain as on
    a pymongo cursor."""

    def __init__(self, operation: str, open_cursor: Callable[[], Any], retry: MongoRetry):
        self._operation = operation
        self._open_cursor = open_cursor
        self._retry = retry
        self._modifiers: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._documents: Iterator[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        if name not in _CURSOR_MODIFIERS:
            raise AttributeError(f"{type(self).__name__} has no {name!r}")

        def modify(*args: Any, **kwargs: Any) -> RetryingCursor:
            self._modifiers.append((name, args, kwargs))
            return self

        return modify

    def _read_all(self) -> list[Any]:
        cursor = self._open_cursor()
        for name, args, kwargs in self._modifiers:
            cursor = getattr(cursor, name)(*args, **kwargs)
        return list(cursor)

    def __iter__(self) -> RetryingCursor:
        return self

    def __next__(self) -> Any:
        if self._documents is None:
            self._documents = iter(self._retry.run(self._operation, self._read_all))
        return next(self._documents)

    def to_list(self) -> list[Any]:
        return list(self)


def _is_upsert(operation: Any) -> bool:
    return bool(getattr(operation, "_upsert", False))
