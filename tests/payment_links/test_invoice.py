"""Pure request validation and Stripe parameter building of payment links."""

from datetime import UTC, date, datetime

import pytest
from bson import ObjectId

from stripe_crm_pipelines.payment_links.invoice import (
    MAX_LINE_ITEMS,
    LineItem,
    PaymentLinkConfigError,
    contact_display_name,
    customer_search_query,
    due_date_timestamp,
    format_amount,
    idempotency_key,
    invoice_item_params,
    invoice_params,
    parse_due_date,
    validate_payment_link_request,
)

TODAY = date(2030, 6, 15)
ACCOUNT = "650000000000000000000001"
CONTACT = "650000000000000000000002"


def request_fields(**overrides):
    fields = {
        "account_id": ACCOUNT,
        "contact_id": CONTACT,
        "currency": "USD",
        "line_items": [
            {"price_id": "price_1", "quantity": 2},
            {"amount": 1999, "quantity": 3, "description": "Setup"},
        ],
        "due_date": "2030-06-30",
        "description": None,
    }
    fields.update(overrides)
    return fields


def test_valid_request_is_parsed():
    request = validate_payment_link_request(**request_fields(), today=TODAY)
    assert request.account_id == ObjectId(ACCOUNT)
    assert request.contact_id == ObjectId(CONTACT)
    assert request.currency == "usd"
    assert request.due_date == date(2030, 6, 30)
    assert request.line_items == (
        LineItem(quantity=2, price_id="price_1"),
        LineItem(quantity=3, unit_amount=1999, description="Setup"),
    )


def test_due_date_today_is_accepted():
    request = validate_payment_link_request(**request_fields(due_date="2030-06-15"), today=TODAY)
    assert request.due_date == TODAY


def test_every_bad_field_is_named_at_once():
    with pytest.raises(PaymentLinkConfigError) as raised:
        validate_payment_link_request(
            **request_fields(account_id="nope", currency="dollars", due_date="tomorrow"),
            today=TODAY,
        )
    assert raised.value.fields == ["account_id", "currency", "due_date"]
    assert "account_id:" in str(raised.value)


def test_too_many_line_items():
    items = [{"price_id": "price_1", "quantity": 1}] * (MAX_LINE_ITEMS + 1)
    with pytest.raises(PaymentLinkConfigError) as raised:
        validate_payment_link_request(**request_fields(line_items=items), today=TODAY)
    assert raised.value.fields == ["line_items"]


@pytest.mark.parametrize(
    "text", ["2030-02-30", "30-06-2030", "20300630", "2030-6-3", "", None, 20300630]
)
def test_parse_due_date_rejects_non_iso(text):
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_due_date(text)


def test_due_date_is_end_of_day_utc():
    assert due_date_timestamp(date(2030, 1, 31)) == int(
        datetime(2030, 1, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    )


def test_invoice_params():
    request = validate_payment_link_request(**request_fields(), today=TODAY)
    params = invoice_params(request, customer_id="cus_1", contact_name="Ada Lovelace")
    assert params["customer"] == "cus_1"
    assert params["collection_method"] == "send_invoice"
    assert params["auto_advance"] is False
    assert params["currency"] == "usd"
    assert params["due_date"] == due_date_timestamp(date(2030, 6, 30))
    assert params["description"] == "Invoice for Ada Lovelace — 2 items"
    assert params["metadata"] == {"crm_account_id": ACCOUNT, "crm_contact_id": CONTACT}


def test_invoice_params_use_the_requested_description():
    request = validate_payment_link_request(
        **request_fields(description="  June retainer "), today=TODAY
    )
    params = invoice_params(request, customer_id="cus_1", contact_name="Ada")
    assert params["description"] == "June retainer"


def test_item_params_for_price_and_custom_amount():
    price = invoice_item_params(
        LineItem(quantity=2, price_id="price_1"),
        invoice_id="in_1",
        customer_id="cus_1",
        currency="usd",
    )
    custom = invoice_item_params(
        LineItem(quantity=3, unit_amount=1999, description="Setup"),
        invoice_id="in_1",
        customer_id="cus_1",
        currency="usd",
    )
    assert price["invoice"] == custom["invoice"] == "in_1"
    assert price["customer"] == custom["customer"] == "cus_1"
    assert price["quantity"] == 2
    assert "currency" not in price
    assert custom["currency"] == "usd"
    assert custom["description"] == "Setup"


def test_idempotency_keys_are_per_run_and_step():
    assert idempotency_key("run-1", "item:0") == "run-1:item:0"
    assert idempotency_key("run-1", "item:0") != idempotency_key("run-2", "item:0")


@pytest.mark.parametrize(
    ("email", "phone", "query"),
    [
        ("a@example.com", "+15550100", "email:'a@example.com' OR phone:'+15550100'"),
        ("a@example.com", None, "email:'a@example.com'"),
        (None, "+15550100", "phone:'+15550100'"),
        ("o'neil@example.com", None, "email:'o\\'neil@example.com'"),
        ("a\\'@x.io' OR email:'b", None, "email:'a\\\\\\'@x.io\\' OR email:\\'b'"),
        (None, None, None),
    ],
)
def test_customer_search_query_escapes_quotes(email, phone, query):
    assert customer_search_query(email, phone) == query


def test_contact_display_name_falls_back():
    assert contact_display_name({"name": " Acme "}) == "Acme"
    assert contact_display_name({"first_name": "Ada", "last_name": "Lovelace"}) == "Ada Lovelace"
    assert contact_display_name({"email": "a@example.com"}) == "a@example.com"
    assert contact_display_name({"_id": 7}) == "contact 7"


def test_format_amount():
    assert format_amount(123456, "usd") == "1234.56 USD"
    assert format_amount(500, "jpy") == "500 JPY"
