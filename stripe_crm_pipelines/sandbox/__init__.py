"""A local, stateful Stripe API server ("the sandbox") for tests, benchmarks and local runs.

The real ``stripe`` SDK talks to it over HTTP (``base_addresses={"api": sandbox.url}``, or
``STRIPE_API_BASE`` for the project's jobs). It serves the customer, event, product, price,
invoice and invoice item endpoints the project uses, scoped by ``Stripe-Account``, with Stripe's
error bodies, idempotency keys and key checks, plus switchable latency, rate limiting and faults.
Customer writes record Stripe events, kept for 30 days of the sandbox's clock, which
``advance_clock`` moves forward.

In-process::

    with SandboxServer(latency_ms=5) as sandbox:
        sandbox.state.seed_customers(1000, seed=42, account="acct_demo")
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": sandbox.url})

As a separate process: ``python -m stripe_crm_pipelines.sandbox --port 12111``, controlled with
:class:`SandboxControl`.
"""

from stripe_crm_pipelines.sandbox.client import SandboxControl, SandboxControlError
from stripe_crm_pipelines.sandbox.controls import Fault, SandboxSettings
from stripe_crm_pipelines.sandbox.server import SandboxServer
from stripe_crm_pipelines.sandbox.state import SandboxState

__all__ = [
    "Fault",
    "SandboxControl",
    "SandboxControlError",
    "SandboxServer",
    "SandboxSettings",
    "SandboxState",
]
