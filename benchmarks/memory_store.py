"""The benchmark's in-memory CRM store: mongomock with hash indexes, served from its own process.

Plain ``mongomock://`` is far slower than MongoDB: it would make the benchmark measure mongomock
rather than the import. This store gives mongomock's answers, and answers the operations the
import, the seed's algorithm and the sync make the way MongoDB does, from indexes and without
copying whole collections:

* **Indexes.** mongomock scans every document of a collection for every query and every write
  (an update by ``_id`` included), so 10,000 upserts into 15,000 contacts cost 150 million
  filter evaluations. :class:`IndexedCollection` keeps a hash index on each of ``email``,
  ``email_key`` and ``stripe_customer_id`` once a query of the collection asks for it, and
  evaluates the filter only on the candidates, in the collection's order as mongomock does.
  Filters of the import's shapes (equality on plain values, ``null``, ``{"$type": "string"}``,
  an ``$or`` of string equalities or ``$in`` lists) are evaluated by :func:`_matching`; any
  other filter, and any document holding an array or object in a filtered field, by mongomock.
* **Updates.** An update of one document whose filter is equality on plain values and whose
  update is ``$set`` / ``$setOnInsert`` of independent paths (none under another, parents
  objects or absent), in a collection without unique indexes, is applied in place
  (:meth:`IndexedCollection._update_one_in_place`) by mongomock's rules: the same document
  changed or created, the same fields in the same order, the same result. mongomock deep-copies
  the whole document to tell whether it changed and BSON-encodes every value it sets; here only
  the values set are compared, and only values that might not encode are encoded. A
  ``bulk_write`` of such ``UpdateOne`` requests runs them in one loop with the results
  mongomock's bulk builder gives. Any other update or bulk write is mongomock's.
* **Inserts.** A document that certainly passes mongomock's checks (plain keys, values BSON
  encodes) is stored as mongomock stores it, without encoding it to find out.
* **Reads.** Projections that include top-level fields, and the duplicate-value aggregation of
  the asset checks (``$match`` of plain equality and ``$type: "string"``, ``$group`` by top-level
  string fields counting ``{"$sum": 1}``, then ``$match`` on ``$gt``), are computed directly;
  mongomock copies and sorts every document of the collection for an aggregation, minutes at
  100,000 contacts where MongoDB takes well under a second. Other projections and pipelines are
  mongomock's.
* **Copies.** mongomock's helpers that copy documents (datetime normalisation on the way in and
  out, projection copies) are replaced in the server process by equivalents that return equal
  values and share immutable ones (:func:`install_fast_helpers`); mongomock parses its version
  strings again on every write, and the server caches the parse.
* **Whole answers.** A ``find`` answers all its documents at once; iterating mongomock's cursor
  copies the rest of its results for every document it yields (50,000 documents took 20 s).
* **Transport.** ``UpdateOne`` requests are pickled as the call that makes them.
* **Its own process.** In the importing process the store's documents would count towards that
  process's memory. MongoDB keeps them elsewhere, so here does a server process (:func:`serve`);
  each collection method call is one request to it, as each is one round trip to MongoDB, and
  :class:`RemoteDatabase` counts them (and can add a network's round-trip time to each).

``tests/test_benchmark.py`` runs the same operations on this store and on plain mongomock and
compares every document stored and every answer.
"""

from __future__ import annotations

import copy
import copyreg
import datetime
import functools
import gc
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from multiprocessing.managers import BaseManager
from typing import Any

import bson
import mongomock
import mongomock.collection
import mongomock.command_cursor
import mongomock.database
import mongomock.helpers
import packaging.version
from bson import ObjectId
from mongomock.filtering import filter_applies
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError
from pymongo.results import BulkWriteResult

INDEXED_FIELDS = frozenset({"email", "email_key", "stripe_customer_id"})
_UNINDEXABLE = object()
_ABSENT = object()
_MISSING = object()
_UNSURE = object()
"""A value the fast paths leave to mongomock's own checks."""
_PLAIN_TYPES = (str, ObjectId, bool)
_SHARED_TYPES = frozenset({bool, float, ObjectId, type(None)})
_UPDATE_OPERATORS = frozenset({"$set", "$setOnInsert"})

