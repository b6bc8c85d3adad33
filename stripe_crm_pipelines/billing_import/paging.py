"""One page of a connected account's Stripe customers: the request, its answer, its refusal.

Pages are read with ``raw_request`` and ``json.loads``: plain dicts, as the mapping needs them,
without the SDK's objects (about 0.4 ms a customer). It is still the SDK's requestor, with the
client's retries, ``Stripe-Account`` header and ``before_request`` hook (the rate limiter).

Stripe filters the list by ``created``; some Stripe-compatible servers do not, and refuse the
parameter (localstripe answers HTTP 400 "Unexpected created"). :func:`refuses_created` tells
such a refusal from other bad requests, so the walk can list without the filter instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

import stripe

PAGE_SIZE = 100

Customer = dict[str, Any]

_CREATED = re.compile(r"\bcreated\b")


def list_customers_page(
    client: stripe.StripeClient,
    *,
    limit: int = PAGE_SIZE,
    created_gte: int | None = None,
    created_lte: int | None = None,
    starting_after: str | None = None,
) -> tuple[list[Customer], bool]:
    """One ``GET /v1/customers``: the customers as plain dicts, newest first, and ``has_more``
    (false after an empty page, whatever the server says)."""
    params: dict[str, Any] = {"limit": limit}
    if starting_after is not None:
        params["starting_after"] = starting_after
    created: dict[str, int] = {}
    if created_gte is not None:
        created["gte"] = created_gte
    if created_lte is not None:
        created["lte"] = created_lte
    if created:
        params["created"] = created
    listing = json.loads(client.raw_request("get", "/v1/customers", **params).body)
    customers = listing["data"]
    return customers, bool(listing.get("has_more")) and bool(customers)


def refuses_created(error: BaseException) -> bool:
    """Whether ``error`` is the server refusing the ``created`` filter itself: a bad request
    whose parameter or message names ``created`` (Stripe's SDK puts the parameter in
    ``param``; localstripe only says "Unexpected created")."""
    if not isinstance(error, stripe.InvalidRequestError):
        return False
    param = getattr(error, "param", None) or ""
    return param.startswith("created") or bool(_CREATED.search(error.user_message or ""))


def refuses_cursor(error: BaseException) -> bool:
    """Whether ``error`` is the server no longer knowing the ``starting_after`` customer (deleted
    since the page it ended was listed): Stripe answers 400 ``resource_missing`` on that
    parameter."""
    if not isinstance(error, stripe.InvalidRequestError):
        return False
    return getattr(error, "param", None) == "starting_after" or (
        getattr(error, "code", None) == "resource_missing"
        and "customer" in (error.user_message or "").lower()
    )
