"""The sandbox's customer updates, deletions and event log, exercised with the real ``stripe``
SDK over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import stripe

from stripe_crm_pipelines.sandbox import SandboxControl, SandboxControlError, SandboxServer
from stripe_crm_pipelines.sandbox.events import EVENT_RETENTION_SECONDS
from tests.sandbox_plugin import SANDBOX_API_KEY, StripeClientFactory

ACCOUNT = "acct_1Events"
OTHER_ACCOUNT = "acct_2Events"
DAY = 24 * 3600
EVENT_FIELDS = {
    "id", "object", "account", "api_version", "created", "data", "livemode", "pending_webhooks",
    "request", "type",
}  # fmt: skip


def events_json(
    sandbox: SandboxServer, query: str = "", account: str = ACCOUNT
) -> requests.Response:
    """``GET /v1/events`` as plain HTTP, for what the SDK hides (status, raw JSON)."""
    return requests.get(
        f"{sandbox.url}/v1/events{query}",
        headers={"Authorization": f"Bearer {SANDBOX_API_KEY}", "Stripe-Account": account},
        timeout=10,
    )


def all_events(client: stripe.StripeClient, **params: Any) -> list[stripe.Event]:
    """Every event the list returns, following ``has_more`` with ``starting_after``."""
    return list(client.v1.events.list(params=params).auto_paging_iter())  # type: ignore[arg-type]


# --- customer writes and their events ---------------------------------------------------------


def test_create_update_delete_record_events_with_the_customer_as_it_was(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    created = client.v1.customers.create(
        params={"email": "ada@example.com", "address": {"line1": "1 Main St", "city": "London"}}
    )
    updated = client.v1.customers.update(created.id, params={"address": {"city": "Paris"}})
    deleted = client.v1.customers.delete(created.id)

    events = all_events(client)

    assert [event.type for event in events] == [
        "customer.deleted", "customer.updated", "customer.created",
    ]  # fmt: skip
    raw = events_json(stripe_sandbox).json()
    assert raw["object"] == "list" and raw["url"] == "/v1/events" and raw["has_more"] is False
    for event in raw["data"]:
        assert set(event) == EVENT_FIELDS
        assert event["id"].startswith("evt_") and event["object"] == "event"
        assert event["account"] == ACCOUNT and event["livemode"] is False
        assert isinstance(event["created"], int) and event["api_version"]
    deleted_event, updated_event, created_event = raw["data"]
    assert created_event["data"] == {"object": created.to_dict()}
    assert updated_event["data"]["object"] == updated.to_dict()
    assert updated_event["data"]["object"]["address"]["line1"] is None  # a hash is replaced
    assert updated_event["data"]["previous_attributes"] == {
        "address": {"city": "London", "line1": "1 Main St"}
    }
    assert deleted_event["data"] == {"object": updated.to_dict()}
    assert deleted.to_dict() == {"id": created.id, "object": "customer", "deleted": True}
    assert created_event["request"]["id"] == created.last_response.request_id
    assert client.v1.events.retrieve(events[1].id).to_dict() == updated_event


def test_update_reads_stripe_form_encoding_and_unsets_with_empty_strings(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    customer = client.v1.customers.create(
        params={
            "email": "grace@example.com",
            "name": "Grace",
            "description": "VIP",
            "phone": "+15550100",
            "metadata": {"crm_id": "7", "tier": "gold"},
        }
    )
    response = requests.post(
        f"{stripe_sandbox.url}/v1/customers/{customer.id}",
        headers={"Authorization": f"Bearer {SANDBOX_API_KEY}", "Stripe-Account": ACCOUNT},
        data={
            "address[city]": "Lyon",
            "address[country]": "FR",
            "metadata[tier]": "",
            "metadata[segment]": "smb",
            "description": "",
        },
        timeout=10,
    )

    assert response.status_code == 200
    after = client.v1.customers.retrieve(customer.id)
    assert after.address.city == "Lyon" and after.address.country == "FR"
    assert after.metadata.to_dict() == {"crm_id": "7", "segment": "smb"}
    assert after.description is None
    assert (after.name, after.phone, after.email) == ("Grace", "+15550100", "grace@example.com")
    update = client.v1.events.list(params={"type": "customer.updated"}).data[0]
    assert update.data.previous_attributes.to_dict() == {
        "address": None,
        "description": "VIP",
        "metadata": {"segment": None, "tier": "gold"},
    }
    cleared = client.v1.customers.update(customer.id, params={"metadata": ""})
    assert cleared.metadata.to_dict() == {}


def test_refused_and_empty_updates_change_nothing_and_record_nothing(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    customer = client.v1.customers.create(params={"email": "ok@example.com", "name": "Before"})

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.customers.update(customer.id, params={"name": "After", "email": "not-an-email"})
    unchanged = client.v1.customers.update(customer.id, params={"name": "Before"})

    assert refused.value.param == "email"
    assert unchanged.name == "Before" and unchanged.email == "ok@example.com"
    assert [event.type for event in all_events(client)] == ["customer.created"]


def test_deleted_customers_vanish_and_answer_as_deleted(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    kept = client.v1.customers.create(params={"email": "kept@example.com"})
    gone = client.v1.customers.create(params={"email": "gone@example.com"})

    client.v1.customers.delete(gone.id)

    assert client.v1.customers.retrieve(gone.id).to_dict() == {
        "id": gone.id, "object": "customer", "deleted": True,
    }  # fmt: skip
    assert [c.id for c in client.v1.customers.list().data] == [kept.id]
    found = client.v1.customers.search(params={"query": "email:'gone@example.com'"})
    assert found.data == []
    for call in (
        lambda: client.v1.customers.update(gone.id, params={"name": "x"}),
        lambda: client.v1.customers.delete(gone.id),
    ):
        with pytest.raises(stripe.InvalidRequestError) as error:
            call()
        assert error.value.http_status == 404 and error.value.code == "resource_missing"
    assert [event.type for event in all_events(client)].count("customer.deleted") == 1


def test_an_idempotent_replay_records_no_second_event(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    options = {"idempotency_key": "create-ada"}
    first = client.v1.customers.create(params={"email": "ada@example.com"}, options=options)
    again = client.v1.customers.create(params={"email": "ada@example.com"}, options=options)

    events = all_events(client)

    assert first.id == again.id and len(events) == 1
    assert events[0].request.idempotency_key == "create-ada"


def test_events_belong_to_their_account(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    mine = stripe_client_factory(ACCOUNT)
    platform = stripe_client_factory()
    customer = mine.v1.customers.create(params={"email": "mine@example.com"})
    platform.v1.customers.create(params={"email": "platform@example.com"})
    event_id = all_events(mine)[0].id

    assert all_events(stripe_client_factory(OTHER_ACCOUNT)) == []
    platform_events = events_json(stripe_sandbox, account="").json()["data"]
    assert len(platform_events) == 1 and "account" not in platform_events[0]
    assert platform_events[0]["data"]["object"]["email"] == "platform@example.com"
    with pytest.raises(stripe.InvalidRequestError) as error:
        platform.v1.events.retrieve(event_id)
    assert error.value.http_status == 404 and error.value.code == "resource_missing"
    assert all_events(mine)[0].data.object.id == customer.id


def test_seeding_records_no_events_and_added_customers_record_one(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    state = stripe_sandbox.state
    state.seed_customers(500, seed=3, account=ACCOUNT)
    added = state.add_customer(ACCOUNT, email="new@example.com", created=1_600_000_000)
    replaced = state.add_customer(ACCOUNT, id=added["id"], email="newer@example.com")

    events = all_events(stripe_client_factory(ACCOUNT))

    assert [event.type for event in events] == ["customer.updated", "customer.created"]
    assert events[1].data.object.to_dict() == added and events[0].data.object.id == replaced["id"]
    assert events[0].data.previous_attributes["email"] == "new@example.com"
    assert events[1].request.to_dict() == {"id": None, "idempotency_key": None}
    assert state.events(ACCOUNT) == events_json(stripe_sandbox).json()["data"]


# --- listing events ---------------------------------------------------------------------------


def test_list_filters_by_type_types_and_created(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    customers = [client.v1.customers.create(params={"name": f"c{n}"}) for n in range(12)]
    for customer in customers[:3]:
        client.v1.customers.update(customer.id, params={"name": "renamed"})
    client.v1.customers.delete(customers[0].id)
    newest = all_events(client)[0].created

    default_page = client.v1.events.list()
    deletions = all_events(client, types=["customer.deleted"])
    changes = all_events(client, types=["customer.updated", "customer.deleted"])
    wildcard = all_events(client, type="customer.*")

    assert len(default_page.data) == 10 and default_page.has_more
    assert [event.data.object.id for event in deletions] == [customers[0].id]
    assert [event.type for event in changes] == ["customer.deleted"] + ["customer.updated"] * 3
    assert len(wildcard) == 16
    assert all_events(client, created={"gt": newest}) == []
    assert len(all_events(client, created={"gte": newest - 3600})) == 16
    assert len(all_events(client, created={"lte": newest, "gte": newest - 3600})) == 16
    assert all_events(client, created={"lt": newest - 3600}) == []
    for query, param in (
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?type=customer.created&types[]=customer.updated", "types"),
        ("?delivery_success=true", "delivery_success"),
        ("?types=customer.created", "types"),
    ):
        refused = events_json(stripe_sandbox, query)
        assert refused.status_code == 400, query
        assert refused.json()["error"]["param"] == param


def test_events_of_one_second_page_in_a_strict_order_both_ways(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    recorded = [
        stripe_sandbox.state.add_customer(ACCOUNT, email=f"c{n}@example.com")["id"]
        for n in range(250)
    ]
    client = stripe_client_factory(ACCOUNT)

    newest_first = all_events(client, limit=7)
    oldest_event = newest_first[-1]
    forward: list[stripe.Event] = [oldest_event]  # as a sync reads: oldest first, ending_before
    while True:
        page = client.v1.events.list(params={"limit": 7, "ending_before": forward[-1].id})
        forward.extend(reversed(page.data))
        if not page.has_more:
            break

    created = [event.created for event in newest_first]
    assert len(set(created)) < len(created)  # events share seconds
    assert [event.data.object.id for event in newest_first] == recorded[::-1]
    assert [event.id for event in forward] == [event.id for event in reversed(newest_first)]


# --- retention and the clock ------------------------------------------------------------------


def test_events_older_than_30_days_are_gone_and_refused_as_cursors(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    control = SandboxControl(stripe_sandbox.url)
    client = stripe_client_factory(ACCOUNT)
    old = client.v1.customers.create(params={"email": "old@example.com"})
    old_event = all_events(client)[0]
    before = control.clock()

    control.advance_clock(29 * DAY)
    client.v1.customers.update(old.id, params={"name": "Renamed"})
    control.advance_clock(2 * DAY)
    fresh = client.v1.customers.create(params={"email": "fresh@example.com"})

    after = control.clock()
    assert after["offset_seconds"] == 31 * DAY
    assert after["now"] - before["now"] == pytest.approx(31 * DAY, abs=60)
    assert fresh.created >= before["now"] + 31 * DAY - 60
    assert [event.type for event in all_events(client)] == ["customer.created", "customer.updated"]
    with pytest.raises(stripe.InvalidRequestError) as gone:
        client.v1.events.retrieve(old_event.id)
    assert gone.value.http_status == 404
    for cursor in ("starting_after", "ending_before"):
        refused = events_json(stripe_sandbox, f"?{cursor}={old_event.id}")
        assert refused.status_code == 400
        assert refused.json()["error"] == {
            "type": "invalid_request_error",
            "message": f"No such event: '{old_event.id}'",
            "param": cursor,
            "code": "resource_missing",
        }
    control.advance_clock(EVENT_RETENTION_SECONDS)
    assert all_events(client) == [] and stripe_sandbox.state.events(ACCOUNT) == []
    with pytest.raises(SandboxControlError):
        control.advance_clock(-1)
    control.reset()
    assert control.clock()["offset_seconds"] == 0
    control.close()
