"""Map Stripe customer fields onto CRM contact fields (the seed's ``getMapping``).

A request's ``mappings`` object is ``{stripe_key: crm_field}``. The Stripe key is a path into the
Stripe customer with ``-`` (or ``.``) between segments (``address-city``, ``metadata-plan``); the
CRM field is a dotted path into the contact (``address.state_province``). Stripe addresses, both
``address`` and ``shipping.address``, also answer to the CRM's names for their parts: ``street``
(``line1``, then ``line2`` after a comma), ``state`` and ``state_province`` (``state``), ``zip``
and ``postal_code`` (``postal_code``). A Stripe key must name a field of a Stripe customer as the
SDK types it (:mod:`.stripe_fields`); anything under ``metadata`` is free.

:func:`parse_mappings` validates the object once per import and compiles a reader per entry, so
:func:`map_customer` does no parsing per customer. Customers are plain mappings as Stripe's JSON
decodes (``StripeObject.to_dict()`` for SDK objects).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stripe_crm_pipelines.billing_import.stripe_fields import find_unknown_field

JOB_OWNED_FIELDS: frozenset[str] = frozenset(
    {
        "_id",
        "parent_account",
        "owner",
        "created_by",
        "type",
        "source",
        "stripe_customer_id",
        "old_field_values",
        "email_key",
        # Set by the incremental sync when the Stripe customer is deleted (deletion_policy archive).
        "stripe_deleted",
        "stripe_deleted_at",
    }
)

_STRIPE_ADDRESS_PARENTS = (("address",), ("shipping", "address"))
# CRM name of an address part -> Stripe's name; "street" is line1 and line2 together.
_ADDRESS_ALIASES = {
    "state": "state",
    "state_province": "state",
    "zip": "postal_code",
    "postal_code": "postal_code",
}
_STREET_SEPARATOR = ", "
_SCALARS = frozenset({str, int, float, bool})


class MappingError(ValueError):
    """A request's ``mappings`` object is not usable; the message names the bad entry."""


class _PathNode(dict):
    """A dict that :func:`map_customer` created along a CRM path (not a value read from Stripe).

    :func:`set_fields` descends into these and sets everything else whole, so a mapped value that
    is itself an object (``address`` → ``address``, ``metadata`` → ``custom``) becomes one ``$set``
    path whatever keys it holds.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """One validated ``stripe_key → crm_field`` entry with its compiled Stripe reader."""

    stripe_key: str
    crm_field: str
    stripe_path: tuple[str, ...] = field(init=False, repr=False, compare=False)
    crm_path: tuple[str, ...] = field(init=False, repr=False, compare=False)
    crm_parents: tuple[str, ...] = field(init=False, repr=False, compare=False)
    crm_leaf: str = field(init=False, repr=False, compare=False)
    read: Callable[[Mapping[str, Any]], Any] = field(init=False, repr=False, compare=False)
    """``read(customer)``: the Stripe value (objects copied), or None when absent."""

    def __post_init__(self) -> None:
        entry = f"mappings[{self.stripe_key!r}]"
        if not isinstance(self.stripe_key, str) or not self.stripe_key:
            raise MappingError(
                f"{entry}: Stripe key must be a non-empty string, got {_describe(self.stripe_key)}"
            )
        if not isinstance(self.crm_field, str) or not self.crm_field:
            raise MappingError(
                f"{entry}: CRM field must be a non-empty string, got {_describe(self.crm_field)}"
            )
        stripe_path = tuple(self.stripe_key.replace("-", ".").split("."))
        if "" in stripe_path:
            raise MappingError(f"{entry}: Stripe key has an empty segment")
        unknown = find_unknown_field(stripe_path)
        if unknown is not None:
            hint = f"; did you mean {unknown.suggestion!r}?" if unknown.suggestion else ""
            raise MappingError(
                f"{entry}: Stripe key names no field of a Stripe customer ({unknown.reason}){hint}"
            )
        crm_path = tuple(self.crm_field.split("."))
        _check_crm_path(entry, self.crm_field, crm_path)
        object.__setattr__(self, "stripe_path", stripe_path)
        object.__setattr__(self, "crm_path", crm_path)
        object.__setattr__(self, "crm_parents", crm_path[:-1])
        object.__setattr__(self, "crm_leaf", crm_path[-1])
        object.__setattr__(self, "read", _compile_reader(stripe_path, crm_path))

    def __reduce__(self) -> tuple[type[FieldMapping], tuple[str, str]]:
        # The compiled reader is a closure; rebuild it rather than pickle it (Dagster pickles
        # op outputs that carry mappings).
        return (FieldMapping, (self.stripe_key, self.crm_field))


def parse_mappings(raw: object) -> tuple[FieldMapping, ...]:
    """Validate a request's ``mappings`` object; None or ``{}`` means no mapped fields."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise MappingError(
            f"mappings must be an object of {{stripe_key: crm_field}}, got {_describe(raw)}"
        )
    parsed: list[FieldMapping] = []
    for stripe_key, crm_field in raw.items():
        mapping = FieldMapping(stripe_key, crm_field)
        for earlier in parsed:
            _check_no_overlap(earlier, mapping)
        parsed.append(mapping)
    return tuple(parsed)


