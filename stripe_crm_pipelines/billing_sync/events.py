"""Read an account's customer events from Stripe after a cursor, and collapse them per customer.

Stripe lists events newest first. With an event id as the cursor, ``ending_before`` pages
towards newer events, so the sync reads them oldest first, 100 per request: a sync of 100
changes costs one request. A cursor without an event id (the account had none when it was taken)
reads the events created since its ``created`` second, newest first, and orders them oldest
first before collapsing.

A sync that finds nothing new keeps its cursor, except that a quiet account's cursor moves on
in time (:func:`cursor_after_quiet_read`): its event would otherwise expire after 30 days and
force a full import although nothing changed.

Several events of one customer collapse to the newest (:class:`CustomerChange`): the sync writes
each customer once, in its state after the last event read. Stripe keeps events for 30 days; a
cursor older than that, or one Stripe refuses (its event has expired), raises
:class:`StaleCursor`, because the changes in between are gone and only a full import can recover
them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import stripe

from stripe_crm_pipelines.billing_sync.state import EventsCursor

CUSTOMER_EVENT_TYPES = ("customer.created", "customer.updated", "customer.deleted")
EVENT_RETENTION_SECONDS = 30 * 24 * 3600
"""How long Stripe keeps events."""
PAGE_SIZE = 100
QUIET_AFTER_SECONDS = 7 * 24 * 3600
"""A cursor event this old with nothing after it gives way to a time cursor (see
:func:`cursor_after_quiet_read`)."""
CLOCK_MARGIN_SECONDS = 300
"""How far a time cursor reaches back from the local clock, for clock skew and for events Stripe
lists a moment after they happen; re-reading an event already applied changes nothing."""
_CURSOR_PARAMS = frozenset({"starting_after", "ending_before"})


class StaleCursor(Exception):
    """The events after the cursor are no longer all available; the message says why."""


@dataclass(frozen=True)
class CustomerChange:
    """A customer's newest state among the events read."""

    customer_id: str
    customer: dict[str, Any]
    """``data.object`` of the newest event: the customer as it was then."""
    deleted: bool
    event_id: str
    created: int
    """When the newest event happened (epoch seconds)."""


@dataclass
class EventsRead:
    """The changes after a cursor, oldest first, and the cursor that follows them."""

    changes: list[CustomerChange] = field(default_factory=list)
    events_read: int = 0
    cursor: EventsCursor | None = None
    """Where the next sync starts once these changes are written; None when nothing was read
    (the cursor stays as it was)."""


def events_cursor_at_start(client: stripe.StripeClient, now: float | None = None) -> EventsCursor:
    """The cursor of a full import, taken before it lists any customer: the account's newest
    customer event, so every change made while the import runs is read by the first sync.

    An account without events gets a time cursor at ``now`` (the local clock, default the
    current time) less :data:`CLOCK_MARGIN_SECONDS`: every event created from then on is read.
    """
    listing = _list_events(client, limit=1)
    if listing["data"]:
        newest = listing["data"][0]
        return EventsCursor(event_id=newest["id"], created=int(newest["created"]))
    now = time.time() if now is None else now
    return EventsCursor(event_id=None, created=int(now) - CLOCK_MARGIN_SECONDS)


def read_customer_events(
    client: stripe.StripeClient, cursor: EventsCursor, now: float | None = None
) -> EventsRead:
    """Every customer event after ``cursor``, collapsed to each customer's newest state.

    Raises :class:`StaleCursor` when the cursor is older than Stripe's 30-day retention (by the
    local clock, ``now``) or Stripe refuses it.
    """
    now = time.time() if now is None else now
    age = now - cursor.created
    if age > EVENT_RETENTION_SECONDS:
        raise StaleCursor(
            f"the events cursor is {age / 86400:.1f} days old; Stripe keeps events for 30 days"
        )
    read = EventsRead()
    try:
        if cursor.event_id is not None:
            events = _events_after(client, cursor.event_id)
        else:
            events = _events_since(client, cursor.created)
    except stripe.InvalidRequestError as error:
        if error.code == "resource_missing" and error.param in _CURSOR_PARAMS:
            raise StaleCursor(
                f"Stripe no longer has the cursor's event {cursor.event_id} "
                f"(events are kept for 30 days): {error.user_message or error}"
            ) from None
        raise
    read.changes = collapse(events)
    read.events_read = len(events)
    if events:
        read.cursor = EventsCursor(event_id=events[-1]["id"], created=int(events[-1]["created"]))
    return read


def cursor_after_quiet_read(cursor: EventsCursor, now: float | None = None) -> EventsCursor:
    """The cursor after a read that found no events after ``cursor``, at ``now`` (epoch seconds,
    local clock).

    Nothing happened between the cursor and the read, so every event from the read on is new. A
    time cursor moves up to the read (less :data:`CLOCK_MARGIN_SECONDS`); an event cursor whose
    event is older than :data:`QUIET_AFTER_SECONDS` becomes such a time cursor, before Stripe
    forgets the event. A younger event cursor stays: it reads oldest first, one request per 100
    events.
    """
    now = time.time() if now is None else now
    moved = int(now) - CLOCK_MARGIN_SECONDS
    if cursor.event_id is None:
        return EventsCursor(None, max(cursor.created, moved))
    if now - cursor.created > QUIET_AFTER_SECONDS:
        return EventsCursor(None, max(cursor.created, moved))
    return cursor


def collapse(events: Iterable[Mapping[str, Any]]) -> list[CustomerChange]:
    """One change per customer, its newest; ``events`` oldest first, and so is the result
    (ordered by each customer's newest event)."""
    newest: dict[str, CustomerChange] = {}
    for event in events:
        customer = event["data"]["object"]
        change = CustomerChange(
            customer_id=customer["id"],
            customer=customer,
            deleted=event["type"] == "customer.deleted" or bool(customer.get("deleted")),
            event_id=event["id"],
            created=int(event["created"]),
        )
        newest.pop(change.customer_id, None)
        newest[change.customer_id] = change
    return list(newest.values())


def _events_after(client: stripe.StripeClient, event_id: str) -> list[dict[str, Any]]:
    """Events newer than ``event_id``, oldest first: each ``ending_before`` page holds the
    events just after its cursor (newest first within the page)."""
    events: list[dict[str, Any]] = []
    cursor = event_id
    while True:
        listing = _list_events(client, limit=PAGE_SIZE, ending_before=cursor)
        page = list(reversed(listing["data"]))
        events.extend(page)
        if not listing.get("has_more") or not page:
            return events
        cursor = page[-1]["id"]


def _events_since(client: stripe.StripeClient, created: int) -> list[dict[str, Any]]:
    """Events created at or after ``created``, oldest first."""
    newest_first: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": PAGE_SIZE, "created": {"gte": created}}
    while True:
        listing = _list_events(client, **params)
        newest_first.extend(listing["data"])
        if not listing.get("has_more") or not listing["data"]:
            return newest_first[::-1]
        params["starting_after"] = listing["data"][-1]["id"]


def _list_events(client: stripe.StripeClient, **params: Any) -> dict[str, Any]:
    """One ``GET /v1/events`` of customer events, as plain JSON."""
    params["types"] = list(CUSTOMER_EVENT_TYPES)
    return json.loads(client.raw_request("get", "/v1/events", **params).body)