Paths = tuple[tuple[str, ...], ...]


class _Index:
    """For one collection: value → ids for each indexed field, and each id's place in the
    collection (mongomock's order: insertion; an update keeps a document's place, and a delete
    rebuilds the index)."""

    def __init__(self) -> None:
        self.fields: list[str] = []
        self.by_value: dict[str, dict[str, dict[Any, None]]] = {}
        self.unindexable: dict[str, dict[Any, None]] = {}
        self.absent: dict[str, dict[Any, None]] = {}
        """Ids without the field (or null): MongoDB answers ``{field: null}`` from the index."""
        self.keys: dict[Any, tuple[Any, ...]] = {}
        """id → the values it is indexed under, one per field of :attr:`fields`."""
        self.position: dict[Any, int] = {}
        self.next_position = 0
        self.dirty = True
        self.unique_for: tuple[str, ...] | None = None
        self.unique = False
        """Whether the collection has a unique index, for the index names in ``unique_for``."""

    def add(self, document: Mapping[str, Any]) -> None:
        document_id = document["_id"]
        keys = []
        for name in self.fields:
            value = document.get(name)
            if value is None:
                self.absent[name][document_id] = None
                keys.append(_ABSENT)
            elif type(value) is str:
                self.by_value[name].setdefault(value, {})[document_id] = None
                keys.append(value)
            else:
                self.unindexable[name][document_id] = None
                keys.append(_UNINDEXABLE)
        self.keys[document_id] = tuple(keys)
        if document_id not in self.position:
            self.position[document_id] = self.next_position
            self.next_position += 1

    def remove(self, document_id: Any) -> None:
        keys = self.keys.pop(document_id, None)
        if keys is None:
            return
        for name, value in zip(self.fields, keys, strict=True):
            if value is _UNINDEXABLE:
                self.unindexable[name].pop(document_id, None)
            elif value is _ABSENT:
                self.absent[name].pop(document_id, None)
            else:
                ids = self.by_value[name].get(value)
                if ids is not None:
                    ids.pop(document_id, None)


