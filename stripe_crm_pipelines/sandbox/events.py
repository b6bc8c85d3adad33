"""Stripe's event log: what happened to an account's customers, kept for 30 days.

Every customer write through the API (create, update, delete) and through
``SandboxState.add_customer`` records one event in the customer's account, shaped like Stripe's
Event object, with ``data.object`` a snapshot of the customer at that moment. Seeding records
none: seeded customers stand for an account's existing history, and 100,000 of them stay cheap.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from stripe_crm_pipelines.sandbox.errors import invalid
from stripe_crm_pipelines.sandbox.store import Collection
from stripe_crm_pipelines.sandbox.wire import Params

EVENT_RETENTION_SECONDS = 30 * 24 * 3600
"""Stripe keeps events for 30 days; older ones are gone from lists, retrieval and cursors."""
EVENTS_API_VERSION = "2026-10-28.endive"
"""The API version events say their ``data.object`` is rendered with (the account's default)."""
MAX_TYPES = 20
JsonObject = dict[str, Any]


def record_event(
    events: Collection[JsonObject],
    *,
    event_id: str,
    seq: int,
    event_type: str,
    obj: JsonObject,
    now: float,
    account: str | None,
    previous_attributes: JsonObject | None = None,
    request: tuple[str | None, str | None] = (None, None),
) -> JsonObject:
    """Append an event about ``obj`` (a snapshot the log keeps as it is) and return it.

    ``request`` is ``(request id, idempotency key)`` of the API request that caused it. Events
    never go back in time, so ``(created, seq)`` orders them strictly in arrival order even if
    the wall clock steps back.
    """
    expire_events(events, now)
    newest = events.newest()
    created = max(int(now), newest["created"] if newest else 0)
    data: JsonObject = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    event: JsonObject = {"id": event_id, "object": "event"}
    if account is not None:
        event["account"] = account
    event.update(
        api_version=EVENTS_API_VERSION,
        created=created,
        data=data,
        livemode=False,
        pending_webhooks=0,
        request={"id": request[0], "idempotency_key": request[1]},
        type=event_type,
    )
    events.add(event_id, created, seq, event)
    return event


def expire_events(events: Collection[JsonObject], now: float) -> None:
    """Forget the events older than Stripe's retention at ``now``."""
    events.drop_created_before(int(now) - EVENT_RETENTION_SECONDS + 1)


def previous_attributes(before: JsonObject, after: JsonObject) -> JsonObject:
    """What an update changed, as Stripe's ``data.previous_attributes``: each changed attribute
    with its value before; within a hash (``metadata``, ``address``) only the changed keys,
    ``None`` for a key the update added."""
    changed: JsonObject = {}
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed[key] = previous_attributes(old, new)
        else:
            changed[key] = old
    return changed


def type_filter(p: Params) -> Callable[[JsonObject], bool] | None:
    """The event filter of a list request's ``type`` (one type, ``*`` as a wildcard:
    ``customer.*``) or ``types`` (up to 20 exact types); ``None`` when neither is sent."""
    if "type" in p and "types" in p:
        raise invalid("You may only specify one of these parameters: type, types.", "types")
    pattern = p.text("type")
    if pattern is not None:
        if "*" not in pattern:
            return lambda event: event["type"] == pattern
        return lambda event: fnmatch.fnmatchcase(event["type"], pattern)
    if "types" not in p:
        return None
    types = p.values["types"]
    if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
        raise invalid("Invalid array: types", "types")
    if len(types) > MAX_TYPES:
        raise invalid(f"types may contain at most {MAX_TYPES} event types.", "types")
    wanted = frozenset(types)
    return lambda event: event["type"] in wanted
