"""Undo a completed billing import from what it logged in ``contact_import_changes``.

An import logs, per contact it wrote, either ``add`` (the whole contact it created) or
``update`` (each field's value before and after). Reverting walks that log newest entry first,
in batches of :data:`REVERT_BATCH_SIZE`: one query reads the batch's contacts, one unordered
``bulk_write`` writes them back.

* A field whose value is still the one the import wrote goes back to its value before (or is
  removed, if the contact did not have it). A field changed since, by a person or by a later
  import that is not reverted (even to the same value), is left alone and counted as a
  conflict; one already back at its value before (an interrupted revert run again) is left as is.
* A contact the import created is removed when nobody changed it since; one edited since is kept
  and counted as a conflict.
* Each write applies only to the contact as it was read; one changed in between (by a person, an
  import or a sync) is left as changed and counted as a conflict.
* A write that fails is listed in the result, which is then ``failed``; the request is not
  stamped, so the import can be reverted again once the cause is fixed.

The import's bookkeeping fields follow the rest silently: ``old_field_values`` goes back when
untouched since, ``email_key`` only when it matches the contact's email after the revert.

Refused, with the reason: a revert, a dry run, an import that is unknown, not completed, or
already reverted. The revert writes a ``contact_import_results`` document named
``stripe-revert`` and stamps the reverted request with ``reverted_at`` (``queue.mark_reverted``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo import DeleteOne, UpdateOne
from pymongo.errors import BulkWriteError

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import queue
from stripe_crm_pipelines.billing_import.mapping import normalize_email
from stripe_crm_pipelines.billing_import.requests import CONTACT_TYPES, IMPORT_SOURCE
from stripe_crm_pipelines.billing_import.upsert import BOOKKEEPING_FIELDS

REVERT_RESULT_NAME = "stripe-revert"
REVERT_BATCH_SIZE = 1000
"""Change-log entries reverted with one contact query and one bulk write."""
MAX_LISTED = 1000
"""Conflict and error rows kept in the result document; the counts stay exact beyond it."""
EDITED_SINCE_CREATED = "edited since the import created it"
CHANGED_DURING_REVERT = "changed while the revert ran"
_UNSET = object()
"""A path an update removes, in :attr:`RevertPlan.expected`."""


class RevertRefused(ValueError):
    """The import cannot be reverted; the message says why."""


@dataclass
class RevertOutcome:
    """What a revert did, counted as it goes."""

    reverted_import_id: ObjectId
    account_id: ObjectId
    user_id: ObjectId | None
    contact_type: str
    started_at: datetime
    records_restored: int = 0
    """Contacts with at least one field put back."""
    records_removed: int = 0
    """Contacts the import created, removed."""
    conflicts: int = 0
    """Contacts left (partly) as they are because they changed since the import."""
    fields_restored: int = 0
    changes_read: int = 0
    errors: int = 0
    conflict_details: list[dict[str, Any]] = field(default_factory=list)
    """Up to :data:`MAX_LISTED` ``{contact_id, stripe_customer_id, fields | reason}``."""
    error_details: list[dict[str, Any]] = field(default_factory=list)
    finished_at: datetime | None = None
    result_id: ObjectId | None = None

    def failure_message(self) -> str:
        """Why a revert with write errors is not done; the import stays revertable."""
        return (
            f"{self.errors} contact write(s) failed (see revert_errors); the import is not "
            "marked reverted: fix the cause and revert it again, which leaves what this revert "
            "put back as it is"
        )

    def counts(self) -> dict[str, int]:
        return {
            "records_restored": self.records_restored,
            "records_removed": self.records_removed,
            "conflicts": self.conflicts,
            "fields_restored": self.fields_restored,
            "changes_read": self.changes_read,
            "revert_errors_count": self.errors,
        }


@dataclass
class RevertPlan:
    """The writes that undo one batch of change-log entries, and what they amount to."""

    operations: list[UpdateOne | DeleteOne] = field(default_factory=list)
    contact_ids: list[ObjectId] = field(default_factory=list)
    """The contact of ``operations[i]``."""
    fields: list[int] = field(default_factory=list)
    """Fields ``operations[i]`` puts back (0 for a removal)."""
    expected: list[dict[str, Any] | None] = field(default_factory=list)
    """What ``operations[i]`` leaves at each path it writes; None for a removal."""
    conflicts: list[dict[str, Any]] = field(default_factory=list)


def revert_import(
    db, import_id: ObjectId, *, run_id: str | None, batch_size: int = REVERT_BATCH_SIZE
) -> RevertOutcome:
    """Undo the completed import ``import_id``, record the revert and, when every write went
    through, mark the request reverted (after write errors it may be reverted again).

    Raises :class:`RevertRefused` (before any write) when the import cannot be reverted.
    """
    request = revertable_request(db, import_id)
    account_id = request["account_id"]
    if isinstance(account_id, str) and ObjectId.is_valid(account_id):
        # The import took a hex string for the ObjectId it names; its contacts hold the ObjectId.
        account_id = ObjectId(account_id)
    outcome = RevertOutcome(
        reverted_import_id=import_id,
        account_id=account_id,
        user_id=request.get("user_id"),
        contact_type=CONTACT_TYPES.get(request.get("type"), str(request.get("type"))),
        started_at=datetime.now(UTC),
    )
    contacts = db[store.CONTACTS]
    entries = db[store.IMPORT_CHANGES].find({"import_id": import_id}).sort("_id", -1)
    for batch in _chunks(entries, batch_size):
        ids = list({entry["contact_id"] for entry in batch})
        current = contacts.find({"_id": {"$in": ids}, "parent_account": outcome.account_id})
        plan = plan_revert(batch, current, later_changes(db, import_id, batch))
        _write(contacts, plan, outcome)
        outcome.changes_read += len(batch)
    outcome.finished_at = datetime.now(UTC)
    outcome.result_id = (
        db[store.IMPORT_RESULTS].insert_one(revert_result_document(outcome, run_id)).inserted_id
    )
    if outcome.errors == 0:
        queue.mark_reverted(db, import_id, outcome.finished_at, outcome.result_id)
    return outcome


def later_changes(
    db, import_id: ObjectId, batch: list[Mapping[str, Any]]
) -> dict[ObjectId, list[tuple[ObjectId, set[str]]]]:
    """Per contact of ``batch``, the fields other imports (not reverted) changed after this
    one's entries: ``(entry _id, fields)``. Such a field is the later import's, even if it holds
    the value this import wrote."""
    oldest = min(entry["_id"] for entry in batch)
    found = list(
        db[store.IMPORT_CHANGES].find(
            {
                "contact_id": {"$in": list({entry["contact_id"] for entry in batch})},
                "_id": {"$gt": oldest},
                "import_id": {"$ne": import_id},
                "action": "update",
            },
            {"contact_id": 1, "import_id": 1, "changes.field": 1},
        )
    )
    if not found:
        return {}
    reverted = {
        request["_id"]
        for request in db[store.QUEUES].find(
            {
                "_id": {"$in": list({entry["import_id"] for entry in found})},
                "reverted_at": {"$ne": None},
            },
            {"_id": 1},
        )
    }
    later: dict[ObjectId, list[tuple[ObjectId, set[str]]]] = {}
    for entry in found:
        if entry["import_id"] not in reverted:
            fields = {change["field"] for change in entry.get("changes") or []}
            later.setdefault(entry["contact_id"], []).append((entry["_id"], fields))
    return later


def revertable_request(db, import_id: ObjectId) -> dict[str, Any]:
    """The import request ``import_id`` if it can be reverted; else :class:`RevertRefused`."""
    revert = db[store.IMPORT_RESULTS].find_one(
        {"_id": import_id, "name": REVERT_RESULT_NAME}, {"reverted_import_id": 1}
    )
    if revert is not None:
        raise RevertRefused(
            f"{import_id} is a revert (of import {revert.get('reverted_import_id')}); "
            "a revert cannot be reverted"
        )
    request = db[store.QUEUES].find_one({"_id": import_id, "source": IMPORT_SOURCE})
    if request is None:
        raise RevertRefused(f"Import {import_id} does not exist")
    if request.get("dry_run") is True:
        raise RevertRefused(
            f"Import {import_id} was a dry run: it changed no contact, so there is nothing to "
            "revert"
        )
    status = request.get("status")
    if status != "completed":
        reason = f": {request['error']}" if request.get("error") else ""
        raise RevertRefused(
            f"Import {import_id} is {status!r}{reason}; only a completed import can be reverted"
        )
    if request.get("reverted_at") is not None:
        raise RevertRefused(f"Import {import_id} was already reverted at {request['reverted_at']}")
    return request


def plan_revert(
    entries: Iterable[Mapping[str, Any]],
    contacts: Iterable[Mapping[str, Any]],
    later: Mapping[ObjectId, list[tuple[ObjectId, set[str]]]] | None = None,
) -> RevertPlan:
    """The writes that undo ``entries`` (newest first) on the ``contacts`` they name, given the
    fields other imports changed since (:func:`later_changes`). No I/O.

    Each write applies only to the contact as read: a removal to the whole document, a restore
    to the values of the fields it puts back. One that finds the contact changed in between
    writes nothing and counts as a conflict (see :func:`_write`)."""
    originals = {contact["_id"]: contact for contact in contacts}
    working = {contact_id: copy.deepcopy(contact) for contact_id, contact in originals.items()}
    touched: dict[ObjectId, set[str]] = {}
    removed: list[ObjectId] = []
    conflicted: dict[ObjectId, dict[str, Any]] = {}
    plan = RevertPlan()
    for entry in entries:
        contact_id = entry["contact_id"]
        contact = working.get(contact_id)
        if contact is None:
            continue  # removed since, or never written
        if entry["action"] == "add":
            if _unchanged_since_created(contact, entry.get("created") or {}):
                del working[contact_id]
                removed.append(contact_id)
            else:
                conflicted[contact_id] = _conflict(entry, reason=EDITED_SINCE_CREATED)
            continue
        taken = {
            path
            for entry_id, paths in (later or {}).get(contact_id, [])
            if entry_id > entry["_id"]
            for path in paths
        }
        fields = _restore_fields(contact, entry.get("changes") or [], touched, contact_id, taken)
        if fields:
            conflicted.setdefault(contact_id, _conflict(entry, fields=[]))["fields"] += fields

    for contact_id in removed:
        as_read = {"$expr": {"$eq": ["$$ROOT", {"$literal": originals[contact_id]}]}}
        plan.operations.append(DeleteOne({"_id": contact_id, **as_read}))
        plan.contact_ids.append(contact_id)
        plan.fields.append(0)
        plan.expected.append(None)
    for contact_id, paths in touched.items():
        if contact_id in working:
            update = _restoring_update(working[contact_id], paths)
            # Exact equality ($expr): a query's {path: value} would also match an array
            # holding value, or a missing field for None.
            as_read = [
                {"$eq": [f"${path}", {"$literal": _read(originals[contact_id], path)[1]}]}
                for path in sorted(paths)
            ]
            plan.operations.append(
                UpdateOne({"_id": contact_id, "$expr": {"$and": as_read}}, update)
            )
            plan.contact_ids.append(contact_id)
            plan.fields.append(len(paths))
            plan.expected.append(_written_values(update))
    plan.conflicts = list(conflicted.values())
    return plan


def revert_result_document(outcome: RevertOutcome, run_id: str | None) -> dict[str, Any]:
    """The ``contact_import_results`` document of a revert."""
    document = {
        "status": "failed" if outcome.errors else "completed",
        "name": REVERT_RESULT_NAME,
        "type": outcome.contact_type,
        "reverted_import_id": outcome.reverted_import_id,
        **outcome.counts(),
        "conflict_details": list(outcome.conflict_details),
        "revert_errors": list(outcome.error_details),
        "user_id": outcome.user_id,
        "account_id": str(outcome.account_id),
        "run_id": run_id,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
    }
    if outcome.errors:
        document["error"] = outcome.failure_message()
    return document


def _restore_fields(
    contact: dict[str, Any],
    changes: list[Mapping[str, Any]],
    touched: dict[ObjectId, set[str]],
    contact_id: ObjectId,
    taken: set[str] = frozenset(),
) -> list[str]:
    """Put back, in ``contact``, each field still as the import left it and not changed by a
    later import (a path in ``taken``, or inside or around one); the fields in conflict.

    Bookkeeping fields go last, so ``email_key`` can follow the email as restored.
    """
    conflicts: list[str] = []
    ordered = sorted(changes, key=lambda change: change["field"] in BOOKKEEPING_FIELDS)
    for change in ordered:
        path = change["field"]
        had_before = "before" in change
        present, value = _read(contact, path)
        if any(_overlaps(path, other) for other in taken):
            if path not in BOOKKEEPING_FIELDS:
                conflicts.append(path)
            continue
        if present and value == change["after"]:
            if path == "email_key" and normalize_email(contact.get("email")) != change.get(
                "before"
            ):
                continue
            _write_path(contact, path, change.get("before"), keep=had_before)
            touched.setdefault(contact_id, set()).add(path)
        elif (present, value) == (had_before, change.get("before")):
            continue  # already back as it was
        elif path not in BOOKKEEPING_FIELDS:
            conflicts.append(path)
    return conflicts


def _overlaps(path: str, other: str) -> bool:
    """Whether two dotted paths name the same field or one lies inside the other."""
    return path == other or path.startswith(other + ".") or other.startswith(path + ".")


def _written_values(update: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per path an update writes, the value it leaves (``_UNSET`` where it unsets)."""
    return {**update.get("$set", {}), **dict.fromkeys(update.get("$unset", {}), _UNSET)}


