"""What a payment link is made of: the validated request and the Stripe parameters built from it.

Pure functions only (no Dagster, no network): config validation, due-date handling, invoice and
invoice-item parameters, idempotency keys and the Stripe customer search query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import pycountry
from bson import ObjectId

MAX_LINE_ITEMS = 250
_OBJECT_ID = re.compile(r"^[0-9a-fA-F]{24}$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_END_OF_DAY = time(23, 59, 59)


class PaymentLinkConfigError(ValueError):
    """The payment-link request is invalid; ``problems`` lists ``(field, message)`` pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__(
            "Invalid payment link config: "
            + "; ".join(f"{field}: {message}" for field, message in self.problems)
        )

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.problems]


@dataclass(frozen=True)
class LineItem:
    """One invoice line: a saved Stripe price, or a custom unit amount with a description."""

    quantity: int
    price_id: str | None = None
    unit_amount: int | None = None
    description: str | None = None

    @property
    def is_custom(self) -> bool:
        return self.unit_amount is not None


@dataclass(frozen=True)
class PaymentLinkRequest:
    """A validated request: ids parsed, currency lower-cased, due date a ``date``."""

    account_id: ObjectId
    contact_id: ObjectId
    currency: str
    line_items: tuple[LineItem, ...]
    due_date: date
    description: str | None = None
    user_id: ObjectId | None = None
    client_id: ObjectId | None = None


def validate_payment_link_request(
    *,
    account_id: Any,
    contact_id: Any,
    currency: Any,
    line_items: Sequence[Mapping[str, Any]] | None,
    due_date: Any,
    description: Any = None,
    user_id: Any = None,
    client_id: Any = None,
    today: date,
) -> PaymentLinkRequest:
    """Check every field and return the parsed request; raise one error naming each bad field."""
    problems: list[tuple[str, str]] = []
    parsed_account = _object_id("account_id", account_id, problems)
    parsed_contact = _object_id("contact_id", contact_id, problems)
    parsed_currency = _currency(currency, problems)
    parsed_items = _line_items(line_items, problems)
    parsed_due = _due_date(due_date, today, problems)
    parsed_description = _optional_text("description", description, problems)
    parsed_user = None if user_id is None else _object_id("user_id", user_id, problems)
    parsed_client = None if client_id is None else _object_id("client_id", client_id, problems)
    if problems:
        raise PaymentLinkConfigError(problems)
    return PaymentLinkRequest(
        account_id=parsed_account,
        contact_id=parsed_contact,
        currency=parsed_currency,
        line_items=parsed_items,
        due_date=parsed_due,
        description=parsed_description,
        user_id=parsed_user,
        client_id=parsed_client,
    )


def _object_id(field: str, value: Any, problems: list[tuple[str, str]]) -> ObjectId:
    if isinstance(value, str) and _OBJECT_ID.match(value.strip()):
        return ObjectId(value.strip())
    problems.append((field, f"must be a 24-character hex ObjectId, got {value!r}"))
    return ObjectId()


def _currency(value: Any, problems: list[tuple[str, str]]) -> str:
    if (
        isinstance(value, str)
        and _CURRENCY.match(value.strip())
        and pycountry.currencies.get(alpha_3=value.strip().upper()) is not None
    ):
        return value.strip().lower()
    problems.append(("currency", f"must be a 3-letter ISO 4217 code such as 'usd', got {value!r}"))
    return ""


def _line_items(
    values: Sequence[Mapping[str, Any]] | None, problems: list[tuple[str, str]]
) -> tuple[LineItem, ...]:
    if not values:
        problems.append(("line_items", "at least one line item is required"))
        return ()
    if len(values) > MAX_LINE_ITEMS:
        problems.append(("line_items", f"at most {MAX_LINE_ITEMS} line items, got {len(values)}"))
        return ()
    return tuple(_line_item(f"line_items[{i}]", value, problems) for i, value in enumerate(values))