class IndexedCollection(mongomock.Collection):
    """A mongomock collection with hash indexes and fast paths for the import's operations."""

    # --- the index --------------------------------------------------------------------------

    @property
    def _index(self) -> _Index:
        store = self._store
        index = getattr(store, "_benchmark_index", None)
        if index is None:
            index = store._benchmark_index = _Index()
        if index.dirty:
            fields = index.fields
            index.__init__()
            index.dirty = False
            self._index_fields(index, fields)
        return index

    def _index_fields(self, index: _Index, fields: list[str]) -> None:
        """Index ``fields`` too (on first use); every document is indexed again."""
        index.fields = [*index.fields, *(name for name in fields if name not in index.fields)]
        for name in index.fields:
            index.by_value[name], index.unindexable[name], index.absent[name] = {}, {}, {}
        index.keys.clear()
        for document in self._documents().values():
            index.add(document)

    def _indexed(self, name: str) -> _Index:
        index = self._index
        if name not in index.by_value:
            self._index_fields(index, [name])
        return index

    def _reindex(self, document_id: Any) -> None:
        index = self._index
        index.remove(document_id)
        document = self._documents().get(document_id)
        if document is not None:
            index.add(document)
        else:
            index.position.pop(document_id, None)

    def _documents(self) -> dict[Any, dict[str, Any]]:
        """The collection's documents by ``_id``, in its order, once mongomock has expired those
        its TTL indexes expire (the server's lock serialises every call)."""
        store = self._store
        store._remove_expired_documents()
        return store._documents

    def _empty_set_allowed(self) -> bool:
        return self.database.client.server_info()["versionArray"] >= [5]

    def _has_unique_index(self) -> bool:
        indexes = self._store.indexes
        index = self._index
        if index.unique_for != (names := tuple(indexes)):
            index.unique_for = names
            index.unique = any(spec.get("unique") for spec in indexes.values())
        return index.unique

    # --- queries ----------------------------------------------------------------------------

    def _candidates(self, query: Any) -> list[Any] | None:
        """Ids that may match ``query`` (a superset), or None when no index applies."""
        if not isinstance(query, dict):
            return None
        best: list[Any] | None = None
        if "_id" in query and not isinstance(query["_id"], dict | list):
            best = [query["_id"]]
        for name in INDEXED_FIELDS.intersection(query):
            condition = query[name]
            if condition is None:
                absent = self._indexed(name).absent[name]
                if best is None or len(absent) < len(best):
                    best = list(absent)
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
            index = self._indexed(name)
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

    def _in_order(self, ids: list[Any]) -> list[dict[str, Any]]:
        """The stored documents of ``ids`` in the collection's order."""
        stored = self._documents()
        present = [i for i in ids if i in stored]
        if len(present) > 1:
            present.sort(key=self._index.position.__getitem__)
        return [stored[i] for i in present]

    def _iter_documents(self, filter):
        ids = self._candidates(filter)
        if ids is None:
            documents = super()._iter_documents(filter)
        else:
            documents = _matching(filter, self._in_order(ids))
        touched = getattr(self, "_touched", None)
        if touched is None:
            return documents
        return _recording(documents, touched)

    def _copy_only_fields(self, doc, fields, container):
        names = _included_top_level_fields(fields)
        if names is None or container is not dict:
            return super()._copy_only_fields(doc, fields, container)
        include, id_value = names
        copied = {key: _fast_copy_field(value) for key, value in doc.items() if key in include}
        if id_value == 0:
            copied.pop("_id", None)
        elif "_id" in doc:
            copied["_id"] = doc["_id"]
        return copied

    def aggregate(self, pipeline, session=None, **kwargs):
        plan = None if session or kwargs else _duplicate_count_plan(pipeline)
        if plan is not None:
            groups = self._count_groups(*plan)
            if groups is not None:
                return mongomock.command_cursor.CommandCursor(groups)
        return super().aggregate(pipeline, session=session, **kwargs)

    def _count_groups(
        self,
        match: dict[str, Any],
        group_fields: list[tuple[str, str]],
        counters: list[str],
        minimum: float | None,
    ) -> list[dict[str, Any]] | None:
        """The answer to the duplicate-count aggregation (see :func:`_duplicate_count_plan`):
        groups sorted by their ``_id`` as mongomock sorts them, counters first and ``_id``
        last. None if a matched document lacks a grouped field or holds something other than a
        string there (mongomock's rules then apply)."""
        match = fast_patch_datetime_awareness(match)
        ids = self._candidates(match)
        documents = list(self._documents().values()) if ids is None else self._in_order(ids)
        counts: dict[tuple[str, ...], int] = {}
        for document in _matching(match, documents):
            values = tuple(document.get(field, _MISSING) for _, field in group_fields)
            if not all(type(value) is str for value in values):
                return None
            counts[values] = counts.get(values, 0) + 1
        groups = []
        for values in sorted(counts):
            count = counts[values]
            if minimum is not None and not count > minimum:
                continue
            group: dict[str, Any] = dict.fromkeys(counters, count)
            names = (name for name, _ in group_fields)
            group["_id"] = dict(zip(names, values, strict=True))
            groups.append(group)
        return groups

    # --- writes -----------------------------------------------------------------------------

    def _insert(self, data, session=None, ordered=True):
        if not isinstance(data, Mapping):
            # mongomock inserts a list one document at a time, through this method.
            return super()._insert(data, session, ordered)
        if session is None and not self._has_unique_index():
            stored = _stored_document(data)
            if stored is not _UNSURE:
                if "_id" not in data:
                    data["_id"] = stored["_id"] = ObjectId()
                return self._store_new(stored)
        try:
            result = super()._insert(data, session, ordered)
        except Exception:
            self._index.dirty = True
            raise
        self._reindex(result)
        return result

    def _store_new(self, document: dict[str, Any]) -> Any:
        """Add a document mongomock would have stored as it is; its ``_id``."""
        document_id = document["_id"]
        stored = self._documents()
        if document_id in stored:
            raise mongomock.DuplicateKeyError("E11000 Duplicate Key Error", 11000)
        stored[document_id] = document
        self._index.add(document)
        return document_id

    def bulk_write(self, requests, ordered=True, bypass_document_validation=False, session=None):
        requests = list(requests)
        shapes = None
        if requests and not (bypass_document_validation or session):
            empty_set_allowed = self._empty_set_allowed()
            shapes = [_simple_update_request(r, empty_set_allowed) for r in requests]
        if not shapes or None in shapes or self._has_unique_index():
            return super().bulk_write(requests, ordered, bypass_document_validation, session)
        # mongomock's BulkOperationBuilder.execute, for update requests only.
        result: dict[str, Any] = {
            "nModified": 0,
            "nUpserted": 0,
            "nMatched": 0,
            "writeErrors": [],
            "upserted": [],
            "writeConcernErrors": [],
            "nRemoved": 0,
            "nInserted": 0,
        }
        for index, (request, paths) in enumerate(zip(requests, shapes, strict=True)):
            spec, document, upsert = request._filter, request._doc, bool(request._upsert)
            try:
                answer = self._update_one_in_place(spec, document, upsert, *paths)
                if answer is None:
                    answer = self._update(spec, document, upsert=upsert, hint=None)
            except mongomock.WriteError as error:
                result["writeErrors"].append(
                    {"index": index, "code": error.code, "errmsg": str(error)}
                )
                if ordered:
                    break
                continue
            if answer.get("upserted"):
                result["upserted"].append(
                    {"index": len(result["upserted"]), "_id": answer["upserted"]}
                )
                result["nUpserted"] += answer["n"]
            elif answer.get("n") is not None:
                result["nMatched"] += answer["n"]
            result["nModified"] += answer["nModified"]
        if result["writeErrors"]:
            raise BulkWriteError(result)
        return BulkWriteResult(result, True)

    def _update(
        self, spec, document, upsert=False, manipulate=False, multi=False, check_keys=False, **kw
    ):
        if not (manipulate or multi or check_keys or any(kw.values())):
            paths = _simple_update_paths(spec, document, self._empty_set_allowed())
            if paths is not None and not self._has_unique_index():
                result = self._update_one_in_place(spec, document, upsert, *paths)
                if result is not None:
                    return result
        touched: list[dict[str, Any]] = []
        self._touched = touched
        try:
            return super()._update(spec, document, upsert, manipulate, multi, check_keys, **kw)
        finally:
            self._touched = None
            for changed in touched:
                self._reindex(changed["_id"])

    def _update_one_in_place(
        self, spec: dict, document: dict, upsert: bool, set_paths: Paths, paths: Paths
    ) -> dict[str, Any] | None:
        """mongomock's ``_update`` of one document for a simple update (see
        :func:`_simple_update_paths`); None, with nothing changed, when a path's parent is not
        an object (mongomock's own rules then apply)."""
        # The filter holds plain values only: mongomock's datetime patch leaves it as it is.
        existing = self._first_match(spec)
        result = {
            "connectionId": self.database.client._id,
            "err": None,
            "n": 0,
            "nModified": 0,
            "ok": 1,
            "upserted": None,
            "updatedExisting": False,
        }
        if existing is None:
            if not upsert:
                return result
            new = self._discard_operators(self._expand_dots(dict(spec, _id=_upsert_id(spec))))[0]
            if not _parents_are_objects(new, paths):
                return None
            start = 0
            for fields in document.values():
                _set_fields(new, fields, paths[start : start + len(fields)])
                start += len(fields)
            if type(new["_id"]) not in (ObjectId, str, int):
                return None
            result["upserted"] = self._store_new(new)
            result["n"] = 1
            return result
        if not _parents_are_objects(existing, set_paths):
            return None
        changed = False
        if "$set" in document:
            try:
                changed = _set_fields(existing, document["$set"], set_paths)
            except Exception:  # mongomock leaves the fields set before the bad one
                self._reindex(existing["_id"])
                raise
            if changed:
                self._reindex(existing["_id"])
        result.update(n=1, nModified=int(changed), updatedExisting=True)
        return result

    def _first_match(self, spec: dict[str, Any]) -> dict[str, Any] | None:
        """The first document (in the collection's order) an equality filter on plain values
        matches."""
        if "_id" in spec:
            ids = [spec["_id"]]
        else:
            name = next((key for key in spec if key in INDEXED_FIELDS), None)
            if name is None or type(spec[name]) is not str:
                return next(iter(self._iter_documents(spec)), None)
            index = self._indexed(name)
            ids = [*index.by_value[name].get(spec[name], ()), *index.unindexable[name]]
        for document in self._in_order(ids):
            for key, value in spec.items():
                actual = document.get(key, _MISSING)
                if isinstance(actual, list | dict):
                    if filter_applies(spec, document):
                        return document
                    break
                if type(actual) is not type(value) or actual != value:
                    break
            else:
                return document
        return None

    def _delete(self, *args, **kwargs):
        try:
            return super()._delete(*args, **kwargs)
        finally:
            self._index.dirty = True


