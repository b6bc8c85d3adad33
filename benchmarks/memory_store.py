"""The benchmark's in-memory CRM store: mongomock with hash indexes, served from its own process.

Two things make plain ``mongomock://`` unusable for a throughput benchmark:

* mongomock scans every document of a collection for every query and every write (an update by
  ``_id`` included), so 10,000 upserts into 15,000 contacts cost 150 million filter evaluations.
  :class:`IndexedCollection` keeps hash indexes on the fields the import and the seed's algorithm
  look contacts up by (``_id``, ``email``, ``email_key``, ``stripe_customer_id``) and evaluates
  mongomock's own filter only on the candidates they give, so results are mongomock's.
* mongomock parses its version strings again on every write; the server caches the parse.
* In the importing process the store's documents would count towards that process's memory.
  MongoDB keeps them elsewhere, so here does a server process (:func:`serve`); each collection
  method call is one request to it, as each is one round trip to MongoDB, and
  :class:`RemoteDatabase` counts them (and can add a network's round-trip time to each).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.managers import BaseManager
from typing import Any

import mongomock
import mongomock.database
import packaging.version
from bson import ObjectId
from mongomock.filtering import filter_applies

INDEXED_FIELDS = ("email", "email_key", "stripe_customer_id")
_UNINDEXABLE = object()
_ABSENT = object()


class _Index:
    """value → ids per indexed field, for one collection's documents."""

    def __init__(self) -> None:
        self.by_value: dict[str, dict[str, dict[Any, None]]] = {f: {} for f in INDEXED_FIELDS}
        self.unindexable: dict[str, dict[Any, None]] = {f: {} for f in INDEXED_FIELDS}
        self.absent: dict[str, dict[Any, None]] = {f: {} for f in INDEXED_FIELDS}
        """Ids without the field (or null): MongoDB answers ``{field: null}`` from the index."""
        self.keys: dict[Any, dict[str, Any]] = {}
        self.dirty = True


class IndexedCollection(mongomock.Collection):
    """A mongomock collection whose queries start from hash-index candidates when they can."""

    @property
    def _index(self) -> _Index:
        index = getattr(self._store, "_benchmark_index", None)
        if index is None:
            index = _Index()
            self._store._benchmark_index = index
        if index.dirty:
            self._rebuild(index)
        return index

    def _rebuild(self, index: _Index) -> None:
        index.__init__()
        index.dirty = False
        for document in list(self._store.documents):
            self._add(index, document)

    @staticmethod
    def _add(index: _Index, document: dict[str, Any]) -> None:
        keys: dict[str, Any] = {}
        for name in INDEXED_FIELDS:
            if name not in document or document[name] is None:
                index.absent[name][document["_id"]] = None
                keys[name] = _ABSENT
                continue
            value = document[name]
            if isinstance(value, str):
                index.by_value[name].setdefault(value, {})[document["_id"]] = None
                keys[name] = value
            else:
                index.unindexable[name][document["_id"]] = None
                keys[name] = _UNINDEXABLE
        index.keys[document["_id"]] = keys

    def _reindex(self, document_id: Any) -> None:
        index = self._index
        for name, value in index.keys.pop(document_id, {}).items():
            if value is _UNINDEXABLE:
                index.unindexable[name].pop(document_id, None)
            elif value is _ABSENT:
                index.absent[name].pop(document_id, None)
            else:
                ids = index.by_value[name].get(value)
                if ids is not None:
                    ids.pop(document_id, None)
        if document_id in self._store:
            self._add(index, self._store[document_id])

    def _candidates(self, query: Any) -> list[Any] | None:
        """Ids that may match ``query`` (a superset), or None when no index applies."""
        if not isinstance(query, dict):
            return None
        best: list[Any] | None = None
        if "_id" in query and not isinstance(query["_id"], dict | list):
            best = [query["_id"]]
        index = self._index
        for name in INDEXED_FIELDS:
            if name not in query:
                continue
            condition = query[name]
            if condition is None:
                if best is None or len(index.absent[name]) < len(best):
                    best = list(index.absent[name])
                continue
            if isinstance(condition, str):
                values = [condition]
            elif (
                isinstance(condition, dict)
                and list(condition) == ["$in"]
                and all(isinstance(value, str) for value in condition["$in"])
            ):
                values = condition["$in"]
            else:
                continue
            ids: dict[Any, None] = {}
            for value in values:
                ids.update(index.by_value[name].get(value, {}))
            ids.update(index.unindexable[name])
            if best is None or len(ids) < len(best):
                best = list(ids)
        if best is None and isinstance(query.get("$or"), list):
            branches = [self._candidates(branch) for branch in query["$or"]]
            if all(branch is not None for branch in branches):
                merged: dict[Any, None] = {}
                for branch in branches:
                    merged.update(dict.fromkeys(branch))
                best = list(merged)
        return best

    def _iter_documents(self, filter):
        ids = self._candidates(filter)
        if ids is None:
            documents = super()._iter_documents(filter)
        else:
            store = self._store
            candidates = [store[i] for i in ids if i in store]
            documents = _matching(filter, candidates)
        touched = getattr(self, "_touched", None)
        if touched is None:
            return documents
        return _recording(documents, touched)

    def _insert(self, data, session=None, ordered=True):
        try:
            result = super()._insert(data, session, ordered)
        except Exception:
            self._index.dirty = True
            raise
        for document_id in result if isinstance(result, list) else [result]:
            self._reindex(document_id)
        return result

    def _update(self, spec, document, *args, **kwargs):
        touched: list[dict[str, Any]] = []
        self._touched = touched
        try:
            return super()._update(spec, document, *args, **kwargs)
        finally:
            self._touched = None
            for changed in touched:
                self._reindex(changed["_id"])

    def _delete(self, *args, **kwargs):
        try:
            return super()._delete(*args, **kwargs)
        finally:
            self._index.dirty = True


