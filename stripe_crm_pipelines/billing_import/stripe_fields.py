"""Which mapping keys name a field of a Stripe customer, as the Stripe SDK's own types say.

The field tree is read once from the annotations of ``stripe.Customer``: its nested types
(``Customer.Address``, ``Customer.Shipping`` …) are followed whole, and other resources it
refers to (``discount`` → ``Discount``) up to :data:`MAX_REFERENCE_HOPS` deep. An object the SDK
types without fields (``metadata``) takes any key below it. Both addresses (``address`` and
``shipping.address``) also answer to the CRM's names for their parts, as the mapping reads them:
``street``, ``state_province`` and ``zip``.

So the set moves with the pinned ``stripe`` package rather than with a hand-kept list: a field
Stripe adds appears when the SDK is upgraded. The tree is built when this module is imported
(about 0.2 s, mostly the SDK loading its resource modules), so that a run that claims an import
does not wait for it between the claim and the first Stripe request.
"""

from __future__ import annotations

import difflib
import functools
import typing
from collections.abc import Sequence
from dataclasses import dataclass

import stripe

MAX_REFERENCE_HOPS = 1
"""How many resource references the tree follows (``discount`` → ``Discount``). Deeper ones are
values: the import does not expand references, so Stripe sends their ids."""
ADDRESS_PATHS = (("address",), ("shipping", "address"))
ADDRESS_ALIASES = ("street", "state_province", "zip")
"""CRM names of address parts the mapping reads from Stripe's own (see ``mapping``)."""

_FieldTree = dict[str, "_FieldTree | None"]
"""Field name → its fields; ``{}`` for a value; ``None`` for an object that takes any key."""


@dataclass(frozen=True)
class UnknownField:
    """Why a mapping key names no field of a Stripe customer, and the nearest key that does."""

    reason: str
    suggestion: str | None


def find_unknown_field(path: Sequence[str]) -> UnknownField | None:
    """None when ``path`` names a field of a Stripe customer (or lies below ``metadata``).

    The suggestion corrects each unknown segment to the nearest field at its level
    (``adress-city`` → ``address-city``), so it is a key that passes.
    """
    node: _FieldTree | None = customer_fields()
    for depth, segment in enumerate(path):
        if node is None:
            return None
        if segment not in node:
            known = "-".join(path[:depth])
            if not node:
                return UnknownField(f"{known!r} is a value, not an object", known)
            where = f"a field of {known!r}" if known else "one of its fields"
            return UnknownField(f"{segment!r} is not {where}", _nearest_key(path))
        node = node[segment]
    return None


@functools.cache
def customer_fields() -> _FieldTree:
    """The fields of a Stripe customer, nested; built once from the SDK's types."""
    tree = _fields_of(stripe.Customer, hops=MAX_REFERENCE_HOPS, seen=frozenset({stripe.Customer}))
    for parents in ADDRESS_PATHS:
        address = tree
        for segment in parents:
            address = address[segment]
        address.update({alias: {} for alias in ADDRESS_ALIASES})
    return tree


def _nearest_key(path: Sequence[str]) -> str | None:
    corrected: list[str] = []
    node: _FieldTree | None = customer_fields()
    for segment in path:
        if node is None:
            corrected.append(segment)
            continue
        if segment not in node:
            matches = difflib.get_close_matches(segment.lower(), list(node), n=1, cutoff=0.6)
            if not matches:
                return None
            segment = matches[0]
        corrected.append(segment)
        node = node[segment]
    return "-".join(corrected)


def _fields_of(cls: type, hops: int, seen: frozenset[type]) -> _FieldTree:
    fields: _FieldTree = {}
    for name, annotation in vars(cls).get("__annotations__", {}).items():
        if typing.get_origin(annotation) is typing.ClassVar:
            continue
        below: _FieldTree | None = {}
        for kind in _object_types(annotation):
            nested = "." in kind.__qualname__
            if kind in seen or (not nested and hops == 0):
                continue
            if not vars(kind).get("__annotations__"):
                below = None
                break
            below.update(
                _fields_of(kind, hops if nested else hops - 1, seen | {kind}),
            )
        fields[name] = below
    return fields


def _object_types(annotation: object) -> list[type]:
    """The Stripe object types a field's annotation allows (lists are values: not followed)."""
    if isinstance(annotation, typing.ForwardRef):
        annotation = getattr(stripe, annotation.__forward_arg__, None)
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        return [kind for arg in typing.get_args(annotation) for kind in _object_types(arg)]
    kind = origin if origin is not None else annotation
    if (
        isinstance(kind, type)
        and issubclass(kind, stripe.StripeObject)
        and not issubclass(kind, stripe.ListObject)
    ):
        return [kind]
    return []


customer_fields()