def _restoring_update(contact: Mapping[str, Any], paths: set[str]) -> dict[str, Any]:
    """``$set`` / ``$unset`` of each restored path as ``contact`` now holds it."""
    # A path inside another restored one is written with it (MongoDB refuses both in one update).
    outermost = [p for p in paths if not any(p.startswith(q + ".") for q in paths if q != p)]
    update: dict[str, dict[str, Any]] = {}
    for path in sorted(outermost):
        present, value = _read(contact, path)
        if present:
            update.setdefault("$set", {})[path] = value
        else:
            update.setdefault("$unset", {})[path] = ""
    return update


def _unchanged_since_created(contact: Mapping[str, Any], created: Mapping[str, Any]) -> bool:
    # Later imports that matched it and changed nothing still leave their old_field_values.
    current = {k: v for k, v in contact.items() if k not in ("_id", "old_field_values")}
    return current == dict(created)


def _conflict(
    entry: Mapping[str, Any], *, reason: str | None = None, fields: list[str] | None = None
) -> dict[str, Any]:
    conflict: dict[str, Any] = {
        "contact_id": entry["contact_id"],
        "stripe_customer_id": entry.get("stripe_customer_id"),
    }
    if reason is not None:
        conflict["reason"] = reason
    if fields is not None:
        conflict["fields"] = fields
    return conflict


