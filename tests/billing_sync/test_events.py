"""Reading customer events after a cursor over the SDK, against the sandbox."""

from __future__ import annotations

import pytest

from stripe_crm_pipelines.billing_sync.events import (
    StaleCursor,
    collapse,
    events_cursor_at_start,
    read_customer_events,
)
from stripe_crm_pipelines.billing_sync.state import EventsCursor

ACCOUNT = "acct_1EventsRead"


def test_events_after_an_event_are_read_oldest_first_over_several_pages(
    stripe_sandbox, stripe_client_factory
):
    stripe_sandbox.state.add_customer(ACCOUNT, email="first@example.com")
    client = stripe_client_factory(ACCOUNT)
    cursor = events_cursor_at_start(client)
    ids = [
        stripe_sandbox.state.add_customer(ACCOUNT, email=f"c{n}@example.com")["id"]
        for n in range(230)
    ]
    for customer_id in ids[:20]:
        client.v1.customers.update(customer_id, params={"name": "renamed"})
    stripe_sandbox.state.clear_requests()

    read = read_customer_events(client, cursor)

    assert stripe_sandbox.state.request_counts() == {"GET /v1/events": 3}
    assert read.events_read == 250
    # Each customer once, ordered by its newest event: the renamed ones come last.
    assert [change.customer_id for change in read.changes] == ids[20:] + ids[:20]
    assert all(change.customer["name"] == "renamed" for change in read.changes[-20:])
    newest = stripe_sandbox.state.events(ACCOUNT)[0]
    assert read.cursor == EventsCursor(newest["id"], newest["created"])


def test_events_since_a_time_are_read_over_several_pages(stripe_sandbox, stripe_client_factory):
    client = stripe_client_factory(ACCOUNT)
    cursor = events_cursor_at_start(client)
    assert cursor.event_id is None
    ids = [
        stripe_sandbox.state.add_customer(ACCOUNT, email=f"c{n}@example.com")["id"]
        for n in range(150)
    ]
    client.v1.customers.delete(ids[0])

    read = read_customer_events(client, cursor)

    assert read.events_read == 151
    assert [change.customer_id for change in read.changes] == ids[1:] + ids[:1]
    assert read.changes[-1].deleted and not read.changes[0].deleted


def test_a_refused_cursor_is_stale_and_other_refusals_are_not(
    stripe_sandbox, stripe_client_factory
):
    client = stripe_client_factory(ACCOUNT)

    with pytest.raises(StaleCursor, match="evt_gone"):
        read_customer_events(client, EventsCursor("evt_gone", int(stripe_sandbox.state.now())))
    stripe_sandbox.state.inject_fault(endpoint="GET /v1/events", status=400, count=1)
    with pytest.raises(Exception) as refused:
        read_customer_events(client, EventsCursor(None, int(stripe_sandbox.state.now())))
    assert not isinstance(refused.value, StaleCursor)


def test_collapse_keeps_each_customers_newest_state_in_order_of_it():
    def event(number, customer_id, event_type="customer.updated", **fields):
        return {
            "id": f"evt_{number}",
            "type": event_type,
            "created": 1_700_000_000 + number,
            "data": {"object": {"id": customer_id, **fields}},
        }

    changes = collapse(
        [
            event(1, "cus_a", "customer.created", name="A1"),
            event(2, "cus_b", "customer.created", name="B1"),
            event(3, "cus_a", name="A2"),
            event(4, "cus_b", "customer.deleted", name="B1"),
        ]
    )

    assert [(c.customer_id, c.customer["name"], c.deleted, c.event_id) for c in changes] == [
        ("cus_a", "A2", False, "evt_3"),
        ("cus_b", "B1", True, "evt_4"),
    ]