def _recording(documents, touched: list[dict[str, Any]]):
    for document in documents:
        touched.append(document)
        yield document


# --- filters -------------------------------------------------------------------------------


def _matching(query: dict[str, Any], candidates: list[dict[str, Any]]):
    """The candidates ``query`` matches, in order. Queries of the import's shapes (equality on
    plain values, ``null``, ``{"$type": "string"}``, and an ``$or`` of branches of string
    equalities or ``$in`` lists) are evaluated here, much faster than by mongomock; anything
    else, or a document holding an array or object in a filtered field, goes to mongomock."""
    plain: list[tuple[str, Any]] = []
    nulls: list[str] = []
    strings: list[str] = []
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
        elif key.startswith("$") or "." in key:
            return (d for d in candidates if filter_applies(query, d))
        elif condition is None:
            nulls.append(key)
        elif type(condition) is dict and condition == {"$type": "string"}:
            strings.append(key)
        elif isinstance(condition, _PLAIN_TYPES):
            plain.append((key, condition))
        else:
            return (d for d in candidates if filter_applies(query, d))

    def matches(document: dict[str, Any]) -> bool:
        for name, value in plain:
            actual = document.get(name, _MISSING)
            if isinstance(actual, list | dict):
                return filter_applies(query, document)
            if type(actual) is not type(value) or actual != value:
                return False
        for name in nulls:
            actual = document.get(name)
            if isinstance(actual, list | dict):
                return filter_applies(query, document)
            if actual is not None:
                return False
        for name in strings:
            actual = document.get(name)
            if isinstance(actual, list | dict):
                return filter_applies(query, document)
            if not isinstance(actual, str):
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