def _write(contacts, plan: RevertPlan, outcome: RevertOutcome) -> None:
    """Apply a plan with one unordered ``bulk_write`` and add what it did to ``outcome``. A
    write that found its contact changed since it was read (by a person, an import or a sync
    meanwhile) wrote nothing: a conflict, found by reading back the contacts when the counts
    fall short."""
    outcome.conflicts += len(plan.conflicts)
    room = MAX_LISTED - len(outcome.conflict_details)
    outcome.conflict_details.extend(plan.conflicts[:room])
    if not plan.operations:
        return
    try:
        result = contacts.bulk_write(plan.operations, ordered=False).bulk_api_result
    except BulkWriteError as error:
        result = error.details
    failed = {e["index"] for e in result.get("writeErrors", [])}
    for write_error in result.get("writeErrors", []):
        outcome.errors += 1
        if len(outcome.error_details) < MAX_LISTED:
            outcome.error_details.append(
                {
                    "contact_id": plan.contact_ids[write_error["index"]],
                    "message": f"Contact write failed: {write_error.get('errmsg', 'unknown')}",
                }
            )
    applied = result.get("nMatched", 0) + result.get("nRemoved", 0)
    missed = (
        _missed(contacts, plan, failed) if applied < len(plan.operations) - len(failed) else set()
    )
    for index, operation in enumerate(plan.operations):
        if index in failed:
            continue
        if index in missed:
            outcome.conflicts += 1
            if len(outcome.conflict_details) < MAX_LISTED:
                outcome.conflict_details.append(
                    {"contact_id": plan.contact_ids[index], "reason": CHANGED_DURING_REVERT}
                )
        elif isinstance(operation, DeleteOne):
            outcome.records_removed += 1
        else:
            outcome.records_restored += 1
            outcome.fields_restored += plan.fields[index]