_MISSING = object()
_PLAIN_TYPES = (str, ObjectId, bool)


def _matching(query: dict[str, Any], candidates: list[dict[str, Any]]):
    """The candidates ``query`` matches. Queries of the import's shape (equality on plain values
    and an ``$or`` of branches of string equalities or ``$in`` lists) are evaluated here, much
    faster than mongomock's ``$in``; anything else, or a document holding arrays, goes to
    mongomock."""
    plain: list[tuple[str, Any]] = []
    alternatives: list[list[tuple[str, frozenset[str]]]] | None = None
    for key, condition in query.items():
        if key == "$or" and isinstance(condition, list):
            alternatives = []
            for branch in condition:
                if not (isinstance(branch, dict) and branch):
                    return (d for d in candidates if filter_applies(query, d))
                conditions: list[tuple[str, frozenset[str]]] = []
                for name, value in branch.items():
                    if isinstance(value, str):
                        conditions.append((name, frozenset([value])))
                    elif (
                        isinstance(value, dict)
                        and list(value) == ["$in"]
                        and all(isinstance(item, str) for item in value["$in"])
                    ):
                        conditions.append((name, frozenset(value["$in"])))
                    else:
                        return (d for d in candidates if filter_applies(query, d))
                alternatives.append(conditions)
        elif key.startswith("$") or "." in key or not isinstance(condition, _PLAIN_TYPES):
            return (d for d in candidates if filter_applies(query, d))
        else:
            plain.append((key, condition))

    def matches(document: dict[str, Any]) -> bool:
        for name, value in plain:
            actual = document.get(name, _MISSING)
            if isinstance(actual, list | dict):
                return filter_applies(query, document)
            if type(actual) is not type(value) or actual != value:
                return False
        if alternatives is None:
            return True
        for conditions in alternatives:
            for name, values in conditions:
                actual = document.get(name, _MISSING)
                if isinstance(actual, list | dict):
                    return filter_applies(query, document)
                if not (isinstance(actual, str) and actual in values):
                    break
            else:
                return True
        return False

    return (d for d in candidates if matches(d))


def _recording(documents, touched: list[dict[str, Any]]):
    for document in documents:
        touched.append(document)
        yield document