# --- updates -------------------------------------------------------------------------------


def _simple_update_request(request: Any, empty_set_allowed: bool) -> tuple[Paths, Paths] | None:
    """The paths of an ``UpdateOne`` the store applies itself (see
    :func:`_simple_update_paths`); None for any other request."""
    if type(request) is not UpdateOne:
        return None
    if request._collation is not None or request._array_filters or request._hint is not None:
        return None
    return _simple_update_paths(request._filter, request._doc, empty_set_allowed)


def _simple_update_paths(
    spec: Any, document: Any, empty_set_allowed: bool
) -> tuple[Paths, Paths] | None:
    """``($set paths, all paths)``, split, of an update the store applies itself; None for any
    other update. Simple: the filter is equality on plain values of top-level fields, the update
    sets (``$set``, and ``$setOnInsert`` of an upsert) independent paths (none equal to or
    under another), none of them ``_id`` but ``$setOnInsert``'s own."""
    if type(spec) is not dict or type(document) is not dict or not document:
        return None
    for key, value in spec.items():
        if type(key) is not str or key[:1] == "$" or "." in key:
            return None
        if not isinstance(value, _PLAIN_TYPES):
            return None
    shape = []
    for operator, fields in document.items():
        if operator not in _UPDATE_OPERATORS or type(fields) is not dict:
            return None
        if not fields and not (operator == "$setOnInsert" or empty_set_allowed):
            return None  # mongomock before server version 5 refuses an empty $set
        shape.append((operator, tuple(fields)))
    return _update_paths(tuple(shape))


