"""Helpers of the customer-listing tests (paging, windows, batches) against the Stripe sandbox."""

from __future__ import annotations

import stripe

from stripe_crm_pipelines.billing_import.batches import FetchSettings, customer_batches
from stripe_crm_pipelines.resources import StripeResource
from tests.conftest import CONNECTED_ACCOUNT, SECRET_KEY

SNAPSHOT = 1_750_000_000


def client_for(sandbox, **kwargs) -> stripe.StripeClient:
    resource = StripeResource(api_base=sandbox.url, initial_retry_delay_seconds=0.01, **kwargs)
    return resource.client(SECRET_KEY, CONNECTED_ACCOUNT)


def add_customers_sharing_seconds(sandbox, count: int, per_second: int) -> list[str]:
    """``count`` customers, ``per_second`` of them created in each second; newest first."""
    for index in range(count):
        sandbox.state.add_customer(
            CONNECTED_ACCOUNT,
            id=f"cus_shared{index:05d}",
            email=f"c{index}@example.com",
            created=SNAPSHOT - 10_000 + index // per_second,
        )
    return [customer["id"] for customer in sandbox.state.customers(CONNECTED_ACCOUNT)]


def list_batches(
    sandbox, settings: FetchSettings | None = None, created_lte: int | None = SNAPSHOT, **options
) -> list:
    """Every batch of a walk of the sandbox's connected account, up to the snapshot."""
    with customer_batches(
        client_for(sandbox), created_lte=created_lte, settings=settings, **options
    ) as listing:
        return list(listing)


def listed_ids(batches) -> list[str]:
    return [customer["id"] for batch in batches for customer in batch.customers]


def listing_requests(sandbox) -> list[dict]:
    return sandbox.state.requests(path="/v1/customers", method="GET")


def most_requests_at_once(sandbox) -> int:
    """The most listing requests the sandbox was answering at the same moment."""
    events = sorted(
        (entry["time"] + (entry["duration_ms"] / 1000 if end else 0), -1 if end else 1)
        for entry in listing_requests(sandbox)
        for end in (False, True)
    )
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most
