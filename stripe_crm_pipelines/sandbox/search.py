"""The customer subset of Stripe's search query language.

Supported: clauses ``field:value`` (exact, case-insensitive), ``field~value`` (substring, at
least 3 characters), ``created`` with ``:``, ``>``, ``<``, ``>=``, ``<=``; fields ``email``,
``name``, ``phone``, ``description``, ``created`` and ``metadata['key']``; ``-`` negates a
clause; the value ``null`` (unquoted) matches a missing value; clauses are joined with ``AND``,
``OR`` (not both, as in Stripe) or whitespace (``AND``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from stripe_crm_pipelines.sandbox.data import CustomerRecord
from stripe_crm_pipelines.sandbox.errors import invalid

Predicate = Callable[[CustomerRecord], bool]

_CLAUSE = re.compile(
    r"""\s*(?P<negate>-)?
    (?P<field>[a-z_]+)(?:\[(?P<key>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\])?
    \s*(?P<op>>=|<=|:|~|>|<)\s*
    (?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"]+)""",
    re.VERBOSE,
)
_JOIN = re.compile(r"\s+(?:(?P<word>AND|OR)\s+)?", re.IGNORECASE)
_STRING_FIELDS = ("email", "name", "phone", "description")


def parse_customer_query(query: str) -> Predicate:
    """Compile a search query into a predicate on customers; raises a 400 naming ``query``."""
    clauses: list[Predicate] = []
    joins: set[str] = set()
    position = 0
    text = query.strip()
    if not text:
        raise invalid("Search query must not be empty.", "query")
    while True:
        match = _CLAUSE.match(text, position)
        if match is None:
            raise _query_error(query, position)
        clauses.append(_clause(match))
        position = match.end()
        if position == len(text):
            break
        join = _JOIN.match(text, position)
        if join is None:
            raise _query_error(query, position)
        joins.add((join.group("word") or "AND").upper())
        position = join.end()
    if len(joins) > 1:
        raise invalid(
            "Invalid search query: AND and OR cannot be combined in the same query.", "query"
        )
    if joins == {"OR"}:
        return lambda customer: any(clause(customer) for clause in clauses)
    return lambda customer: all(clause(customer) for clause in clauses)


def _query_error(query: str, position: int) -> Exception:
    return invalid(
        f"Invalid search query: could not parse {query!r} at character {position}.", "query"
    )


def _unquote(token: str) -> str:
    if token[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def _clause(match: re.Match[str]) -> Predicate:
    field, op, raw_value = match.group("field"), match.group("op"), match.group("value")
    is_null = raw_value == "null"
    value = _unquote(raw_value)
    if field == "created":
        predicate = _created_clause(op, value)
    else:
        if field == "metadata":
            if match.group("key") is None:
                raise invalid(
                    "Invalid search query: metadata needs a key: metadata['key'].", "query"
                )
            key = _unquote(match.group("key"))

            def read(customer: CustomerRecord) -> str | None:
                return customer.metadata.get(key)

        elif field in _STRING_FIELDS:

            def read(customer: CustomerRecord) -> str | None:
                return getattr(customer, field)

        else:
            raise invalid(
                f"Field '{field}' is an unsupported search field for resource customers. See "
                "https://stripe.com/docs/search#query-fields-for-customers for a list of "
                "supported fields.",
                "query",
            )
        predicate = _string_clause(read, op, None if is_null else value.lower())
    if match.group("negate"):
        return lambda customer: not predicate(customer)
    return predicate


def _string_clause(
    read: Callable[[CustomerRecord], str | None], op: str, expected: str | None
) -> Predicate:
    if expected is None:
        if op != ":":
            raise invalid("Invalid search query: null can only be used with ':'.", "query")
        return lambda customer: read(customer) is None
    if op == ":":
        return lambda customer: (read(customer) or "").lower() == expected
    if op == "~":
        if len(expected) < 3:
            raise invalid(
                "Invalid search query: substring matches need at least 3 characters.", "query"
            )
        return lambda customer: expected in (read(customer) or "").lower()
    raise invalid(f"Invalid search query: '{op}' is not supported for string fields.", "query")


def _created_clause(op: str, value: str) -> Predicate:
    try:
        number = int(value)
    except ValueError:
        raise invalid(f"Invalid search query: '{value}' is not a number.", "query") from None
    comparisons: dict[str, Predicate] = {
        ":": lambda customer: customer.created == number,
        ">": lambda customer: customer.created > number,
        "<": lambda customer: customer.created < number,
        ">=": lambda customer: customer.created >= number,
        "<=": lambda customer: customer.created <= number,
    }
    if op not in comparisons:
        raise invalid("Invalid search query: '~' is not supported for created.", "query")
    return comparisons[op]
