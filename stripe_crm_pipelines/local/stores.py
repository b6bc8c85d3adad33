"""The store back-ends of local development and tests, opened by :func:`store.open_database`.

* ``file:///absolute/dir`` — an embedded, on-disk store (litemongo: mongomock's query engine over
  one SQLite file per collection) that several processes share. litemongo alone is not atomic
  across processes (a ``find_one_and_update`` reads and writes in separate SQLite transactions),
  so every write here runs under one inter-process file lock per store directory
  (:class:`WriteLock`). That makes claims, upserts and unique indexes sound across the
  webserver, the daemon and run workers.
* ``mongomock://name`` — an in-process store for tests; the same name in the same process opens
  the same data.

litemongo, mongomock and filelock are the project's ``local`` extra; the production image
installs neither them nor this package.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import filelock
import litemongo
import mongomock

from stripe_crm_pipelines.store import (
    WrappedDatabase,
    file_store_directory,
    shared_client,
    uri_scheme,
)

WRITE_METHODS = frozenset(
    {
        "insert_one",
        "insert_many",
        "update_one",
        "update_many",
        "replace_one",
        "delete_one",
        "delete_many",
        "find_one_and_update",
        "find_one_and_replace",
        "find_one_and_delete",
        "bulk_write",
        "create_index",
        "create_indexes",
        "drop_index",
        "drop_indexes",
        "drop",
    }
)

T = TypeVar("T")


LOCK_POLL_SECONDS = 0.005
"""How often a write waiting for the store's lock tries it again. filelock's default, 50 ms,
let an import writing batch after batch keep its own heartbeat thread out long enough that a
cancel request went unnoticed until the import was done."""


class WriteLock:
    """The call policy of the embedded store: every write holds its inter-process lock."""

    def __init__(self, lock: filelock.FileLock):
        self._lock = lock

    def covers(self, method: str) -> bool:
        return method in WRITE_METHODS

    def run(self, operation: str, function: Callable[[], T]) -> T:
        with self._lock.acquire(poll_interval=LOCK_POLL_SECONDS):
            return function()


def open_local_database(uri: str, name: str) -> Any:
    """Database ``name`` of a ``file://`` or ``mongomock://`` store."""
    if uri_scheme(uri) == "mongomock":
        return shared_client(uri, lambda: mongomock.MongoClient(tz_aware=True))[name]
    directory = file_store_directory(uri)
    return WrappedDatabase(_embedded_database(directory, name), WriteLock(_store_lock(directory)))


def _embedded_database(directory: Path, name: str) -> Any:
    directory.mkdir(parents=True, exist_ok=True)
    # litemongo's SQLite connections belong to the thread that opened them.
    key = f"file://{directory}#{threading.get_ident()}"
    client = shared_client(key, lambda: litemongo.connect(str(directory), tz_aware=True))
    return client[name]


@functools.cache
def _store_lock(directory: Path) -> filelock.FileLock:
    # Thread-local contexts: each thread takes the OS lock itself, so threads exclude each other
    # as processes do.
    return filelock.FileLock(str(directory / ".write.lock"))