@functools.lru_cache(maxsize=1024)
def _update_paths(shape: tuple[tuple[str, tuple[Any, ...]], ...]) -> tuple[Paths, Paths] | None:
    """The paths of :func:`_simple_update_paths` for the update's operators and field names."""
    set_paths: list[tuple[str, ...]] = []
    paths: list[tuple[str, ...]] = []
    for operator, names in shape:
        for path in names:
            if type(path) is not str or "$" in path or not _plain_key(path):
                return None
            segments = tuple(path.split("."))
            if not all(segments) or (
                segments[0] == "_id" and (operator == "$set" or len(segments) > 1)
            ):
                return None
            paths.append(segments)
            if operator == "$set":
                set_paths.append(segments)
    for shorter, longer in itertools.pairwise(sorted(paths)):
        if longer[: len(shorter)] == shorter:
            return None
    return tuple(set_paths), tuple(paths)


def _upsert_id(spec: dict[str, Any]) -> Any:
    """The ``_id`` mongomock gives a document an upsert creates before applying the update
    (``$setOnInsert`` may replace it)."""
    return spec["_id"] if spec.get("_id") is not None else ObjectId()


def _parents_are_objects(document: Mapping[str, Any], paths: Paths) -> bool:
    """Whether every parent of each path is an object or absent in ``document`` (mongomock
    indexes into arrays and silently skips other values; those updates are left to it)."""
    for segments in paths:
        node: Any = document
        for segment in segments[:-1]:
            node = node.get(segment, _MISSING)
            if node is _MISSING:
                break
            if not isinstance(node, dict):
                return False
    return True


def _set_fields(document: dict[str, Any], fields: dict[str, Any], paths: Paths) -> bool:
    """mongomock's ``$set`` of ``fields`` (split into ``paths``) on ``document``: parents created
    as objects, each value stored as mongomock's datetime patch copies it, arrays deep-copied,
    every value BSON-valid; whether the document changed."""
    changed = False
    for segments, value in zip(paths, fields.values(), strict=True):
        node = document
        for segment in segments[:-1]:
            node = node.setdefault(segment, {})
        leaf = segments[-1]
        if type(value) is str and value.isascii():
            stored = value
        else:
            stored = _stored_copy(value)
            if stored is _UNSURE:
                stored = mongomock.helpers.patch_datetime_awareness_in_document(value)
                if isinstance(stored, tuple | list):
                    stored = copy.deepcopy(stored)
                bson.BSON.encode({leaf: stored}, check_keys=False)
        before = node.get(leaf, _MISSING)
        node[leaf] = stored
        if before is _MISSING or (before is not stored and before != stored):
            changed = True
    return changed


def _stored_document(document: Mapping[str, Any]) -> Any:
    """The copy of ``document`` mongomock would store on insert (see :func:`_stored_copy`), or
    :data:`_UNSURE` unless it is a plain document that certainly passes mongomock's checks."""
    if type(document) not in (dict, OrderedDict) or type(document.get("_id")) is dict:
        return _UNSURE
    copied = type(document)()
    for key, value in document.items():
        if type(key) is not str or key[:1] == "$" or not _plain_key(key):
            return _UNSURE
        value = _stored_copy(value)
        if value is _UNSURE:
            return _UNSURE
        copied[key] = value
    return copied


def _stored_copy(value: Any) -> Any:
    """``value`` as mongomock stores it (what its datetime patch returns: objects and arrays
    rebuilt, datetimes naive UTC to the millisecond, other values shared) if BSON certainly
    encodes it; :data:`_UNSURE` otherwise."""
    kind = type(value)
    if kind is str:
        return value if value.isascii() or _encodes_as_utf8(value) else _UNSURE
    if kind is dict:
        copied = {}
        for key, item in value.items():
            if type(key) is not str or not _plain_key(key):
                return _UNSURE
            if type(item) is str and item.isascii():
                copied[key] = item
                continue
            item = _stored_copy(item)
            if item is _UNSURE:
                return _UNSURE
            copied[key] = item
        return copied
    if kind in _SHARED_TYPES:
        return value
    if kind is int:
        return value if -(2**63) <= value < 2**63 else _UNSURE
    if kind is list:
        items = []
        for item in value:
            item = _stored_copy(item)
            if item is _UNSURE:
                return _UNSURE
            items.append(item)
        return items
    if kind is datetime.datetime:
        return _original_patch(value)
    return _UNSURE