def map_customer(customer: Mapping[str, Any], mappings: Sequence[FieldMapping]) -> dict[str, Any]:
    """The CRM values of one Stripe customer, nested by CRM path.

    Always ``stripe_customer_id`` and ``email`` (trimmed; None when Stripe has none), then every
    mapped field whose Stripe value is present; an absent one is left out so the contact keeps
    its current value.
    """
    customer_id = customer.get("id")
    if not customer_id:
        raise ValueError("Stripe customer has no id")
    email = customer.get("email")
    email = (email.strip() or None) if isinstance(email, str) else None
    mapped: dict[str, Any] = {"stripe_customer_id": customer_id, "email": email}
    for mapping in mappings:
        value = mapping.read(customer)
        if value is None:
            continue
        target = mapped
        for segment in mapping.crm_parents:
            node = target.get(segment)
            if node is None:
                node = target[segment] = _PathNode()
            target = node
        target[mapping.crm_leaf] = value
    return mapped


def set_fields(mapped: dict[str, Any]) -> dict[str, Any]:
    """:func:`map_customer`'s result as MongoDB ``$set`` paths: one dotted path per mapped field."""
    flat: dict[str, Any] = {}
    for key, value in mapped.items():
        if type(value) is _PathNode:
            _flatten(value, key + ".", flat)
        else:
            flat[key] = value
    return flat


def old_field_values(
    contact: Mapping[str, Any], mappings: Sequence[FieldMapping]
) -> dict[str, Any]:
    """The contact's current email and current value of every mapped field, nested by CRM path.

    Mapped fields the contact does not have are left out.
    """
    previous: dict[str, Any] = {"email": _copied(contact.get("email"))}
    for mapping in mappings:
        value = _read_path(contact, mapping.crm_path)
        if value is None:
            continue
        target = previous
        for segment in mapping.crm_parents:
            target = target.setdefault(segment, {})
        target[mapping.crm_leaf] = _copied(value)
    return previous


def normalize_email(value: object) -> str | None:
    """The form emails are matched in (trimmed, lower-cased); None when there is no email."""
    if not isinstance(value, str):
        return None
    return value.strip().lower() or None


