"""Open the CRM's MongoDB, whichever form ``MONGODB_URI`` takes, and keep its indexes.

``connect()`` is the one way scripts open the store; the ``mongo`` resource opens it through
:func:`open_database` with the URI and database name bound in ``definitions.py``:

* ``mongodb://…`` / ``mongodb+srv://…`` — a real MongoDB through pymongo.
* ``file:///absolute/dir`` — the embedded, on-disk store of local development, shared by
  several processes, and ``mongomock://name`` — an in-process store for tests. Both are local
  tooling (:mod:`stripe_crm_pipelines.local.stores`, the ``local`` extra), imported only when a
  URI asks for them; the production image holds neither.

Without ``MONGODB_URI`` the embedded store in :data:`DEFAULT_STORE_DIR` is used.

:class:`WrappedDatabase` is the one way the project puts behaviour around store calls: the
embedded store's write lock and the resource's retries (:mod:`stripe_crm_pipelines.resilience`)
are both a :class:`CallPolicy` applied to a wrapped database.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlparse

import pymongo
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.database import Database
from pymongo.errors import OperationFailure

QUEUES = "queues"
STRIPE_KEYS = "stripe_key"
ACCOUNTS = "_accounts"
CONTACTS = "contacts"
IMPORT_RESULTS = "contact_import_results"
IMPORT_CHANGES = "contact_import_changes"
PAYMENT_LINKS = "payment_links"
SYNC_STATES = "stripe_sync_state"

OBJECT_ID_PATTERN = r"^[0-9a-fA-F]{24}$"
"""A document ``_id`` as run config takes it: 24 hexadecimal characters."""

DEFAULT_DATABASE = "crm"
DEFAULT_STORE_DIR = (
    # An empty XDG_DATA_HOME counts as unset, as the XDG specification says.
    Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    / "stripe-crm-pipelines"
    / "store"
)
LOCAL_SCHEMES = ("file", "mongomock")
"""URI schemes served by the local tooling's back-ends."""

ENSURE_INDEXES_COMMAND = (
    'python -c "from stripe_crm_pipelines.store import connect, ensure_indexes; '
    'ensure_indexes(connect())"'
)
"""Creates the store's indexes with the ``MONGODB_URI`` of the shell that runs it."""

UNIQUE_CONTACT_INDEXES = ("by_stripe_customer", "by_email_key")
"""The contact indexes that keep one contact per Stripe id and per email on MongoDB."""

T = TypeVar("T")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


class StoreConfigError(ValueError):
    """``MONGODB_URI`` names a store this project cannot open."""


class MissingIndexesError(RuntimeError):
    """The store lacks the unique contact indexes and this process may not create them."""


def resolve_uri(uri: str | None = None) -> str:
    """The store URI to use: ``uri``, else ``MONGODB_URI``, else the default embedded store."""
    return uri or os.environ.get("MONGODB_URI") or DEFAULT_STORE_DIR.as_uri()


def database_name() -> str:
    """The database scripts open: ``MONGODB_DATABASE``, else ``crm``."""
    return os.environ.get("MONGODB_DATABASE") or DEFAULT_DATABASE


def connect(uri: str | None = None):
    """Open the store named by ``uri`` (default: ``MONGODB_URI``) and return its database.

    The database is the one named by ``MONGODB_DATABASE`` (default ``crm``). The result speaks
    pymongo's ``Database`` API for all three URI forms.
    """
    return open_database(resolve_uri(uri), database_name())


