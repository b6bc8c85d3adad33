"""Page through a connected Stripe account's customers, one page of 100 at a time.

The import never holds more than one page: :func:`iter_customer_pages` asks Stripe for the next
page only when the caller has finished with the previous one. Each page carries the cursor
(``starting_after``) of the page after it, so a caller can checkpoint and resume mid-import.

``created[lte]`` pins the listing to the customers that existed when the import started: Stripe
lists newest first, and a customer created during the import would otherwise shift nothing but
still be a moving target for a resumed run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import stripe

PAGE_SIZE = 100


@dataclass(frozen=True)
class CustomerPage:
    """One page of customers as plain dicts, newest first."""

    number: int
    customers: list[dict[str, Any]]
    cursor: str | None
    """The last customer's id: ``starting_after`` for the page after this one."""
    has_more: bool
    """Whether Stripe holds more customers after this page (whatever ``max_customers`` says)."""


def iter_customer_pages(
    client: stripe.StripeClient,
    *,
    created_lte: int | None = None,
    starting_after: str | None = None,
    max_customers: int | None = None,
    first_page_number: int = 1,
    page_size: int = PAGE_SIZE,
) -> Iterator[CustomerPage]:
    """Yield the account's customers page by page until the last page or ``max_customers``.

    ``client`` already carries the ``Stripe-Account`` header and the retry policy (see
    :class:`stripe_crm_pipelines.resources.StripeResource`). ``starting_after`` resumes after a
    checkpointed cursor; ``max_customers`` counts from this call, so a resumed import passes what
    is left of its limit.
    """
    remaining = max_customers
    cursor = starting_after
    number = first_page_number
    while remaining is None or remaining > 0:
        params: dict[str, Any] = {
            "limit": page_size if remaining is None else min(page_size, remaining)
        }
        if cursor is not None:
            params["starting_after"] = cursor
        if created_lte is not None:
            params["created"] = {"lte": created_lte}
        listing = client.v1.customers.list(params=params)
        customers = [customer.to_dict() for customer in listing.data]
        if customers:
            cursor = customers[-1]["id"]
        has_more = bool(listing.has_more) and bool(customers)
        yield CustomerPage(number=number, customers=customers, cursor=cursor, has_more=has_more)
        if not has_more:
            return
        if remaining is not None:
            remaining -= len(customers)
        number += 1
