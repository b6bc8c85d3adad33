"""Open the CRM's MongoDB, whichever form ``MONGODB_URI`` takes, and keep its indexes.

``connect()`` is the one way the project (and scripts around it) opens the store:

* ``mongodb://…`` / ``mongodb+srv://…`` — a real MongoDB through pymongo.
* ``file:///absolute/dir`` — an embedded, on-disk store (litemongo: mongomock's query engine over
  one SQLite file per collection) that several processes share. litemongo alone is not atomic
  across processes (a ``find_one_and_update`` reads and writes in separate SQLite transactions),
  so every write here runs under one inter-process file lock per store directory. That makes
  claims, upserts and unique indexes sound across the webserver, the daemon and run workers.
* ``mongomock://name`` — an in-process store for tests; the same name in the same process opens
  the same data.

Without ``MONGODB_URI`` the embedded store in :data:`DEFAULT_STORE_DIR` is used.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import filelock
import pymongo
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.database import Database

QUEUES = "queues"
STRIPE_KEYS = "stripe_key"
ACCOUNTS = "_accounts"
CONTACTS = "contacts"
IMPORT_RESULTS = "contact_import_results"
PAYMENT_LINKS = "payment_links"
SYNC_STATES = "stripe_sync_state"

DEFAULT_DATABASE = "crm"
DEFAULT_STORE_DIR = (
    Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    / "stripe-crm-pipelines"
    / "store"
)

_WRITE_METHODS = frozenset(
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

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


class StoreConfigError(ValueError):
    """``MONGODB_URI`` names a store this project cannot open."""


def resolve_uri(uri: str | None = None) -> str:
    """The store URI to use: ``uri``, else ``MONGODB_URI``, else the default embedded store."""
    return uri or os.environ.get("MONGODB_URI") or DEFAULT_STORE_DIR.as_uri()


def database_name() -> str:
    return os.environ.get("MONGODB_DATABASE") or DEFAULT_DATABASE


def connect(uri: str | None = None):
    """Open the store named by ``uri`` (default: ``MONGODB_URI``) and return its database.

    The database is the one named by ``MONGODB_DATABASE`` (default ``crm``). The result speaks
    pymongo's ``Database`` API for all three URI forms.
    """
    resolved = resolve_uri(uri)
    scheme = urlparse(resolved).scheme
    name = database_name()
    if scheme in ("mongodb", "mongodb+srv"):
        return _client(resolved, lambda: pymongo.MongoClient(resolved, tz_aware=True))[name]
    if scheme == "mongomock":
        import mongomock

        return _client(resolved, lambda: mongomock.MongoClient(tz_aware=True))[name]
    if scheme == "file":
        parsed = urlparse(resolved)
        directory = Path(unquote(parsed.path))
        if parsed.netloc or not directory.is_absolute():
            raise StoreConfigError(f"MONGODB_URI file:// path must be absolute, got {resolved!r}")
        return LockedDatabase(_embedded_database(directory, name), _store_lock(directory))
    raise StoreConfigError(
        f"MONGODB_URI scheme {scheme!r} is not supported; use mongodb://, mongodb+srv://, "
        "file:///absolute/dir or mongomock://"
    )


def _client(key: str, factory):
    with _clients_lock:
        if key not in _clients:
            _clients[key] = factory()
        return _clients[key]


def _embedded_database(directory: Path, name: str):
    import litemongo

    directory.mkdir(parents=True, exist_ok=True)
    # litemongo's SQLite connections belong to the thread that opened them.
    key = f"file://{directory}#{threading.get_ident()}"
    client = _client(key, lambda: litemongo.connect(str(directory), tz_aware=True))
    return client[name]


@functools.cache
def _store_lock(directory: Path) -> filelock.FileLock:
    # Thread-local contexts: each thread takes the OS lock itself, so threads exclude each other
    # as processes do.
    return filelock.FileLock(str(directory / ".write.lock"))


class LockedCollection:
    """A collection whose writes hold the store's inter-process lock."""

    def __init__(self, collection, lock: filelock.FileLock):
        self._collection = collection
        self._lock = lock

    def __getattr__(self, name: str):
        attribute = getattr(self._collection, name)
        if name not in _WRITE_METHODS:
            return attribute

        @functools.wraps(attribute)
        def locked(*args, **kwargs):
            with self._lock:
                return attribute(*args, **kwargs)

        return locked

    def __eq__(self, other) -> bool:
        return isinstance(other, LockedCollection) and self._collection == other._collection

    def __hash__(self) -> int:
        return hash(self._collection.full_name)


