"""Stripe's wire format for parameters: bracket-nested form fields, read with Stripe's errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from stripe_crm_pipelines.sandbox.errors import invalid, missing_param

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")
# Hashes whose keys are user data: never turned into lists even when the keys are digits.
_FREE_FORM_HASHES = frozenset({"metadata"})


def parse_form(text: str) -> dict[str, Any]:
    """Parse a query string or form body (``a[b]=1&expand[]=x&lines[0][price]=p``) into dicts
    and lists, as Stripe reads them. Raises a 400 for conflicting keys (``a=1&a[b]=2``)."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        match = _KEY.match(key)
        parts = [match.group(1), *_PART.findall(match.group(2))] if match else [key]
        node = root
        for depth, part in enumerate(parts):
            if part == "":
                part = str(len(node))
            if depth == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise invalid(f"Invalid hash: {key}", _display_name(parts[: depth + 1]))
                node[part] = value
                break
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise invalid(f"Invalid hash: {key}", _display_name(parts[: depth + 1]))
            node = child
    return {
        key: _listify(value, key) if isinstance(value, dict) else value
        for key, value in root.items()
    }


def _display_name(parts: list[str]) -> str:
    return parts[0] + "".join(f"[{part}]" for part in parts[1:])


def _listify(node: dict[str, Any], name: str) -> dict[str, Any] | list[Any]:
    """A nested hash, as a list if its keys are indexes (``lines[0]``, ``expand[]``)."""
    converted = {
        key: _listify(value, key) if isinstance(value, dict) else value
        for key, value in node.items()
    }
    if name not in _FREE_FORM_HASHES and converted and all(k.isdigit() for k in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


class Params:
    """Request parameters of one (possibly nested) hash, read with Stripe's validation errors.

    ``prefix`` is the hash's own name (``address``), so errors name the full parameter
    (``address[line1]``).
    """

    def __init__(self, values: Mapping[str, Any], prefix: str = "") -> None:
        self.values = values
        self.prefix = prefix

    def name(self, key: str) -> str:
        """The parameter's name as a client writes it."""
        return f"{self.prefix}[{key}]" if self.prefix else key

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def allow(self, *allowed: str) -> None:
        """Reject parameters other than ``allowed`` (plus ``expand``, accepted and ignored)."""
        for key in self.values:
            if key not in allowed and not (key == "expand" and not self.prefix):
                raise invalid(f"Received unknown parameter: {self.name(key)}", self.name(key))

    def text(self, key: str) -> str | None:
        """A string parameter; ``""`` (Stripe's "unset") reads as ``None``."""
        value = self.values.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise invalid(f"Invalid string: {value!r}", self.name(key))
        return value

    def required_text(self, key: str) -> str:
        """A string parameter that must be sent."""
        value = self.text(key)
        if value is None:
            raise missing_param(self.name(key))
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        """A string that must be one of ``choices``."""
        value = self.text(key)
        if value is not None and value not in choices:
            raise invalid(
                f"Invalid {self.name(key)}: must be one of {', '.join(choices)}",
                self.name(key),
            )
        return value

    def integer(
        self, key: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        """An integer parameter, optionally bounded."""
        text = self.text(key)
        if text is None:
            return None
        try:
            value = int(text)
        except ValueError:
            raise invalid(f"Invalid integer: {text}", self.name(key)) from None
        if minimum is not None and value < minimum:
            raise invalid(f"This value must be greater than or equal to {minimum}.", self.name(key))
        if maximum is not None and value > maximum:
            raise invalid(f"This value must be less than or equal to {maximum}.", self.name(key))
        return value

    def required_integer(self, key: str, *, minimum: int | None = None) -> int:
        """An integer parameter that must be sent."""
        value = self.integer(key, minimum=minimum)
        if value is None:
            raise missing_param(self.name(key))
        return value

    def boolean(self, key: str) -> bool | None:
        """A boolean parameter (``true`` / ``false``)."""
        text = self.text(key)
        if text is None:
            return None
        if text not in ("true", "false"):
            raise invalid(f"Invalid boolean: {text}", self.name(key))
        return text == "true"

    def hash(self, key: str) -> Params | None:
        """A nested hash (``address[...]``); ``key=""`` (Stripe's "unset") reads as ``None``."""
        value = self.values.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, dict):
            raise invalid(f"Invalid hash: {self.name(key)}", self.name(key))
        return Params(value, self.name(key))

    def required_hash(self, key: str) -> Params:
        """A nested hash that must be sent."""
        value = self.hash(key)
        if value is None:
            raise missing_param(self.name(key))
        return value

    def metadata(self, current: Mapping[str, str] | None = None) -> dict[str, str]:
        """``current`` metadata with the request's ``metadata[...]`` applied: a key sent as ``""``
        is removed, and ``metadata=""`` removes every key."""
        value = self.values.get("metadata")
        if value is None:
            return dict(current or {})
        if value == "":
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise invalid("Invalid hash: metadata", self.name("metadata"))
        merged = dict(current or {})
        for key, item in value.items():
            if item == "":
                merged.pop(key, None)
            else:
                merged[key] = item
        return merged