class StoreService:
    """Runs collection methods on the server's database; what :class:`RemoteDatabase` calls."""

    def __init__(self) -> None:
        mongomock.database.Collection = IndexedCollection
        # mongomock parses version strings on every write; the answers never change.
        packaging.version.parse = functools.lru_cache(maxsize=None)(packaging.version.parse)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._db = mongomock.MongoClient(tz_aware=True)["crm"]

    def call(self, collection: str, method: str, args: tuple, kwargs: dict) -> Any:
        with self._lock:
            result = getattr(self._db[collection], method)(*args, **kwargs)
            if method in ("find", "aggregate", "list_indexes"):
                return list(result)
            return result

    def database_call(self, method: str, args: tuple, kwargs: dict) -> Any:
        with self._lock:
            return getattr(self._db, method)(*args, **kwargs)


class StoreManager(BaseManager):
    pass


_service: StoreService | None = None


def _get_service() -> StoreService:
    global _service
    if _service is None:
        _service = StoreService()
    return _service


StoreManager.register("store", callable=_get_service)


def serve(ready: Connection, authkey: bytes) -> None:
    """The store server's process: report the address on ``ready``, serve until killed."""
    manager = StoreManager(address=("127.0.0.1", 0), authkey=authkey)
    server = manager.get_server()
    ready.send(server.address)
    server.serve_forever()


class RoundTrips:
    """Collection method calls made through :class:`RemoteDatabase`s of this process."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.by_call: dict[str, list[float]] = {}
        """``collection.method`` → [calls, seconds]: where the store time goes."""
        self._lock = threading.Lock()

    def add(self, seconds: float, call: str = "") -> None:
        with self._lock:
            self.count += 1
            self.seconds += seconds
            figures = self.by_call.setdefault(call, [0, 0.0])
            figures[0] += 1
            figures[1] += seconds

    def breakdown(self) -> str:
        """One line per ``collection.method``, the most time first."""
        rows = sorted(self.by_call.items(), key=lambda item: -item[1][1])
        return "\n".join(
            f"  {seconds:8.2f} s {calls:6d} x {call}" for call, (calls, seconds) in rows
        )


class RemoteCollection:
    def __init__(self, database: RemoteDatabase, name: str) -> None:
        self._database = database
        self.name = name

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._database.round_trip(self.name, method, args, kwargs)

        return call


class RemoteDatabase:
    """A pymongo-style database on the store server; each collection method call is counted."""

    def __init__(
        self,
        address,
        authkey: bytes,
        round_trips: RoundTrips | None = None,
        clock=None,
        network_seconds: float = 0.0,
    ):
        self._clock = clock or time.perf_counter
        self._network_seconds = network_seconds
        """Added to every round trip: the network between a client and a MongoDB elsewhere."""
        self._address = address
        self._authkey = authkey
        self._local = threading.local()
        self.round_trips = round_trips or RoundTrips()

    def _service(self):
        service = getattr(self._local, "service", None)
        if service is None:
            manager = StoreManager(address=self._address, authkey=self._authkey)
            manager.connect()
            service = self._local.service = manager.store()
        return service

    def connect(self) -> None:
        """Open the calling thread's connection now, as a connected ``MongoClient`` has its
        pool ready: setting up a connection here costs far more than one to MongoDB does, and
        the first timed call should not pay it."""
        self._service()

    def round_trip(self, collection: str, method: str, args: tuple, kwargs: dict) -> Any:
        started = self._clock()
        try:
            if self._network_seconds:
                time.sleep(self._network_seconds)
            return self._service().call(collection, method, args, kwargs)
        finally:
            self.round_trips.add(self._clock() - started, f"{collection}.{method}")

    def reset(self) -> None:
        self._service().reset()

    def __getitem__(self, name: str) -> RemoteCollection:
        return RemoteCollection(self, name)

    def get_collection(self, name: str, **_: Any) -> RemoteCollection:
        return RemoteCollection(self, name)

    def list_collection_names(self) -> list[str]:
        return self._service().database_call("list_collection_names", (), {})
