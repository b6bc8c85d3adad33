"""Pytest fixtures for the Stripe sandbox (:mod:`stripe_crm_pipelines.sandbox`).

- ``stripe_sandbox``: a started :class:`SandboxServer` on a free port, private to the test
  (seed and configure it through ``stripe_sandbox.state``).
- ``stripe_client_factory``: ``make(account=None, *, api_key=..., timeout=None,
  max_network_retries=0)`` returns a real ``stripe.StripeClient`` talking to that sandbox.

Load with ``pytest_plugins = ["tests.sandbox_plugin"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import stripe

from stripe_crm_pipelines.sandbox import SandboxServer

SANDBOX_API_KEY = "sk_test_sandbox"

StripeClientFactory = Callable[..., stripe.StripeClient]


@pytest.fixture
def stripe_sandbox() -> Iterator[SandboxServer]:
    """A running Stripe sandbox on a free port; stopped when the test ends."""
    with SandboxServer() as sandbox:
        yield sandbox


@pytest.fixture
def stripe_client_factory(stripe_sandbox: SandboxServer) -> StripeClientFactory:
    """Makes ``stripe.StripeClient`` objects for ``stripe_sandbox``.

    ``account`` is sent as ``Stripe-Account`` (``None``: the platform account); ``timeout``
    (seconds) gives the client its own ``stripe.RequestsClient``; retries are off by default.
    """

    def make(
        account: str | None = None,
        *,
        api_key: str = SANDBOX_API_KEY,
        timeout: float | None = None,
        max_network_retries: int = 0,
    ) -> stripe.StripeClient:
        return stripe.StripeClient(
            api_key,
            stripe_account=account,
            base_addresses={"api": stripe_sandbox.url},
            max_network_retries=max_network_retries,
            http_client=stripe.RequestsClient(timeout=timeout) if timeout is not None else None,
        )

    return make