def _line_item(field: str, value: Mapping[str, Any], problems: list[tuple[str, str]]) -> LineItem:
    price_id = value.get("price_id")
    amount = value.get("amount")
    quantity = value.get("quantity", 1)
    description = _optional_text(f"{field}.description", value.get("description"), problems)
    if isinstance(price_id, str):
        price_id = price_id.strip() or None
    if (price_id is None) == (amount is None):
        problems.append((field, "give exactly one of price_id or amount"))
    if price_id is not None and (not isinstance(price_id, str) or re.search(r"\s", price_id)):
        problems.append((f"{field}.price_id", f"must be a Stripe price id, got {price_id!r}"))
    if amount is not None and (not _is_int(amount) or amount <= 0):
        problems.append(
            (
                f"{field}.amount",
                f"must be a positive integer in the currency's minor unit, got {amount!r}",
            )
        )
    if not _is_int(quantity) or quantity < 1:
        problems.append(
            (f"{field}.quantity", f"must be an integer of at least 1, got {quantity!r}")
        )
    if amount is not None and description is None:
        problems.append((f"{field}.description", "is required for a custom amount"))
    return LineItem(
        quantity=quantity if _is_int(quantity) else 1,
        price_id=price_id if price_id is not None and amount is None else None,
        unit_amount=amount if amount is not None and price_id is None else None,
        description=description,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_text(field: str, value: Any, problems: list[tuple[str, str]]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append((field, f"must be text, got {value!r}"))
        return None
    return value.strip() or None


def _due_date(value: Any, today: date, problems: list[tuple[str, str]]) -> date:
    try:
        parsed = parse_due_date(value)
    except ValueError as error:
        problems.append(("due_date", str(error)))
        return today
    if parsed < today:
        problems.append(("due_date", f"{parsed.isoformat()} is in the past (today is {today} UTC)"))
    return parsed


def parse_due_date(value: Any) -> date:
    """Parse an ISO ``YYYY-MM-DD`` date; anything else raises ``ValueError``."""
    if isinstance(value, str) and _ISO_DATE.match(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"must be an ISO date YYYY-MM-DD, got {value!r}")


def due_date_timestamp(due: date) -> int:
    """The last second of ``due`` in UTC, as the unix timestamp Stripe's ``due_date`` takes."""
    return int(datetime.combine(due, _END_OF_DAY, tzinfo=UTC).timestamp())


def utc_today(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(UTC).date()


def contact_name(contact: Mapping[str, Any]) -> str | None:
    """The contact's ``name``, else its first and last name; ``None`` when it has neither."""
    name = _text(contact.get("name"))
    if name:
        return name
    parts = (_text(contact.get("first_name")), _text(contact.get("last_name")))
    return " ".join(part for part in parts if part) or None


def contact_display_name(contact: Mapping[str, Any]) -> str:
    """The contact as a person reads it: its name, else its email, else its id."""
    return contact_name(contact) or _text(contact.get("email")) or f"contact {contact.get('_id')}"


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def invoice_description(request: PaymentLinkRequest, contact_name: str) -> str:
    """The request's description, else ``Invoice for <name> — <n> items``."""
    if request.description:
        return request.description
    count = len(request.line_items)
    return f"Invoice for {contact_name} — {count} item{'' if count == 1 else 's'}"


def invoice_params(request: PaymentLinkRequest, *, customer_id: str, contact_name: str) -> dict:
    """Parameters of the draft invoice: sent by the CRM later, so no automatic advancing."""
    return {
        "customer": customer_id,
        "collection_method": "send_invoice",
        "auto_advance": False,
        "currency": request.currency,
        "due_date": due_date_timestamp(request.due_date),
        "description": invoice_description(request, contact_name),
        "pending_invoice_items_behavior": "exclude",
        "metadata": {
            "crm_account_id": str(request.account_id),
            "crm_contact_id": str(request.contact_id),
        },
    }


def invoice_item_params(
    item: LineItem, *, invoice_id: str, customer_id: str, currency: str
) -> dict:
    """Parameters of one invoice item attached to ``invoice_id``."""
    params: dict[str, Any] = {
        "customer": customer_id,
        "invoice": invoice_id,
        "quantity": item.quantity,
    }
    if item.is_custom:
        params["currency"] = currency
        params["unit_amount_decimal"] = str(item.unit_amount)
    else:
        params["pricing"] = {"price": item.price_id}
    if item.description:
        params["description"] = item.description
    return params


def idempotency_key(run_id: str, step: str) -> str:
    """The key of one Stripe write of a run: the same run retrying a step sends the same key."""
    return f"{run_id}:{step}"


def customer_search_query(email: str | None, phone: str | None) -> str | None:
    """A Stripe search query matching the email or the phone; ``None`` when there is neither."""
    clauses = [
        f"{field}:'{_escape_search_value(value)}'"
        for field, value in (("email", email), ("phone", phone))
        if value
    ]
    return " OR ".join(clauses) or None


def _escape_search_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


@dataclass(frozen=True)
class IssuedInvoice:
    """The finalised invoice a payment link points at."""

    invoice_id: str
    number: str | None
    hosted_invoice_url: str
    amount_due: int
    currency: str
    status: str


def payment_link_document(
    request: PaymentLinkRequest,
    invoice: IssuedInvoice,
    *,
    customer_id: str,
    short_url: str,
    run_id: str,
    created_at: datetime,
) -> dict[str, Any]:
    """The ``payment_links`` document of an issued invoice."""
    return {
        "account_id": request.account_id,
        "contact_id": request.contact_id,
        "stripe_customer_id": customer_id,
        "invoice_id": invoice.invoice_id,
        "invoice_number": invoice.number,
        "hosted_invoice_url": invoice.hosted_invoice_url,
        "short_url": short_url,
        "amount_due": invoice.amount_due,
        "currency": invoice.currency,
        "due_date": request.due_date.isoformat(),
        "created_at": created_at,
        "run_id": run_id,
    }


def format_amount(amount: int, currency: str) -> str:
    """``1234, 'usd'`` → ``'12.34 USD'``; zero-decimal currencies are shown without decimals."""
    if currency.lower() in ZERO_DECIMAL_CURRENCIES:
        return f"{amount} {currency.upper()}"
    return f"{amount / 100:.2f} {currency.upper()}"


# Stripe's zero-decimal currencies: amounts are whole units, not hundredths.
ZERO_DECIMAL_CURRENCIES = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv"}
    | {"xaf", "xof", "xpf"}
)
