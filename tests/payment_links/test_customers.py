"""Stripe customer parameters and the CRM API token subject, built from CRM documents."""

from datetime import date

import pytest
from bson import ObjectId

from stripe_crm_pipelines.payment_links.customers import (
    contact_phone,
    customer_params,
    stripe_address,
    token_subject,
)
from stripe_crm_pipelines.payment_links.invoice import (
    LineItem,
    PaymentLinkConfigError,
    PaymentLinkRequest,
)

ACCOUNT = ObjectId("650000000000000000000001")
CONTACT = ObjectId("650000000000000000000002")
OWNER = ObjectId("650000000000000000000003")


def request(**fields) -> PaymentLinkRequest:
    return PaymentLinkRequest(
        account_id=ACCOUNT,
        contact_id=CONTACT,
        currency="usd",
        line_items=(LineItem(quantity=1, price_id="price_1"),),
        due_date=date(2030, 1, 1),
        **fields,
    )


def test_customer_params_carry_only_what_the_contact_has():
    params = customer_params({"_id": CONTACT, "email": " a@example.com "}, account_id="acc")
    assert params == {
        "email": "a@example.com",
        "metadata": {"crm_contact_id": str(CONTACT), "crm_account_id": "acc"},
    }


def test_customer_params_map_name_phone_and_address():
    contact = {
        "_id": CONTACT,
        "first_name": "Ada",
        "last_name": "Lovelace",
        "phone": ["", "+15550100"],
        "address": {
            "street": "1 Main St",
            "city": "Springfield",
            "state_province": "IL",
            "postal_code": "62701",
            "country": "US",
            "unit": "ignored",
        },
    }
    params = customer_params(contact, account_id="acc")
    assert params["name"] == "Ada Lovelace"
    assert params["phone"] == "+15550100"
    assert params["address"] == {
        "line1": "1 Main St",
        "city": "Springfield",
        "state": "IL",
        "postal_code": "62701",
        "country": "US",
    }


def test_stripe_address_reads_crm_aliases_and_skips_empty_ones():
    assert stripe_address({"street": " ", "line1": "2 Side St", "zip": "12345", "state": "NY"}) == {
        "line1": "2 Side St",
        "state": "NY",
        "postal_code": "12345",
    }
    assert stripe_address({"city": ""}) is None
    assert stripe_address("1 Main St") is None


def test_contact_phone_ignores_non_text():
    assert contact_phone({"phone": 5550100}) is None
    assert contact_phone({}) is None


def test_token_subject_defaults_to_the_contact_owner_and_account_client():
    client = ObjectId()
    subject = token_subject(request(), {"owner": OWNER}, {"client_id": client})
    assert (subject.user_id, subject.client_id) == (str(OWNER), str(client))
    assert subject.account_id == subject.parent_account == str(ACCOUNT)


def test_token_subject_prefers_the_request():
    user, client, parent = ObjectId(), ObjectId(), ObjectId()
    subject = token_subject(
        request(user_id=user, client_id=client),
        {"owner": OWNER},
        {"client_id": ObjectId(), "parent_account": parent},
    )
    assert (subject.user_id, subject.client_id) == (str(user), str(client))
    assert subject.parent_account == str(parent)


def test_token_subject_names_what_is_missing():
    with pytest.raises(PaymentLinkConfigError) as raised:
        token_subject(request(), {}, None)
    assert raised.value.fields == ["user_id", "client_id"]
    assert "API_BASE_URL" in str(raised.value)