def uri_scheme(uri: str) -> str:
    """The URI's scheme, lower-cased ('' if it has none); never fails on the rest of it."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else ""


def file_store_directory(uri: str) -> Path:
    """The directory of a ``file:///absolute/dir`` store; a relative one (such as
    ``file://.local/store``, whose ``.local`` would be read as a host) is refused."""
    parsed = urlparse(uri)
    directory = Path(unquote(parsed.path))
    if parsed.netloc or not directory.is_absolute():
        raise StoreConfigError(f"MONGODB_URI file:// path must be absolute, got {uri!r}")
    return directory


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ``***``, fit for a terminal or a log.

    Parsed by hand rather than with ``urlparse``, which stops the address at a ``#``, ``?`` or
    ``/`` that an unescaped password may hold (pymongo accepts those) and so missed it."""
    password = _password_of(uri)
    if password is None:
        return uri
    scheme, _, rest = uri.partition("://")
    user = rest[: rest.rfind("@")].partition(":")[0]
    return f"{scheme}://{user}:***@{rest[rest.rfind('@') + 1 :]}"


def _password_of(uri: str) -> str | None:
    """The password of ``scheme://user:password@hosts…`` (the user info ends at the last
    ``@``), else None."""
    _, separator, rest = uri.partition("://")
    at = rest.rfind("@")
    if not separator or at < 0:
        return None
    _, colon, password = rest[:at].partition(":")
    return password if colon else None


def open_database(uri: str, name: str = DEFAULT_DATABASE):
    """Database ``name`` of the store at ``uri``; reads no environment variable."""
    scheme = uri_scheme(uri)
    if scheme in ("mongodb", "mongodb+srv"):
        return shared_client(uri, lambda: _mongo_client(uri))[name]
    if scheme in LOCAL_SCHEMES:
        try:
            from stripe_crm_pipelines.local import stores
        except ImportError as error:
            raise StoreConfigError(
                f"MONGODB_URI {scheme}:// stores are local tooling, missing here ({error}); "
                "install the project with its 'local' extra, or use mongodb://"
            ) from error
        return stores.open_local_database(uri, name)
    raise _unsupported(scheme)


def check_scheme(uri: str) -> None:
    """Raise :class:`StoreConfigError` unless ``uri`` names a kind of store this project opens."""
    scheme = uri_scheme(uri)
    if scheme not in ("mongodb", "mongodb+srv", *LOCAL_SCHEMES):
        raise _unsupported(scheme)


def _unsupported(scheme: str) -> StoreConfigError:
    return StoreConfigError(
        f"MONGODB_URI scheme {scheme!r} is not supported; use mongodb://, mongodb+srv://, "
        "file:///absolute/dir or mongomock://"
    )


def _mongo_client(uri: str) -> pymongo.MongoClient:
    try:
        return pymongo.MongoClient(uri, tz_aware=True)
    except (ValueError, pymongo.errors.ConfigurationError) as error:
        reason = str(error)
        if (password := _password_of(uri)) and password in reason:
            reason = reason.replace(password, "***")
        raise StoreConfigError(f"MONGODB_URI {redact_uri(uri)} is not usable: {reason}") from None


def shared_client(key: str, factory: Callable[[], Any]) -> Any:
    """The client cached under ``key`` in this process, made by ``factory`` the first time."""
    with _clients_lock:
        if key not in _clients:
            _clients[key] = factory()
        return _clients[key]


class CallPolicy(Protocol):
    """What a :class:`WrappedCollection` does around the calls of the methods it covers."""

    def covers(self, method: str) -> bool:
        """Whether calls of collection method ``method`` go through :meth:`run`."""
        ...

    def run(self, operation: str, function: Callable[[], T]) -> T:
        """Call ``function`` (the collection call ``operation``, e.g. ``queues.update_one``)."""
        ...


class WrappedCollection:
    """A collection whose calls of the methods ``policy`` covers run through the policy."""

    def __init__(self, collection: Any, policy: CallPolicy):
        self._collection = collection
        self._policy = policy

    @property
    def unwrapped(self) -> Any:
        """The collection without the policy."""
        return self._collection

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._collection, name)
        if not self._policy.covers(name):
            return attribute

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return self._policy.run(self._describe(name), lambda: attribute(*args, **kwargs))

        wrapped.__name__ = name
        return wrapped

    def _describe(self, method: str) -> str:
        return f"{getattr(self._collection, 'name', 'collection')}.{method}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WrappedCollection) and self._collection == other._collection

    def __hash__(self) -> int:
        return hash(self._collection.full_name)


class WrappedDatabase:
    """A database whose collections are :class:`WrappedCollection`s under one policy."""

    collection_class: type[WrappedCollection] = WrappedCollection

    def __init__(self, database: Any, policy: CallPolicy):
        self._database = database
        self._policy = policy

    @property
    def unwrapped(self) -> Any:
        """The database without the policy."""
        return self._database

    def __getitem__(self, name: str) -> WrappedCollection:
        return self.collection_class(self._database[name], self._policy)

    def get_collection(self, name: str, **kwargs: Any) -> WrappedCollection:
        return self.collection_class(self._database.get_collection(name, **kwargs), self._policy)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attribute = getattr(self._database, name)
        if hasattr(attribute, "find_one_and_update"):
            return self.collection_class(attribute, self._policy)
        return attribute


def unwrap(db: Any) -> Any:
    """The back-end database under any number of :class:`WrappedDatabase` layers."""
    while isinstance(db, WrappedDatabase):
        db = db.unwrapped
    return db


def prefers_one_writer(db) -> bool:
    """Whether ``db`` (wrapped or not) is the embedded store, where writers in several threads
    slow each other down: each connection that sees another's writes to a collection re-reads
    and re-indexes that whole collection before its next query."""
    return type(unwrap(db)).__module__.split(".")[0] == "litemongo"


def supports_partial_indexes(db) -> bool:
    """Whether ``db`` (wrapped or not) is a real MongoDB, where partial unique indexes are cheap.

    mongomock (and so the embedded store) checks a unique index by scanning the whole collection
    on every write, which makes a large import several times slower; there the contact keys are
    indexed without ``unique``.
    """
    return isinstance(unwrap(db), Database)


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
    db[IMPORT_CHANGES].create_indexes(
        [
            IndexModel([("import_id", ASCENDING), ("_id", ASCENDING)], name="by_import"),
            # A revert looks for later imports' changes of its contacts.
            IndexModel([("contact_id", ASCENDING), ("_id", ASCENDING)], name="by_contact"),
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


def ensure_contact_indexes(db) -> None:
    """Make sure a real MongoDB has the unique contact indexes before an import writes contacts.

    Without them two imports of one account could each insert the same contact. When they are
    missing, all indexes are created (:func:`ensure_indexes`); when this process may not create
    them, :class:`MissingIndexesError` says what to run. The local back-ends keep contacts
    unique under their write lock instead, so there is nothing to verify there.
    """
    if not supports_partial_indexes(db) or _has_unique_contact_indexes(db):
        return
    try:
        ensure_indexes(db)
    except OperationFailure as error:
        raise MissingIndexesError(
            f"the {CONTACTS!r} collection lacks the unique indexes "
            f"{', '.join(UNIQUE_CONTACT_INDEXES)} and they could not be created "
            f"(MongoDB error {error.code}: {error.details and error.details.get('errmsg')}). "
            "With a user that may create indexes, and this deployment's MONGODB_URI and "
            f"MONGODB_DATABASE, run: {ENSURE_INDEXES_COMMAND} (an index of the same name without "
            f"'unique' must be dropped first, e.g. db.{CONTACTS}.dropIndex('by_email_key'))"
        ) from error


def _has_unique_contact_indexes(db) -> bool:
    indexes = db[CONTACTS].index_information()
    return all(indexes.get(name, {}).get("unique") for name in UNIQUE_CONTACT_INDEXES)