class LockedDatabase:
    """A database whose collections serialise their writes through one file lock."""

    def __init__(self, database, lock: filelock.FileLock):
        self._database = database
        self._lock = lock

    def __getitem__(self, name: str) -> LockedCollection:
        return LockedCollection(self._database[name], self._lock)

    def get_collection(self, name: str, **kwargs) -> LockedCollection:
        return LockedCollection(self._database.get_collection(name, **kwargs), self._lock)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        attribute = getattr(self._database, name)
        if hasattr(attribute, "find_one_and_update"):
            return LockedCollection(attribute, self._lock)
        return attribute


def supports_partial_indexes(db) -> bool:
    """Whether ``db`` is a real MongoDB, where partial unique indexes are cheap.

    mongomock (and so the embedded store) checks a unique index by scanning the whole collection
    on every write, which makes a large import several times slower; there the contact keys are
    indexed without ``unique``.
    """
    return isinstance(db, Database)


def ensure_indexes(db) -> None:
    """Create the indexes the jobs query by and the ones that keep contacts unique. Idempotent.

    On MongoDB, contacts are unique per account and type by Stripe id and by normalised email
    (partial unique indexes). On mongomock the same keys are indexed without ``unique`` (see
    :func:`supports_partial_indexes`); the embedded store still converges concurrent upserts,
    because every write holds its inter-process lock.
    """
    unique = supports_partial_indexes(db)

    def unique_when_present(field: str) -> dict:
        if not unique:
            return {}
        return {"unique": True, "partialFilterExpression": {field: {"$type": "string"}}}

    db[QUEUES].create_indexes(
        [
            IndexModel(
                [("source", ASCENDING), ("status", ASCENDING), ("createdAt", DESCENDING)],
                name="pending_by_source",
            )
        ]
    )
    db[STRIPE_KEYS].create_indexes(
        [IndexModel([("account_id", ASCENDING), ("connected_apps", ASCENDING)], name="by_app")]
    )
    db[CONTACTS].create_indexes(
        [
            IndexModel(
                [("parent_account", ASCENDING), ("type", ASCENDING), ("email", ASCENDING)],
                name="by_account_type_email",
            ),
            IndexModel(
                [
                    ("parent_account", ASCENDING),
                    ("type", ASCENDING),
                    ("stripe_customer_id", ASCENDING),
                ],
                name="by_stripe_customer",
                **unique_when_present("stripe_customer_id"),
            ),
            IndexModel(
                [("parent_account", ASCENDING), ("type", ASCENDING), ("email_key", ASCENDING)],
                name="by_email_key",
                **unique_when_present("email_key"),
            ),
        ]
    )
    db[IMPORT_RESULTS].create_indexes(
        [
            IndexModel([("account_id", ASCENDING), ("started_at", DESCENDING)], name="by_account"),
            IndexModel([("import_id", ASCENDING)], name="by_import"),
        ]
    )
    db[PAYMENT_LINKS].create_indexes(
        [IndexModel([("account_id", ASCENDING), ("contact_id", ASCENDING)], name="by_contact")]
    )
    db[SYNC_STATES].create_indexes(
        [
            IndexModel(
                [("account_id", ASCENDING), ("type", ASCENDING)],
                name="by_account_type",
                unique=True,
            )
        ]
    )