@functools.lru_cache(maxsize=4096)
def _plain_key(key: str) -> bool:
    """A key BSON encodes: UTF-8, without NUL."""
    return "\0" not in key and (key.isascii() or _encodes_as_utf8(key))


def _encodes_as_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# --- projections and aggregations ---------------------------------------------------------


def _included_top_level_fields(fields: Any) -> tuple[frozenset[str], Any] | None:
    """``(names, _id setting)`` of a projection that only includes top-level fields (``_id``
    included or excluded); None for any other projection."""
    if type(fields) is not dict:
        return None
    include = [key for key in fields if key != "_id"]
    if not include:
        return None
    for key in include:
        value = fields[key]
        if type(value) not in (int, bool) or value != 1 or "." in key or key.startswith("$"):
            return None
    id_value = fields.get("_id", 1)
    if type(id_value) not in (int, bool) or id_value not in (0, 1):
        return None
    return frozenset(include), id_value


def _duplicate_count_plan(
    pipeline: Any,
) -> tuple[dict[str, Any], list[tuple[str, str]], list[str], float | None] | None:
    """``(match, [(name, field)], counters, minimum)`` of a pipeline the store computes
    itself: ``$match`` (a filter :func:`_matching` evaluates), ``$group`` with an ``_id`` of
    top-level fields (``{"type": "$type", ...}``) and only ``{"$sum": 1}`` counters, and
    optionally ``$match`` of one counter ``$gt`` a number. None for any other pipeline."""
    if type(pipeline) is not list or len(pipeline) not in (2, 3):
        return None
    stages = []
    for stage in pipeline:
        if type(stage) is not dict or len(stage) != 1:
            return None
        stages.append(next(iter(stage.items())))
    (first, match), (second, group) = stages[0], stages[1]
    if first != "$match" or second != "$group" or type(match) is not dict:
        return None
    if type(group) is not dict or type(group.get("_id")) is not dict or not group["_id"]:
        return None
    group_fields = []
    for name, expression in group["_id"].items():
        if not (
            type(name) is str
            and not name.startswith("$")
            and type(expression) is str
            and expression.startswith("$")
            and expression[1:]
            and "." not in expression
            and not expression[1:].startswith("$")
        ):
            return None
        group_fields.append((name, expression[1:]))
    counters = [key for key in group if key != "_id"]
    if not counters or any(
        group[key] != {"$sum": 1} or type(group[key]["$sum"]) is not int for key in counters
    ):
        return None
    minimum = None
    if len(stages) == 3:
        third, having = stages[2]
        if third != "$match" or type(having) is not dict or len(having) != 1:
            return None
        [(counter, condition)] = having.items()
        if counter not in counters or type(condition) is not dict or list(condition) != ["$gt"]:
            return None
        minimum = condition["$gt"]
        if type(minimum) not in (int, float):
            return None
    return match, group_fields, counters, minimum


# --- mongomock's copying helpers, faster ------------------------------------------------------

_original_patch = mongomock.helpers.patch_datetime_awareness_in_document
_original_tz_aware = mongomock.helpers.make_datetime_timezone_aware_in_document
_original_copy_field = mongomock.collection._copy_field
_IMMUTABLE = frozenset({str, int, float, bool, type(None), ObjectId})


def fast_patch_datetime_awareness(value: Any) -> Any:
    """``patch_datetime_awareness_in_document``: the same value (plain dicts and lists rebuilt,
    datetimes made naive UTC to the millisecond); mongomock's own for anything else."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is dict:
        return {key: fast_patch_datetime_awareness(item) for key, item in value.items()}
    if kind is list:
        return [fast_patch_datetime_awareness(item) for item in value]
    return _original_patch(value)


def fast_timezone_aware(value: Any) -> Any:
    """``make_datetime_timezone_aware_in_document``: the same value (dicts and lists rebuilt,
    datetimes given UTC); mongomock's own for anything else."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is dict:
        return {key: fast_timezone_aware(item) for key, item in value.items()}
    if kind is list:
        return [fast_timezone_aware(item) for item in value]
    return _original_tz_aware(value)