def get_path(document: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path, or None when a segment is missing or not an object."""
    return _read_path(document, dotted.split("."))


def _read_path(document: Any, path: Sequence[str]) -> Any:
    value = document
    for segment in path:
        if not _is_mapping(value):
            return None
        value = value.get(segment)
    return value


def _check_crm_path(entry: str, crm_field: str, crm_path: tuple[str, ...]) -> None:
    if crm_field.startswith("$"):
        raise MappingError(f"{entry}: CRM field {crm_field!r} may not start with '$'")
    if "" in crm_path:
        raise MappingError(f"{entry}: CRM field {crm_field!r} has an empty segment")
    for segment in crm_path:
        if segment.startswith("$"):
            raise MappingError(
                f"{entry}: CRM field {crm_field!r} has a segment starting with '$' ({segment!r})"
            )
        if "\x00" in segment:
            raise MappingError(f"{entry}: CRM field {crm_field!r} contains a NUL character")
    if crm_path[0] in JOB_OWNED_FIELDS:
        if len(crm_path) == 1:
            raise MappingError(f"{entry}: CRM field {crm_field!r} is set by the import itself")
        raise MappingError(
            f"{entry}: CRM field {crm_field!r} is under {crm_path[0]!r}, "
            "which the import sets itself"
        )
    if crm_path[0] == "email" and len(crm_path) > 1:
        raise MappingError(
            f"{entry}: CRM field {crm_field!r} is under 'email', which holds the contact's email"
        )


def _check_no_overlap(earlier: FieldMapping, later: FieldMapping) -> None:
    """Two entries may not write the same CRM field, nor one inside the other's value."""
    entry = f"mappings[{later.stripe_key!r}]"
    if earlier.crm_path == later.crm_path:
        raise MappingError(
            f"{entry}: CRM field {later.crm_field!r} is already mapped from {earlier.stripe_key!r}"
        )
    shorter, longer = sorted((earlier.crm_path, later.crm_path), key=len)
    if longer[: len(shorter)] == shorter:
        raise MappingError(
            f"{entry}: CRM field {later.crm_field!r} overlaps {earlier.crm_field!r} "
            f"(mapped from {earlier.stripe_key!r})"
        )


def _compile_reader(
    stripe_path: tuple[str, ...], crm_path: tuple[str, ...]
) -> Callable[[Mapping[str, Any]], Any]:
    *parent, part = stripe_path
    if tuple(parent) in _STRIPE_ADDRESS_PARENTS:
        if part == "street":
            reader = _street_reader(_path_reader(tuple(parent), copy=False))
        else:
            reader = _path_reader((*parent, _ADDRESS_ALIASES.get(part, part)))
    else:
        reader = _path_reader(stripe_path)
    if crm_path == ("email",):
        return _trimmed(reader)
    return reader


def _path_reader(path: tuple[str, ...], copy: bool = True) -> Callable[[Mapping[str, Any]], Any]:
    """A reader for a path, specialised by depth: it runs for every customer and mapped field."""
    finish = _copied if copy else _as_is
    if len(path) == 1:
        (key,) = path

        def read(document: Mapping[str, Any]) -> Any:
            value = document.get(key)
            if value is None or type(value) in _SCALARS:
                return value
            return finish(value)

        return read
    if len(path) == 2:
        outer, inner = path

        def read_two(document: Mapping[str, Any]) -> Any:
            value = document.get(outer)
            if not _is_mapping(value):
                return None
            value = value.get(inner)
            if value is None or type(value) in _SCALARS:
                return value
            return finish(value)

        return read_two
    first, *rest = path

    def read_deep(document: Mapping[str, Any]) -> Any:
        value = document.get(first)
        for segment in rest:
            if not _is_mapping(value):
                return None
            value = value.get(segment)
        if value is None or type(value) in _SCALARS:
            return value
        return finish(value)

    return read_deep


def _is_mapping(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)


def _as_is(value: Any) -> Any:
    return value


def _trimmed(read: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], Any]:
    """Emails are stored trimmed, whichever Stripe field a mapping to ``email`` reads."""

    def read_trimmed(document: Mapping[str, Any]) -> Any:
        value = read(document)
        if isinstance(value, str):
            return value.strip() or None
        return value

    return read_trimmed


def _street_reader(
    read_address: Callable[[Mapping[str, Any]], Any],
) -> Callable[[Mapping[str, Any]], Any]:
    def read_street(customer: Mapping[str, Any]) -> Any:
        address = read_address(customer)
        if not _is_mapping(address):
            return None
        line1 = address.get("line1")
        line2 = address.get("line2")
        if not (isinstance(line2, str) and line2.strip()):
            return line1
        if line1 is None or line1 == "":
            return line2
        return f"{line1}{_STREET_SEPARATOR}{line2}"

    return read_street


def _copied(value: Any) -> Any:
    """Plain dict/list copies of a nested value, so contacts never share objects with customers."""
    if value is None or type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copied(item) for item in value]
    return value


def _flatten(node: Mapping[str, Any], prefix: str, flat: dict[str, Any]) -> None:
    for key, value in node.items():
        if type(value) is _PathNode:
            _flatten(value, prefix + key + ".", flat)
        else:
            flat[prefix + key] = value


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__
