"""One page of customers (paging.py) against the Stripe sandbox."""

from __future__ import annotations

import pytest
import stripe

from stripe_crm_pipelines.billing_import.paging import list_customers_page, refuses_created
from tests.billing_import.conftest import (
    SNAPSHOT,
    add_customers_sharing_seconds,
    client_for,
    listing_requests,
)


def test_a_page_is_plain_customers_newest_first_within_the_created_range(stripe_sandbox):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 250, per_second=1)

    customers, has_more = list_customers_page(
        client_for(stripe_sandbox),
        created_gte=SNAPSHOT - 10_000 + 50,
        created_lte=SNAPSHOT - 10_000 + 199,
        starting_after=newest_first[60],
    )

    assert type(customers[0]) is dict
    assert [customer["id"] for customer in customers] == newest_first[61:161]
    assert has_more
    (request,) = listing_requests(stripe_sandbox)
    assert request["query"]["created"] == {
        "gte": str(SNAPSHOT - 10_000 + 50),
        "lte": str(SNAPSHOT - 10_000 + 199),
    }


def test_an_empty_page_has_no_more(stripe_sandbox):
    assert list_customers_page(client_for(stripe_sandbox), created_lte=SNAPSHOT) == ([], False)


def test_a_server_refusing_created_is_told_from_other_bad_requests(stripe_sandbox):
    newest_first = add_customers_sharing_seconds(stripe_sandbox, 5, per_second=1)
    stripe_sandbox.state.configure(reject_created=True)
    client = client_for(stripe_sandbox, max_retries=0)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        list_customers_page(client, created_lte=SNAPSHOT)
    with pytest.raises(stripe.InvalidRequestError) as unknown_cursor:
        list_customers_page(client, starting_after="cus_created_nowhere")

    assert refused.value.http_status == 400
    assert refuses_created(refused.value)
    assert not refuses_created(unknown_cursor.value)
    customers, _ = list_customers_page(client)
    assert [customer["id"] for customer in customers] == newest_first


def test_stripe_naming_the_created_parameter_is_a_refusal_too():
    assert refuses_created(stripe.InvalidRequestError("Invalid integer: x", "created[lte]"))
    assert not refuses_created(stripe.InvalidRequestError("Invalid integer: x", "limit"))
    assert not refuses_created(stripe.APIError("created is down"))
