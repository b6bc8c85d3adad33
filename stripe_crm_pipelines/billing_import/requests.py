"""Parse and validate billing import requests (``queues`` documents).

Everything a run needs from MongoDB passes through here once, so the rest of the import works
with typed values and an invalid request fails before any write with a message naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from stripe_crm_pipelines.billing_import.mapping import FieldMapping, MappingError, parse_mappings
from stripe_crm_pipelines.billing_import.upsert import UpsertTarget

IMPORT_SOURCE = "billing-contacts"
CONTACT_TYPES = {"contacts": "person", "companies": "business"}
DELETION_POLICIES = ("keep", "archive")
"""What a kept-in-sync import does to a contact whose Stripe customer is deleted (SPEC §7)."""


class InvalidImportRequest(ValueError):
    """An import request cannot be used; the message names the field."""


@dataclass(frozen=True)
class ImportRequest:
    id: ObjectId
    account_id: ObjectId
    user_id: ObjectId
    parent_account: ObjectId | None
    client_id: ObjectId | None
    import_type: str
    """``contacts`` or ``companies``, as the request says."""
    contact_type: str
    """``person`` or ``business``: the type of the contacts the import matches and creates."""
    mappings: tuple[FieldMapping, ...]
    new_contact: bool
    max_customers: int | None
    attempts: int
    dry_run: bool = False
    """Fetch, map and match, but write no contact."""
    keep_in_sync: bool = False
    """Keep the contacts in step with Stripe after the import completes."""
    deletion_policy: str = "keep"
    """``keep`` or ``archive``: see :data:`DELETION_POLICIES`."""
    queued_by: str | None = None
    """Who queued the request when it was not the CRM (``cli``, ``launchpad``)."""
    reason: str | None = None
    """Why the project queued it itself (``resync``)."""

    @property
    def upsert_target(self) -> UpsertTarget:
        """Whose contacts the import writes, and how."""
        return UpsertTarget(
            account_id=self.account_id,
            contact_type=self.contact_type,
            user_id=self.user_id,
            new_contact=self.new_contact,
            mappings=self.mappings,
            dry_run=self.dry_run,
            import_id=self.id,
        )


def parse_import_request(document: Mapping[str, Any]) -> ImportRequest:
    """Validate a ``queues`` document; raises :class:`InvalidImportRequest` naming the field.

    Fields the project adds (``attempts``, ``max_customers``, ``dry_run``, ``keep_in_sync``,
    ``deletion_policy``, ``queued_by``, ``reason``, claim fields) are optional, so requests
    written by the CRM as the seed describes them are accepted. Progress fields (``checkpoint``,
    ``resume_from``) belong to :mod:`~stripe_crm_pipelines.billing_import.queue`.
    """
    if not isinstance(document, Mapping):
        raise InvalidImportRequest(f"import request must be an object, got {_describe(document)}")
    source = document.get("source")
    if source is not None and source != IMPORT_SOURCE:
        raise InvalidImportRequest(f"source: {source!r} is not {IMPORT_SOURCE!r}")
    import_type = document.get("type")
    if not isinstance(import_type, str) or import_type not in CONTACT_TYPES:
        expected = ", ".join(repr(name) for name in CONTACT_TYPES)
        shown = "missing" if import_type is None else repr(import_type)
        raise InvalidImportRequest(f"type: {shown} is not one of {expected}")
    try:
        mappings = parse_mappings(document.get("mappings"))
    except MappingError as error:
        raise InvalidImportRequest(str(error)) from None
    dry_run = _flag(document, "dry_run")
    keep_in_sync = _flag(document, "keep_in_sync")
    if dry_run and keep_in_sync:
        raise InvalidImportRequest(
            "keep_in_sync: a dry run writes nothing, so it cannot keep contacts in sync"
        )
    deletion_policy = _deletion_policy(document.get("deletion_policy"), keep_in_sync)
    return ImportRequest(
        id=_object_id(document, "_id"),
        account_id=_object_id(document, "account_id"),
        user_id=_object_id(document, "user_id"),
        parent_account=_object_id(document, "parent_account", required=False),
        client_id=_object_id(document, "client_id", required=False),
        import_type=import_type,
        contact_type=CONTACT_TYPES[import_type],
        mappings=mappings,
        new_contact=_new_contact(document.get("new_contact")),
        max_customers=_integer(document, "max_customers", minimum=1),
        attempts=_integer(document, "attempts", minimum=0) or 0,
        dry_run=dry_run,
        keep_in_sync=keep_in_sync,
        deletion_policy=deletion_policy,
        queued_by=_text(document, "queued_by"),
        reason=_text(document, "reason"),
    )


def _object_id(document: Mapping[str, Any], name: str, required: bool = True) -> ObjectId | None:
    value = document.get(name)
    if isinstance(value, ObjectId):
        return value
    if value is None or value == "":
        if required:
            raise InvalidImportRequest(f"{name}: missing (expected an ObjectId)")
        return None
    if isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value)
    shown = repr(value) if isinstance(value, str) else _describe(value)
    raise InvalidImportRequest(f"{name}: {shown} is not an ObjectId")


def _new_contact(value: object) -> bool:
    # Missing means "update only", as the seed's falsy check did; anything but a bool is a mistake.
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidImportRequest(f"new_contact: must be true or false, got {value!r}")
    return value


def _flag(document: Mapping[str, Any], name: str) -> bool:
    """An optional true/false field of the request; missing is false."""
    value = document.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidImportRequest(f"{name}: must be true or false, got {value!r}")
    return value


def _deletion_policy(value: object, keep_in_sync: bool) -> str:
    if value is None:
        return "keep"
    if value not in DELETION_POLICIES:
        expected = ", ".join(repr(name) for name in DELETION_POLICIES)
        raise InvalidImportRequest(f"deletion_policy: {value!r} is not one of {expected}")
    if value == "archive" and not keep_in_sync:
        raise InvalidImportRequest(
            "deletion_policy: 'archive' applies to deletions seen while keeping contacts in "
            "sync; set keep_in_sync too"
        )
    return value


def _text(document: Mapping[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidImportRequest(f"{name}: must be a non-empty string, got {value!r}")
    return value.strip()


def _integer(document: Mapping[str, Any], name: str, minimum: int) -> int | None:
    value = document.get(name)
    if value is None:
        return None
    # Documents written from JavaScript may hold whole numbers as doubles.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise InvalidImportRequest(f"{name}: must be {kind}, got {value!r}")
    return value


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__