def _fast_copy_field(value: Any, container: type = dict) -> Any:
    """mongomock's ``_copy_field``: containers copied, immutable values shared (mongomock
    copies them with ``copy.copy``, which returns them as they are or an equal copy)."""
    kind = type(value)
    if kind in _IMMUTABLE or kind is datetime.datetime:
        return value
    if kind is dict and container is dict:
        return {key: _fast_copy_field(item) for key, item in value.items()}
    if kind is list:
        return [_fast_copy_field(item, container) for item in value]
    return _original_copy_field(value, container)


def install_fast_helpers() -> None:
    """Use the faster equivalents of mongomock's copying helpers in this process."""
    mongomock.helpers.patch_datetime_awareness_in_document = fast_patch_datetime_awareness
    mongomock.helpers.make_datetime_timezone_aware_in_document = fast_timezone_aware
    mongomock.collection._copy_field = _fast_copy_field


class StoreService:
    """Runs collection methods on the server's database; what :class:`RemoteDatabase` calls."""

    def __init__(self) -> None:
        mongomock.database.Collection = IndexedCollection
        install_fast_helpers()
        # mongomock parses version strings on every write; the answers never change.
        packaging.version.parse = functools.lru_cache(maxsize=None)(packaging.version.parse)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._db = mongomock.MongoClient(tz_aware=True)["crm"]
            # The collector is off while the server serves (see serve); the last run's cycles
            # are freed here, before anything is timed.
            gc.collect()

    def call(self, collection: str, method: str, args: tuple, kwargs: dict) -> Any:
        with self._lock:
            result = getattr(self._db[collection], method)(*args, **kwargs)
            if isinstance(result, mongomock.collection.Cursor):
                # The documents the cursor yields one by one: its __next__ copies the rest of
                # the results for every document, quadratic in their number.
                return list(result._compute_results(with_limit_and_skip=True))
            if method in ("find", "aggregate", "list_indexes"):
                return list(result)
            return result

    def database_call(self, method: str, args: tuple, kwargs: dict) -> Any:
        with self._lock:
            return getattr(self._db, method)(*args, **kwargs)

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far."""
        return time.process_time()

    def collector_enabled(self) -> bool:
        """Whether Python's garbage collector runs in the server (it should not, see serve)."""
        return gc.isenabled()


def _reduce_update_one(request: UpdateOne) -> tuple:
    """Pickle an ``UpdateOne`` as the call that makes it (a third of the time of pickle's way
    with its slots); one with a collation, array filters or a hint the default way."""
    if request._collation is None and request._array_filters is None and request._hint is None:
        return UpdateOne, (request._filter, request._doc, request._upsert)
    return object.__reduce_ex__(request, 2)


copyreg.pickle(UpdateOne, _reduce_update_one)


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
    """The store server's process: report the address on ``ready``, serve until killed.

    Python's garbage collector is off here: its full collections over the store's documents
    paused the server for 40 to 60 ms several times per 10,000-customer import, a pause of
    whichever call was in progress, which MongoDB does not have. :meth:`StoreService.reset`
    collects instead."""
    gc.disable()
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
    """A pymongo-style database on the store server; each collection method call is counted.

    Each thread calls the server on a connection of its own, opened on its first call and kept
    for the database's life, as a ``MongoClient`` keeps its pool: a connection dropped when its
    thread ends would cost a round trip to the server then (about 45 ms, at the end of every
    import whose writer thread ends), which a MongoDB client does not pay."""

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
        self.connections: list[Any] = []
        """Every thread's connection, so that none is closed when its thread ends."""
        self._connections_lock = threading.Lock()
        self.round_trips = round_trips or RoundTrips()

    def _service(self):
        service = getattr(self._local, "service", None)
        if service is None:
            manager = StoreManager(address=self._address, authkey=self._authkey)
            manager.connect()
            service = self._local.service = manager.store()
            with self._connections_lock:
                self.connections.append(service)
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

    def cpu_seconds(self) -> float:
        """CPU time the store server has used so far."""
        return self._service().cpu_seconds()

    def __getitem__(self, name: str) -> RemoteCollection:
        return RemoteCollection(self, name)

    def get_collection(self, name: str, **_: Any) -> RemoteCollection:
        return RemoteCollection(self, name)

    def list_collection_names(self) -> list[str]:
        return self._service().database_call("list_collection_names", (), {})