def _missed(contacts, plan: RevertPlan, failed: set[int]) -> set[int]:
    """The writes of ``plan`` that found their contact changed and wrote nothing: a removed
    contact still there, a restored one without the values put back."""
    ids = [c for index, c in enumerate(plan.contact_ids) if index not in failed]
    now = {contact["_id"]: contact for contact in contacts.find({"_id": {"$in": ids}})}
    missed: set[int] = set()
    for index, contact_id in enumerate(plan.contact_ids):
        if index in failed:
            continue
        contact = now.get(contact_id)
        expected = plan.expected[index]
        if expected is None:
            if contact is not None:
                missed.add(index)
        elif contact is None or any(
            _read(contact, path) != ((False, None) if value is _UNSET else (True, value))
            for path, value in expected.items()
        ):
            missed.add(index)
    return missed


def _read(document: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """Whether ``document`` has the dotted ``path``, and its value there."""
    value: Any = document
    for segment in path.split("."):
        if not isinstance(value, Mapping) or segment not in value:
            return False, None
        value = value[segment]
    return True, value


def _write_path(document: dict[str, Any], path: str, value: Any, *, keep: bool) -> None:
    """Set ``path`` to ``value`` in ``document`` (``keep``), or remove it."""
    *parents, leaf = path.split(".")
    node = document
    for segment in parents:
        node = node.setdefault(segment, {})
    if keep:
        node[leaf] = copy.deepcopy(value)
    else:
        node.pop(leaf, None)


def _chunks(entries: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    batch: list[Mapping[str, Any]] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
