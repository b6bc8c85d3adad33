"""The Stripe sandbox, exercised with the real ``stripe`` SDK over HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
import stripe

from stripe_crm_pipelines.sandbox import SandboxControl, SandboxServer, SandboxState
from stripe_crm_pipelines.sandbox.__main__ import parse_args
from stripe_crm_pipelines.sandbox.wire import parse_form
from tests.sandbox_plugin import SANDBOX_API_KEY, StripeClientFactory

ACCOUNT = "acct_1Sandbox"
OTHER_ACCOUNT = "acct_2Other"
CUSTOMER_FIELDS = {
    "id", "object", "address", "balance", "created", "currency", "default_source", "delinquent",
    "description", "discount", "email", "invoice_prefix", "invoice_settings", "livemode",
    "metadata", "name", "next_invoice_sequence", "phone", "preferred_locales", "shipping",
    "tax_exempt", "test_clock",
}  # fmt: skip
ADDRESS_FIELDS = {"line1", "line2", "city", "state", "postal_code", "country"}


def raw_get(sandbox: SandboxServer, path: str, **headers: str) -> requests.Response:
    """A plain HTTP GET, for what the SDK hides (status, headers, missing keys)."""
    return requests.get(f"{sandbox.url}{path}", headers=headers, timeout=10)


def bearer(account: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {SANDBOX_API_KEY}"}
    if account:
        headers["Stripe-Account"] = account
    return headers


# --- customers: listing, pagination, filters ---------------------------------------------------


def test_auto_pagination_returns_every_customer_once_newest_first(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    stripe_sandbox.state.seed_customers(1050, seed=7, account=ACCOUNT)
    client = stripe_client_factory(ACCOUNT)

    customers = list(client.v1.customers.list(params={"limit": 100}).auto_paging_iter())

    ids = [customer.id for customer in customers]
    assert len(ids) == 1050
    assert len(set(ids)) == 1050
    created = [customer.created for customer in customers]
    assert created == sorted(created, reverse=True)
    assert ids == [c["id"] for c in stripe_sandbox.state.customers(ACCOUNT)]
    assert len(stripe_sandbox.state.requests(path="/v1/customers")) == 11


def test_pagination_is_stable_when_customers_share_a_created_second(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    for index in range(23):
        stripe_sandbox.state.add_customer(ACCOUNT, created=1_700_000_000, email=f"c{index}@x.io")
    client = stripe_client_factory(ACCOUNT)

    first_page = client.v1.customers.list(params={"limit": 7})
    paged = [c.email for c in client.v1.customers.list(params={"limit": 7}).auto_paging_iter()]
    second_page = client.v1.customers.list(
        params={"limit": 7, "starting_after": first_page.data[-1].id}
    )
    back = client.v1.customers.list(params={"limit": 7, "ending_before": second_page.data[0].id})

    assert paged == [f"c{index}@x.io" for index in reversed(range(23))]
    assert [c.id for c in back.data] == [c.id for c in first_page.data]
    assert first_page.has_more and not back.has_more


def test_created_filters(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    for created in (100, 200, 300, 400, 500):
        stripe_sandbox.state.add_customer(ACCOUNT, created=created)
    client = stripe_client_factory(ACCOUNT)

    def created_values(created_filter: object) -> list[int]:
        page = client.v1.customers.list(params={"created": created_filter})  # type: ignore[typeddict-item]
        return [customer.created for customer in page.auto_paging_iter()]

    assert created_values({"gte": 200, "lt": 500}) == [400, 300, 200]
    assert created_values({"gt": 200, "lte": 500}) == [500, 400, 300]
    assert created_values(300) == [300]


def test_the_sandbox_can_refuse_created_filters_like_servers_without_them(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    stripe_sandbox.state.add_customer(ACCOUNT, created=100)
    client = stripe_client_factory(ACCOUNT)
    SandboxControl(stripe_sandbox.url).configure(reject_created=True)

    with pytest.raises(stripe.InvalidRequestError, match="Unexpected created") as refused:
        client.v1.customers.list(params={"created": {"lte": 200}})

    assert refused.value.http_status == 400
    assert [c.created for c in client.v1.customers.list().data] == [100]
    assert parse_args(["--reject-created"]).reject_created


def test_list_by_email_is_exact_and_case_sensitive(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    first = client.v1.customers.create(params={"email": "jane@example.com"})
    second = client.v1.customers.create(params={"email": "jane@example.com"})
    client.v1.customers.create(params={"email": "Jane@Example.com"})

    found = client.v1.customers.list(params={"email": "jane@example.com"})

    assert [c.id for c in found.data] == [second.id, first.id]


def test_customers_look_like_stripe(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory()
    customer = client.v1.customers.create(
        params={
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "phone": "+14155550100",
            "address": {"line1": "1 Main St", "city": "London", "country": "GB"},
            "shipping": {"name": "Ada", "address": {"line1": "2 High St", "country": "GB"}},
            "metadata": {"crm_id": "42"},
        }
    )
    fetched = client.v1.customers.retrieve(customer.id).to_dict()

    assert set(fetched) == CUSTOMER_FIELDS
    assert fetched["id"].startswith("cus_") and fetched["object"] == "customer"
    assert fetched["livemode"] is False and isinstance(fetched["created"], int)
    assert fetched["address"] == {
        "line1": "1 Main St", "line2": None, "city": "London", "state": None,
        "postal_code": None, "country": "GB",
    }  # fmt: skip
    assert fetched["shipping"]["name"] == "Ada" and fetched["shipping"]["phone"] is None
    assert set(fetched["shipping"]["address"]) == ADDRESS_FIELDS
    assert fetched["metadata"] == {"crm_id": "42"} and fetched["description"] is None

    updated = client.v1.customers.update(
        customer.id, params={"metadata": {"crm_id": "", "tier": "gold"}, "address": ""}
    )
    assert updated.metadata.to_dict() == {"tier": "gold"} and updated.address is None
    assert client.v1.customers.delete(customer.id).deleted is True
    assert client.v1.customers.retrieve(customer.id).deleted is True


# --- search -----------------------------------------------------------------------------------


def test_search_by_email_phone_name_and_metadata(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    ada = client.v1.customers.create(
        params={"email": "Ada@Example.com", "phone": "+441234", "metadata": {"crm": "7"}}
    )
    bob = client.v1.customers.create(params={"email": "bob@example.com", "name": "Bob Stone"})

    def search(query: str) -> list[str]:
        result = client.v1.customers.search(params={"query": query})
        return sorted(customer.id for customer in result.auto_paging_iter())

    assert search("email:'ada@example.com'") == [ada.id]
    assert search("phone:'+441234'") == [ada.id]
    assert search("name:'bob stone'") == [bob.id]
    assert search("metadata['crm']:'7'") == [ada.id]
    assert search("email:'ada@example.com' OR phone:'nope'") == [ada.id]
    assert search("email:'ada@example.com' AND phone:'nope'") == []
    assert search("email~'example.com'") == sorted([ada.id, bob.id])
    with pytest.raises(stripe.InvalidRequestError) as error:
        client.v1.customers.search(params={"query": "email:'a' AND phone:'b' OR name:'c'"})
    assert error.value.param == "query"


def test_search_pages_through_results(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    for index in range(25):
        stripe_sandbox.state.add_customer(ACCOUNT, created=1000 + index, name="Same Name")
    client = stripe_client_factory(ACCOUNT)

    first = client.v1.customers.search(params={"query": "name:'same name'", "limit": 10})
    everything = list(first.auto_paging_iter())

    assert first.has_more and first.next_page
    assert [c.created for c in everything] == list(reversed(range(1000, 1025)))


def test_search_index_lag_needs_a_list_by_email_fallback(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    stripe_sandbox.state.configure(search_index_delay=60)
    client = stripe_client_factory(ACCOUNT)
    customer = client.v1.customers.create(params={"email": "new@example.com"})

    searched = client.v1.customers.search(params={"query": "email:'new@example.com'"})
    listed = client.v1.customers.list(params={"email": "new@example.com"})

    assert searched.data == []
    assert [c.id for c in listed.data] == [customer.id]
    stripe_sandbox.state.configure(search_index_delay=0)
    later = client.v1.customers.search(params={"query": "email:'new@example.com'"})
    assert [c.id for c in later.data] == [customer.id]


# --- accounts and keys -----------------------------------------------------------------------


def test_accounts_cannot_see_each_other(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    mine = stripe_client_factory(ACCOUNT)
    other = stripe_client_factory(OTHER_ACCOUNT)
    platform = stripe_client_factory()
    customer = mine.v1.customers.create(params={"email": "mine@example.com"})

    assert other.v1.customers.list().data == []
    assert platform.v1.customers.list().data == []
    with pytest.raises(stripe.InvalidRequestError) as error:
        other.v1.customers.retrieve(customer.id)
    assert error.value.http_status == 404 and error.value.code == "resource_missing"
    assert mine.v1.customers.retrieve(customer.id).email == "mine@example.com"


def test_requests_need_a_valid_test_key(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    missing = raw_get(stripe_sandbox, "/v1/customers")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"

    for bad_key in ("sk_" + "live_abcdefgh1234", "pk_test_abcdefgh1234", "nonsense"):
        with pytest.raises(stripe.AuthenticationError) as error:
            stripe_client_factory(api_key=bad_key).v1.customers.list()
        assert error.value.http_status == 401
        assert "Invalid API Key provided" in str(error.value.user_message)
    assert stripe_client_factory(api_key="rk_test_restricted").v1.customers.list().data == []


def test_forbidden_key_and_injected_403_give_permission_errors(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    stripe_sandbox.state.forbid_key(SANDBOX_API_KEY, ACCOUNT)
    with pytest.raises(stripe.PermissionError) as error:
        stripe_client_factory(ACCOUNT).v1.customers.list()
    assert error.value.http_status == 403
    assert stripe_client_factory(OTHER_ACCOUNT).v1.customers.list().data == []

    stripe_sandbox.state.inject_fault(endpoint="GET /v1/customers", status=403)
    with pytest.raises(stripe.PermissionError):
        stripe_client_factory(OTHER_ACCOUNT).v1.customers.list()


# --- idempotency ------------------------------------------------------------------------------


def test_idempotency_key_replays_the_first_response(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    options = {"idempotency_key": "create-ada"}
    first = client.v1.customers.create(params={"email": "ada@example.com"}, options=options)
    second = client.v1.customers.create(params={"email": "ada@example.com"}, options=options)

    assert second.id == first.id
    assert second.last_response is not None
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(stripe_sandbox.state.customers(ACCOUNT)) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(params={"email": "bob@example.com"}, options=options)
    # the same key in another account is another request
    other = stripe_client_factory(OTHER_ACCOUNT).v1.customers.create(
        params={"email": "ada@example.com"}, options=options
    )
    assert other.id != first.id


# --- faults, rate limits and latency -----------------------------------------------------------


def test_injected_429_carries_retry_after(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    stripe_sandbox.state.inject_fault(endpoint="GET /v1/customers", status=429, retry_after=3)

    with pytest.raises(stripe.RateLimitError) as error:
        stripe_client_factory(ACCOUNT).v1.customers.list()

    assert error.value.http_status == 429
    assert error.value.headers is not None and error.value.headers["Retry-After"] == "3"
    assert stripe_client_factory(ACCOUNT).v1.customers.list().data == []


def test_rate_limit_answers_429_with_retry_after(stripe_sandbox: SandboxServer) -> None:
    stripe_sandbox.state.configure(rate_limit=1, rate_limit_burst=2)

    statuses = [raw_get(stripe_sandbox, "/v1/customers", **bearer()) for _ in range(3)]

    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].json()["error"]["type"] == "rate_limit_error"
    assert int(statuses[2].headers["Retry-After"]) >= 1
    other_key = {"Authorization": "Bearer sk_test_another"}
    assert raw_get(stripe_sandbox, "/v1/customers", **other_key).status_code == 200


def test_injected_500s_fail_the_next_requests_and_create_nothing(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    stripe_sandbox.state.inject_fault(endpoint="GET /v1/customers", status=500, count=2)
    stripe_sandbox.state.inject_fault(endpoint="POST /v1/customers", status=503)

    for _ in range(2):
        with pytest.raises(stripe.APIError) as error:
            client.v1.customers.list()
        assert error.value.http_status == 500
    assert client.v1.customers.list().data == []
    with pytest.raises(stripe.APIError):
        client.v1.customers.create(params={"email": "x@example.com"})
    assert stripe_sandbox.state.customers(ACCOUNT) == []
    assert [e["status"] for e in stripe_sandbox.state.requests(method="GET")] == [500, 500, 200]


def test_probabilistic_faults_repeat_with_the_same_seed(stripe_sandbox: SandboxServer) -> None:
    def failure_pattern() -> list[int]:
        stripe_sandbox.state.reset()
        stripe_sandbox.state.configure(fault_seed=3)
        stripe_sandbox.state.inject_fault(status=500, probability=0.3, count=None)
        return [raw_get(stripe_sandbox, "/v1/customers", **bearer()).status_code for _ in range(30)]

    pattern = failure_pattern()

    assert pattern == failure_pattern()
    assert 500 in pattern and 200 in pattern


def test_latency_is_added_to_requests(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory()
    stripe_sandbox.state.configure(latency_ms=150)
    started = time.perf_counter()
    client.v1.customers.list()
    assert time.perf_counter() - started >= 0.15

    stripe_sandbox.state.configure(latency_ms=0, endpoint_latency_ms={"GET /v1/customers": 200})
    started = time.perf_counter()
    client.v1.customers.list()
    assert time.perf_counter() - started >= 0.2


def test_connection_reset_surfaces_as_api_connection_error(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    stripe_sandbox.state.inject_fault(kind="reset", endpoint="POST /v1/customers")

    with pytest.raises(stripe.APIConnectionError):
        stripe_client_factory(ACCOUNT).v1.customers.create(params={"email": "x@example.com"})

    assert stripe_sandbox.state.customers(ACCOUNT) == []
    assert stripe_sandbox.state.requests()[-1]["fault"] == "reset"


def test_timeout_surfaces_as_api_connection_error_and_other_requests_go_on(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    stripe_sandbox.state.inject_fault(kind="timeout", endpoint="POST /v1/customers", delay=5)
    client = stripe_client_factory(ACCOUNT, timeout=0.3)

    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create(params={"email": "slow@example.com"})

    assert client.v1.customers.list().data == []  # served while the slow request still sleeps


def test_write_then_reset_is_safe_to_retry_with_the_same_idempotency_key(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    stripe_sandbox.state.inject_fault(
        kind="reset", endpoint="POST /v1/customers", after_effect=True
    )
    client = stripe_client_factory(ACCOUNT)
    options = {"idempotency_key": "retry-me"}

    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create(params={"email": "once@example.com"}, options=options)
    retried = client.v1.customers.create(params={"email": "once@example.com"}, options=options)

    assert [c["id"] for c in stripe_sandbox.state.customers(ACCOUNT)] == [retried.id]
    assert stripe_sandbox.state.requests()[-1]["replayed"] is True


def test_a_slow_request_does_not_block_others(stripe_sandbox: SandboxServer) -> None:
    stripe_sandbox.state.inject_fault(kind="timeout", endpoint="GET /v1/invoices", delay=30)
    outcome: list[object] = []

    def slow_call() -> None:
        try:
            outcome.append(raw_get(stripe_sandbox, "/v1/invoices", **bearer()).status_code)
        except requests.RequestException as error:
            outcome.append(error)

    slow = threading.Thread(target=slow_call)
    slow.start()
    deadline = time.monotonic() + 10
    while stripe_sandbox.state.faults.active() and time.monotonic() < deadline:
        time.sleep(0.01)  # until the slow request has drawn the fault

    assert raw_get(stripe_sandbox, "/v1/customers", **bearer()).status_code == 200
    assert slow.is_alive() and outcome == []
    stripe_sandbox.stop()  # wakes the sleeping request
    slow.join(timeout=10)
    assert not slow.is_alive() and len(outcome) == 1


# --- prices, invoices, invoice items -----------------------------------------------------------


def test_invoice_flow(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    customer = client.v1.customers.create(params={"email": "payer@example.com", "name": "Payer"})
    price = client.v1.prices.create(
        params={"currency": "usd", "unit_amount": 1500, "product_data": {"name": "Consulting"}}
    )
    due_date = int(time.time()) + 7 * 86400
    invoice = client.v1.invoices.create(
        params={
            "customer": customer.id,
            "collection_method": "send_invoice",
            "auto_advance": False,
            "due_date": due_date,
            "description": "Payment link",
        }
    )
    client.v1.invoice_items.create(
        params={"customer": customer.id, "invoice": invoice.id, "pricing": {"price": price.id},
                "quantity": 2}
    )  # fmt: skip
    client.v1.invoice_items.create(
        params={"customer": customer.id, "invoice": invoice.id, "amount": 250,
                "currency": "usd", "description": "Travel"}
    )  # fmt: skip

    draft = client.v1.invoices.retrieve(invoice.id)
    finalized = client.v1.invoices.finalize_invoice(invoice.id, params={"auto_advance": False})

    assert price.id.startswith("price_") and client.v1.prices.retrieve(price.id).unit_amount == 1500
    assert invoice.id.startswith("in_") and invoice.status == "draft" and invoice.number is None
    assert draft.amount_due == 3250 and draft.lines.total_count == 2
    assert finalized.status == "open" and finalized.number
    assert finalized.amount_due == finalized.total == 3250
    assert finalized.due_date == due_date and finalized.collection_method == "send_invoice"
    assert finalized.hosted_invoice_url.startswith(f"{stripe_sandbox.url}/i/{ACCOUNT}/")
    assert requests.get(finalized.hosted_invoice_url, timeout=10).status_code == 200
    assert [line.amount for line in finalized.lines.data] == [3000, 250]
    assert client.v1.invoices.list(params={"customer": customer.id}).data[0].id == invoice.id


def test_only_draft_invoices_can_be_deleted(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    customer = client.v1.customers.create()
    draft = client.v1.invoices.create(params={"customer": customer.id})
    client.v1.invoice_items.create(
        params={"customer": customer.id, "invoice": draft.id, "amount": 100, "currency": "usd"}
    )
    deleted = client.v1.invoices.delete(draft.id)
    assert deleted.deleted is True and deleted.id == draft.id
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.invoices.retrieve(draft.id)
    assert missing.value.http_status == 404

    finalized = client.v1.invoices.finalize_invoice(
        client.v1.invoices.create(params={"customer": customer.id}).id
    )
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.delete(finalized.id)
    assert refused.value.http_status == 400
    with pytest.raises(stripe.InvalidRequestError) as not_draft:
        client.v1.invoice_items.create(
            params={"customer": customer.id, "invoice": finalized.id, "amount": 1,
                    "currency": "usd"}
        )  # fmt: skip
    assert not_draft.value.param == "invoice"


def test_invoice_validation_errors(
    stripe_sandbox: SandboxServer, stripe_client_factory: StripeClientFactory
) -> None:
    client = stripe_client_factory(ACCOUNT)
    customer = client.v1.customers.create()

    with pytest.raises(stripe.InvalidRequestError) as past_due:
        client.v1.invoices.create(
            params={"customer": customer.id, "collection_method": "send_invoice",
                    "due_date": int(time.time()) - 60}
        )  # fmt: skip
    assert past_due.value.http_status == 400 and past_due.value.param == "due_date"

    with pytest.raises(stripe.InvalidRequestError) as no_customer:
        client.v1.invoices.create(params={"customer": "cus_missing"})
    assert no_customer.value.http_status == 404 and no_customer.value.param == "customer"

    invoice = client.v1.invoices.create(params={"customer": customer.id})
    for price_params, param in (
        ({"pricing": {"price": "price_missing"}}, "pricing[price]"),
        ({"price": "price_missing"}, "price"),
    ):
        with pytest.raises(stripe.InvalidRequestError) as no_price:
            client.v1.invoice_items.create(
                params={"customer": customer.id, "invoice": invoice.id, **price_params}  # type: ignore[typeddict-item]
            )
        assert no_price.value.http_status == 404
        assert no_price.value.code == "resource_missing" and no_price.value.param == param

    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.customers.create(params={"emial": "typo@example.com"})  # type: ignore[typeddict-unknown-key]
    assert unknown.value.param == "emial"


# --- seeding, control API, CLI -----------------------------------------------------------------


def test_seeding_is_deterministic_and_realistic() -> None:
    first, second, other_seed = SandboxState(), SandboxState(), SandboxState()
    first.seed_customers(3000, seed=42, account=ACCOUNT)
    second.seed_customers(3000, seed=42, account=ACCOUNT)
    other_seed.seed_customers(3000, seed=43, account=ACCOUNT)
    customers = first.customers(ACCOUNT)

    assert customers == second.customers(ACCOUNT)
    assert [c["id"] for c in customers] != [c["id"] for c in other_seed.customers(ACCOUNT)]
    assert len({c["created"] for c in customers}) == 3000
    assert all(set(c) == CUSTOMER_FIELDS for c in customers)
    emails = [c["email"] for c in customers]
    assert any(email is None for email in emails)
    assert any(email and email != email.strip() for email in emails)
    assert any(email and email.strip() != email.strip().lower() for email in emails)
    normalized = [email.strip().lower() for email in emails if email]
    assert len(set(normalized)) < len(normalized)
    assert any(c["shipping"] for c in customers) and any(not c["address"] for c in customers)
    addresses = [c["address"] for c in customers if c["address"]]
    assert any(a["line2"] for a in addresses) and any(a["line2"] is None for a in addresses)
    assert any(a["state"] is None for a in addresses)
    assert any(c["metadata"] for c in customers) and any(c["phone"] is None for c in customers)


def test_control_client_drives_a_sandbox(stripe_sandbox: SandboxServer) -> None:
    control = SandboxControl(stripe_sandbox.url)
    control.wait_until_ready()
    ids = control.seed(5, seed=1, account=ACCOUNT)
    added = control.add_customer(ACCOUNT, email=" Raw@Example.COM ", created=1_600_000_000)
    control.configure(latency_ms=1, search_index_delay=2)
    control.inject_fault(endpoint="GET /v1/customers/*", status=500)
    assert len(control.faults()) == 1

    listed = raw_get(stripe_sandbox, "/v1/customers?limit=100", **bearer(ACCOUNT)).json()
    failed = raw_get(stripe_sandbox, f"/v1/customers/{ids[0]}", **bearer(ACCOUNT))

    assert len(listed["data"]) == 6 and added["email"] == " Raw@Example.COM "
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "api_error"
    logged = control.requests(path="/v1/customers")
    assert logged[0]["query"] == {"limit": "100"} and logged[0]["stripe_account"] == ACCOUNT
    assert control.request_counts()["GET /v1/customers"] == 1
    assert control.settings()["search_index_delay"] == 2
    assert control.accounts()[ACCOUNT]["customers"] == 6
    control.clear_requests()
    assert control.requests() == []
    control.reset()
    assert control.accounts() == {} and control.settings()["latency_ms"] == 0
    control.close()


def test_parse_form_nests_brackets_like_stripe() -> None:
    parsed = parse_form(
        "address[line1]=1+Main&metadata[0]=zero&expand[]=a&expand[]=b&lines[0][price]=p"
        "&lines[1][price]=q&created[gte]=5&email="
    )
    assert parsed == {
        "address": {"line1": "1 Main"},
        "metadata": {"0": "zero"},
        "expand": ["a", "b"],
        "lines": [{"price": "p"}, {"price": "q"}],
        "created": {"gte": "5"},
        "email": "",
    }


def test_cli_serves_the_sdk_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "stripe_crm_pipelines.sandbox", "--port", "0",
               "--seed-customers", "30", "--account", ACCOUNT]  # fmt: skip
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as cli:
        try:
            assert cli.stdout is not None
            ready = cli.stdout.readline().strip()
            assert ready.startswith("Stripe sandbox listening on http://127.0.0.1:")
            client = stripe.StripeClient(
                "sk_test_cli", stripe_account=ACCOUNT,
                base_addresses={"api": ready.rsplit(" ", 1)[1]}, max_network_retries=0,
            )  # fmt: skip
            assert len(list(client.v1.customers.list().auto_paging_iter())) == 30
            cli.send_signal(signal.SIGTERM)
            assert cli.wait(timeout=10) == 0
        finally:
            if cli.poll() is None:
                cli.kill()
