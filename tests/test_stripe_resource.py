"""StripeResource clients against the sandbox: account header, base URL, retries, backoff."""

from __future__ import annotations

import time

import pytest
import stripe

from stripe_crm_pipelines.resources.stripe import (
    RequestStats,
    RetryingRequestsClient,
    StripeResource,
    redact_api_keys,
    stripe_error_message,
)

KEY = "sk_test_resource"
ACCOUNT = "acct_1Resource"


@pytest.fixture
def resource(stripe_sandbox) -> StripeResource:
    return StripeResource(api_base=stripe_sandbox.url, initial_retry_delay_seconds=0.01)


def test_client_sends_the_connected_account_on_every_call(stripe_sandbox, resource):
    stripe_sandbox.state.seed_customers(3, account=ACCOUNT)
    client = resource.client(KEY, ACCOUNT)
    assert len(client.v1.customers.list().data) == 3
    client.v1.customers.create(params={"email": "new@example.com"})
    assert {entry["stripe_account"] for entry in stripe_sandbox.state.requests()} == {ACCOUNT}


def test_api_base_defaults_to_stripe():
    assert StripeResource().resolved_api_base() == "https://api.stripe.com"
    assert (
        StripeResource(api_base="http://127.0.0.1:9/").resolved_api_base() == "http://127.0.0.1:9"
    )


def test_429_is_retried_after_retry_after(stripe_sandbox, resource):
    stripe_sandbox.state.inject_fault(endpoint="GET /v1/customers", status=429, retry_after=1)
    stats = RequestStats()
    started = time.monotonic()
    resource.client(KEY, ACCOUNT, stats=stats).v1.customers.list()
    assert time.monotonic() - started >= 1.0
    assert (stats.requests, stats.retries, stats.throttled) == (2, 1, 1)
    assert [e["status"] for e in stripe_sandbox.state.requests()] == [429, 200]


@pytest.mark.parametrize("status", [409, 500, 503])
def test_conflicts_and_server_errors_are_retried(stripe_sandbox, resource, status):
    stripe_sandbox.state.inject_fault(endpoint="GET /v1/customers", status=status, count=2)
    resource.client(KEY, ACCOUNT).v1.customers.list()
    assert [e["status"] for e in stripe_sandbox.state.requests()] == [status, status, 200]


def test_connection_resets_are_retried(stripe_sandbox, resource):
    stripe_sandbox.state.inject_fault(endpoint="GET /v1/customers", kind="reset")
    resource.client(KEY, ACCOUNT).v1.customers.list()
    assert stripe_sandbox.state.request_counts()["GET /v1/customers"] == 2


def test_client_errors_are_not_retried(stripe_sandbox, resource):
    stripe_sandbox.state.inject_fault(endpoint="GET /v1/customers", status=400)
    with pytest.raises(stripe.InvalidRequestError):
        resource.client(KEY, ACCOUNT).v1.customers.list()
    assert len(stripe_sandbox.state.requests()) == 1


def test_retries_give_up_after_max_retries(stripe_sandbox):
    stripe_sandbox.state.inject_fault(endpoint="GET /v1/customers", status=500, count=None)
    resource = StripeResource(
        api_base=stripe_sandbox.url, max_retries=2, initial_retry_delay_seconds=0.01
    )
    with pytest.raises(stripe.APIError) as raised:
        resource.client(KEY, ACCOUNT).v1.customers.list()
    assert len(stripe_sandbox.state.requests()) == 3
    assert "HTTP 500" in stripe_error_message(raised.value)


def test_a_retried_write_reuses_its_idempotency_key_and_applies_once(stripe_sandbox, resource):
    stripe_sandbox.state.inject_fault(
        endpoint="POST /v1/customers", kind="reset", after_effect=True
    )
    customer = resource.client(KEY, ACCOUNT).v1.customers.create(params={"email": "once@x.io"})
    posts = stripe_sandbox.state.requests(path="/v1/customers", method="POST")
    assert len(posts) == 2
    assert posts[0]["idempotency_key"] == posts[1]["idempotency_key"]
    assert [c["id"] for c in stripe_sandbox.state.customers(ACCOUNT)] == [customer.id]


def test_backoff_grows_exponentially_and_honours_retry_after():
    client = RetryingRequestsClient(timeout=1, max_retries=5, initial_delay=1.0, max_delay=8.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)]:
        delay = client.backoff_seconds(attempt, None)
        assert ceiling / 2 <= delay <= ceiling
    assert client.backoff_seconds(1, 30.0) == 30.0
    assert client.backoff_seconds(1, 3600.0) == 60.0


def test_bad_key_surfaces_as_authentication_error_without_the_key(stripe_sandbox, resource):
    with pytest.raises(stripe.AuthenticationError) as raised:
        resource.client("sk_live_not_allowed_here", ACCOUNT).v1.customers.list()
    assert "sk_live_not_allowed_here" not in stripe_error_message(raised.value)


def test_error_messages_never_carry_a_key():
    live_key = "sk_" + "live_abcDEF123_x"  # no key-shaped literal in the repository
    text = f"Invalid API Key provided: {live_key} and rk_test_zzz; pk_test_ok stays"
    assert redact_api_keys(text) == (
        "Invalid API Key provided: sk_live_**** and rk_test_****; pk_test_ok stays"
    )
