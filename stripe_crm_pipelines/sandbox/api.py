"""The Stripe API endpoints the sandbox serves: customers, events, products, prices, invoices
and invoice items, each account's data kept apart."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from stripe_crm_pipelines.sandbox.data import (
    Address,
    CustomerGenerator,
    CustomerRecord,
    Shipping,
    new_id,
)
from stripe_crm_pipelines.sandbox.errors import StripeApiError, invalid, missing_param, no_such
from stripe_crm_pipelines.sandbox.events import (
    expire_events,
    previous_attributes,
    record_event,
    type_filter,
)
from stripe_crm_pipelines.sandbox.search import parse_customer_query
from stripe_crm_pipelines.sandbox.store import AccountData
from stripe_crm_pipelines.sandbox.wire import Params

PLATFORM_LABEL = "platform"
MAX_DUE_DATE_SECONDS = 5 * 365 * 24 * 3600
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CURRENCY = re.compile(r"^[a-z]{3}$")
_ADDRESS_FIELDS = ("line1", "line2", "city", "state", "postal_code", "country")
_CUSTOMER_FIELDS = (
    "address", "description", "email", "metadata", "name", "phone", "preferred_locales",
    "shipping",
)  # fmt: skip
JsonObject = dict[str, Any]


@dataclass(frozen=True)
class RequestContext:
    """What an endpoint needs besides its parameters."""

    account: str | None  # the Stripe-Account header; None is the platform account
    now: float  # request time, epoch seconds
    base_url: str  # how the client reached the server, e.g. http://127.0.0.1:12111
    search_index_delay: float  # seconds before a new customer shows up in search results
    request_id: str | None = None  # the Request-Id the response carries
    idempotency_key: str | None = None


class StripeApi:
    """Stripe's endpoints over every account's data.

    Not thread-safe: the server serialises calls with a lock.
    """

    def __init__(self) -> None:
        self.accounts: dict[str | None, AccountData] = {}
        self._seq = itertools.count(1)
        self._ids = random.Random()

    def account(self, account_id: str | None) -> AccountData:
        """The data of an account (``None``: the platform), created on first use."""
        data = self.accounts.get(account_id)
        if data is None:
            data = self.accounts[account_id] = AccountData()
        return data

    def handle(
        self, method: str, path: str, params: Mapping[str, Any], context: RequestContext
    ) -> JsonObject:
        """Run the endpoint for ``method path`` and return its JSON body.

        Raises :class:`StripeApiError` for anything Stripe would refuse.
        """
        for route_method, pattern, endpoint in _ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                account = self.account(context.account)
                return endpoint(self, account, Params(params), context, *match.groups())
        raise StripeApiError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    # --- direct access for seeding and tests -------------------------------------------------

    def seed_customers(self, count: int, seed: int, account: str | None) -> list[str]:
        """Add ``count`` generated customers (see :class:`CustomerGenerator`) to ``account``;
        returns their ids, oldest first. Seeding again with the same seed replaces them.

        Records no events: seeded customers stand for the account's existing history (their
        ``created`` lies before 2026), and seeding 100,000 of them stays a matter of seconds."""
        customers = CustomerGenerator(seed, account).generate(count)
        for customer in customers:
            customer.seq = next(self._seq)
        self.account(account).customers.add_many([((c.created, c.seq, c.id), c) for c in customers])
        return [customer.id for customer in customers]

    def add_customer(
        self, account: str | None, fields: Mapping[str, Any], now: float
    ) -> JsonObject:
        """Store a customer with exactly the given fields (no validation of emails etc.) and
        record its ``customer.created`` event at ``now`` (``customer.updated`` if it replaces a
        customer with the same id).

        ``fields`` may hold ``id`` and ``created`` (default: ``now``) besides the customer
        fields; ``address`` and ``shipping`` are Stripe-shaped dicts. Unknown fields raise
        ``ValueError``.
        """
        values = dict(fields)
        address = values.pop("address", None)
        shipping = values.pop("shipping", None)
        customer = CustomerRecord(
            id=values.pop("id", None) or self._new_id("cus"),
            created=int(values.pop("created", now)),
            address=Address(**address) if address else None,
            shipping=_shipping_from_dict(shipping) if shipping else None,
            invoice_prefix=values.pop("invoice_prefix", None) or self._invoice_prefix(),
            preferred_locales=tuple(values.pop("preferred_locales", ())),
            seq=next(self._seq),
        )
        settable = {f.name for f in dataclasses.fields(CustomerRecord)} - {"seq", "indexed_from"}
        for name, value in values.items():
            if name not in settable:
                raise ValueError(f"unknown customer field: {name}")
            setattr(customer, name, value)
        data = self.account(account)
        replaced = data.customers.get(customer.id)
        data.customers.add(customer.id, customer.created, customer.seq, customer)
        data.deleted_customers.discard(customer.id)
        snapshot = customer.to_api()
        if replaced is None:
            self._record(data, account, now, "customer.created", snapshot)
        else:
            changed = previous_attributes(replaced.to_api(), snapshot)
            self._record(data, account, now, "customer.updated", snapshot, previous=changed)
        return customer.to_api()

    def hosted_invoice(self, account_label: str, invoice_id: str) -> JsonObject | None:
        """The finalised invoice behind a hosted invoice URL, or ``None``."""
        account = self.accounts.get(None if account_label == PLATFORM_LABEL else account_label)
        invoice = account.invoices.get(invoice_id) if account else None
        return invoice if invoice and invoice["status"] != "draft" else None

    # --- helpers -------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return new_id(prefix, self._ids, 24 if prefix in ("price", "il", "evt") else 14)

    def _record(
        self,
        data: AccountData,
        account: str | None,
        now: float,
        event_type: str,
        obj: JsonObject,
        *,
        previous: JsonObject | None = None,
        context: RequestContext | None = None,
    ) -> None:
        """Record an event about ``obj`` (a snapshot, not a live object) in ``account``'s log;
        ``context`` is the API request that caused it, if any."""
        record_event(
            data.events,
            event_id=self._new_id("evt"),
            seq=next(self._seq),
            event_type=event_type,
            obj=obj,
            now=now,
            account=account,
            previous_attributes=previous,
            request=(context.request_id, context.idempotency_key) if context else (None, None),
        )

    def _record_write(
        self,
        data: AccountData,
        context: RequestContext,
        event_type: str,
        obj: JsonObject,
        previous: JsonObject | None = None,
    ) -> None:
        """Record the event of a write made through the API."""
        self._record(
            data, context.account, context.now, event_type, obj, previous=previous, context=context
        )

    def _invoice_prefix(self) -> str:
        return self._ids.randbytes(4).hex().upper()

    def _customer(self, account: AccountData, customer_id: str, param: str) -> CustomerRecord:
        customer = account.customers.get(customer_id)
        if customer is None:
            raise no_such("customer", customer_id, param)
        return customer

    # --- customers -----------------------------------------------------------------------------

    def list_customers(self, account: AccountData, p: Params, _: RequestContext) -> JsonObject:
        p.allow("created", "email", "ending_before", "limit", "starting_after", "test_clock")
        email = p.text("email")
        gte, lte = _created_range(p)
        customers, has_more = account.customers.page(
            _limit(p),
            starting_after=p.text("starting_after"),
            ending_before=p.text("ending_before"),
            created_gte=gte,
            created_lte=lte,
            match=None if email is None else (lambda customer: customer.email == email),
        )
        return _list([c.to_api() for c in customers], has_more, "/v1/customers")

    def search_customers(
        self, account: AccountData, p: Params, context: RequestContext
    ) -> JsonObject:
        p.allow("limit", "page", "query")
        matches = parse_customer_query(p.required_text("query"))
        limit = _limit(p)
        before = _decode_page(p.text("page"))
        found: list[CustomerRecord] = []
        for customer in account.customers.newest_first(before):
            if customer.indexed_from + context.search_index_delay <= context.now and matches(
                customer
            ):
                found.append(customer)
                if len(found) > limit:
                    break
        has_more = len(found) > limit
        found = found[:limit]
        return {
            "object": "search_result",
            "data": [customer.to_api() for customer in found],
            "has_more": has_more,
            "next_page": f"{found[-1].created}.{found[-1].seq}" if has_more else None,
            "url": "/v1/customers/search",
        }

    def create_customer(
        self, account: AccountData, p: Params, context: RequestContext
    ) -> JsonObject:
        p.allow(*_CUSTOMER_FIELDS, "invoice_prefix")
        customer = CustomerRecord(
            id=self._new_id("cus"),
            created=int(context.now),
            invoice_prefix=p.text("invoice_prefix") or self._invoice_prefix(),
            seq=next(self._seq),
            indexed_from=context.now,
        )
        _apply_customer_params(customer, p)
        account.customers.add(customer.id, customer.created, customer.seq, customer)
        self._record_write(account, context, "customer.created", customer.to_api())
        return customer.to_api()

    def retrieve_customer(
        self, account: AccountData, p: Params, _: RequestContext, customer_id: str
    ) -> JsonObject:
        p.allow()
        if customer_id in account.deleted_customers:
            return {"id": customer_id, "object": "customer", "deleted": True}
        return self._customer(account, customer_id, "id").to_api()

    def update_customer(
        self, account: AccountData, p: Params, context: RequestContext, customer_id: str
    ) -> JsonObject:
        """Apply the request to a copy of the customer, so a refused request changes nothing;
        a change is recorded as ``customer.updated``, a request changing nothing records none."""
        p.allow(*_CUSTOMER_FIELDS)
        current = self._customer(account, customer_id, "id")
        customer = dataclasses.replace(current, metadata=dict(current.metadata))
        _apply_customer_params(customer, p)
        account.customers.replace(customer_id, customer)
        before, after = current.to_api(), customer.to_api()
        changed = previous_attributes(before, after)
        if changed:
            self._record_write(account, context, "customer.updated", after, changed)
        return customer.to_api()

    def delete_customer(
        self, account: AccountData, p: Params, context: RequestContext, customer_id: str
    ) -> JsonObject:
        p.allow()
        customer = self._customer(account, customer_id, "id")
        account.customers.remove(customer_id)
        account.deleted_customers.add(customer_id)
        self._record_write(account, context, "customer.deleted", customer.to_api())
        return {"id": customer_id, "object": "customer", "deleted": True}

    # --- events --------------------------------------------------------------------------------

    def list_events(self, account: AccountData, p: Params, context: RequestContext) -> JsonObject:
        p.allow("created", "ending_before", "limit", "starting_after", "type", "types")
        expire_events(account.events, context.now)
        gte, lte = _created_range(p)
        events, has_more = account.events.page(
            _limit(p),
            starting_after=p.text("starting_after"),
            ending_before=p.text("ending_before"),
            created_gte=gte,
            created_lte=lte,
            match=type_filter(p),
        )
        return _list(events, has_more, "/v1/events")

    def retrieve_event(
        self, account: AccountData, p: Params, context: RequestContext, event_id: str
    ) -> JsonObject:
        p.allow()
        expire_events(account.events, context.now)
        event = account.events.get(event_id)
        if event is None:
            raise no_such("event", event_id)
        return event

    # --- products and prices -------------------------------------------------------------------

    def create_product(
        self, account: AccountData, p: Params, context: RequestContext
    ) -> JsonObject:
        p.allow("active", "description", "metadata", "name")
        return self._add_product(account, p, context)

    def _add_product(self, account: AccountData, p: Params, context: RequestContext) -> JsonObject:
        now = int(context.now)
        product = {
            "id": self._new_id("prod"),
            "object": "product",
            "active": p.boolean("active") is not False,
            "created": now,
            "default_price": None,
            "description": p.text("description"),
            "images": [],
            "livemode": False,
            "marketing_features": [],
            "metadata": p.metadata(),
            "name": p.required_text("name"),
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "unit_label": None,
            "updated": now,
            "url": None,
        }
        account.products.add(product["id"], now, next(self._seq), product)
        return product

    def retrieve_product(
        self, account: AccountData, p: Params, _: RequestContext, product_id: str
    ) -> JsonObject:
        p.allow()
        product = account.products.get(product_id)
        if product is None:
            raise no_such("product", product_id)
        return product

    def create_price(self, account: AccountData, p: Params, context: RequestContext) -> JsonObject:
        p.allow(
            "active", "currency", "lookup_key", "metadata", "nickname", "product",
            "product_data", "tax_behavior", "unit_amount", "unit_amount_decimal",
        )  # fmt: skip
        currency = _required_currency(p)
        unit_amount, unit_amount_decimal = _unit_amount(p)
        product_data = p.hash("product_data")
        if product_data is not None:
            product_data.allow("active", "metadata", "name")
            product_id = self._add_product(account, product_data, context)["id"]
        else:
            product_id = p.required_text("product")
            if account.products.get(product_id) is None:
                raise no_such("product", product_id, "product")
        now = int(context.now)
        price = {
            "id": self._new_id("price"),
            "object": "price",
            "active": p.boolean("active") is not False,
            "billing_scheme": "per_unit",
            "created": now,
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": p.text("lookup_key"),
            "metadata": p.metadata(),
            "nickname": p.text("nickname"),
            "product": product_id,
            "recurring": None,
            "tax_behavior": p.choice("tax_behavior", ("exclusive", "inclusive", "unspecified"))
            or "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount_decimal,
        }
        account.prices.add(price["id"], now, next(self._seq), price)
        return price

    def retrieve_price(
        self, account: AccountData, p: Params, _: RequestContext, price_id: str
    ) -> JsonObject:
        p.allow()
        price = account.prices.get(price_id)
        if price is None:
            raise no_such("price", price_id)
        return price

    # --- invoices ------------------------------------------------------------------------------

    def create_invoice(
        self, account: AccountData, p: Params, context: RequestContext
    ) -> JsonObject:
        p.allow(
            "auto_advance", "collection_method", "currency", "customer", "days_until_due",
            "description", "due_date", "footer", "metadata", "pending_invoice_items_behavior",
        )  # fmt: skip
        customer = self._customer(account, p.required_text("customer"), "customer")
        now = int(context.now)
        collection_method = (
            p.choice("collection_method", ("charge_automatically", "send_invoice"))
            or "charge_automatically"
        )
        due_date = _due_date(p, collection_method, now)
        invoice_id = self._new_id("in")
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "account_country": "US",
            "account_name": f"Sandbox {context.account or PLATFORM_LABEL}",
            "amount_due": 0,
            "amount_overpaid": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": bool(p.boolean("auto_advance")),
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_reason": "manual",
            "collection_method": collection_method,
            "created": now,
            "currency": _currency(p) or customer.currency or "usd",
            "custom_fields": None,
            "customer": customer.id,
            "customer_address": None,
            "customer_email": None,
            "customer_name": None,
            "customer_phone": None,
            "customer_shipping": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_tax_rates": [],
            "description": p.text("description"),
            "discounts": [],
            "due_date": due_date,
            "effective_at": None,
            "ending_balance": None,
            "footer": p.text("footer"),
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "lines": {
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            "livemode": False,
            "metadata": p.metadata(),
            "next_payment_attempt": None,
            "number": None,
            "on_behalf_of": None,
            "parent": None,
            "period_end": now,
            "period_start": now,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": 0,
            "statement_descriptor": None,
            "status": "draft",
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": 0,
            "subtotal_excluding_tax": 0,
            "test_clock": None,
            "total": 0,
            "total_discount_amounts": [],
            "total_excluding_tax": 0,
            "total_taxes": [],
            "webhooks_delivered_at": None,
        }
        _snapshot_customer(invoice, customer)
        account.invoices.add(invoice_id, now, next(self._seq), invoice)
        behavior = p.choice("pending_invoice_items_behavior", ("exclude", "include"))
        if behavior == "include":
            for item in account.invoice_items.objects.values():
                if item["invoice"] is None and item["customer"] == customer.id:
                    self._attach_item(invoice, item)
        return invoice

    def list_invoices(self, account: AccountData, p: Params, _: RequestContext) -> JsonObject:
        p.allow(
            "collection_method", "created", "customer", "ending_before", "limit",
            "starting_after", "status",
        )  # fmt: skip
        customer_id = p.text("customer")
        status = p.choice("status", ("draft", "open", "paid", "uncollectible", "void"))
        collection_method = p.choice("collection_method", ("charge_automatically", "send_invoice"))
        gte, lte = _created_range(p)

        def match(invoice: JsonObject) -> bool:
            return (
                (customer_id is None or invoice["customer"] == customer_id)
                and (status is None or invoice["status"] == status)
                and (collection_method is None or invoice["collection_method"] == collection_method)
            )

        invoices, has_more = account.invoices.page(
            _limit(p),
            starting_after=p.text("starting_after"),
            ending_before=p.text("ending_before"),
            created_gte=gte,
            created_lte=lte,
            match=match,
        )
        return _list(invoices, has_more, "/v1/invoices")

    def retrieve_invoice(
        self, account: AccountData, p: Params, _: RequestContext, invoice_id: str
    ) -> JsonObject:
        p.allow()
        return _invoice(account, invoice_id, "id")

    def finalize_invoice(
        self, account: AccountData, p: Params, context: RequestContext, invoice_id: str
    ) -> JsonObject:
        p.allow("auto_advance")
        invoice = _invoice(account, invoice_id, "id")
        if invoice["status"] != "draft":
            raise invalid(
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_unexpected_state",
            )
        auto_advance = p.boolean("auto_advance")
        if auto_advance is not None:
            invoice["auto_advance"] = auto_advance
        now = int(context.now)
        customer = account.customers.get(invoice["customer"])
        if customer is not None:
            _snapshot_customer(invoice, customer)
            invoice["number"] = f"{customer.invoice_prefix}-{customer.next_invoice_sequence:04d}"
            customer.next_invoice_sequence += 1
        else:
            invoice["number"] = f"{invoice_id[-8:].upper()}-0001"
        account_label = context.account or PLATFORM_LABEL
        invoice["hosted_invoice_url"] = f"{context.base_url}/i/{account_label}/{invoice_id}"
        invoice["invoice_pdf"] = f"{invoice['hosted_invoice_url']}/pdf"
        invoice["effective_at"] = now
        invoice["ending_balance"] = 0
        invoice["status_transitions"]["finalized_at"] = now
        if invoice["amount_due"] == 0:
            invoice["status"] = "paid"
            invoice["status_transitions"]["paid_at"] = now
        else:
            invoice["status"] = "open"
        return invoice

    def delete_invoice(
        self, account: AccountData, p: Params, _: RequestContext, invoice_id: str
    ) -> JsonObject:
        p.allow()
        invoice = _invoice(account, invoice_id, "id")
        if invoice["status"] != "draft":
            raise invalid("You can only delete draft invoices.", code="invoice_not_editable")
        account.invoices.remove(invoice_id)
        for line in invoice["lines"]["data"]:
            account.invoice_items.remove(line["parent"]["invoice_item_details"]["invoice_item"])
        return {"id": invoice_id, "object": "invoice", "deleted": True}

    # --- invoice items -------------------------------------------------------------------------

    def create_invoice_item(
        self, account: AccountData, p: Params, context: RequestContext
    ) -> JsonObject:
        p.allow(
            "amount", "currency", "customer", "description", "discountable", "invoice",
            "metadata", "period", "price", "price_data", "pricing", "quantity", "unit_amount",
            "unit_amount_decimal",
        )  # fmt: skip
        customer = self._customer(account, p.required_text("customer"), "customer")
        invoice = None
        invoice_id = p.text("invoice")
        if invoice_id is not None:
            invoice = _invoice(account, invoice_id, "invoice")
            if invoice["status"] != "draft":
                raise invalid(
                    f"You can only add invoice items to draft invoices; {invoice_id} is "
                    f"{invoice['status']}.",
                    "invoice",
                    "invoice_not_editable",
                )
            if invoice["customer"] != customer.id:
                raise invalid(
                    f"The invoice {invoice_id} belongs to customer {invoice['customer']}, "
                    f"not {customer.id}.",
                    "invoice",
                )
        quantity = p.integer("quantity", minimum=0)
        price, unit_amount_decimal, amount, currency = self._item_pricing(
            account, p, quantity, context
        )
        if invoice is not None and currency != invoice["currency"]:
            raise invalid(
                f"The currency of the invoice item ({currency}) must match the currency of the "
                f"invoice ({invoice['currency']}).",
                "currency",
            )
        now = int(context.now)
        product = account.products.get(price["product"]) if price else None
        item = {
            "id": self._new_id("ii"),
            "object": "invoiceitem",
            "amount": amount,
            "currency": currency,
            "customer": customer.id,
            "date": now,
            "description": p.text("description") or (product["name"] if product else None),
            "discountable": p.boolean("discountable") is not False,
            "discounts": [],
            "invoice": invoice["id"] if invoice else None,
            "livemode": False,
            "metadata": p.metadata(),
            "parent": None,
            "period": {"end": now, "start": now},
            "pricing": {
                "price_details": {"price": price["id"], "product": price["product"]}
                if price
                else None,
                "type": "price_details" if price else None,
                "unit_amount_decimal": unit_amount_decimal,
            },
            "proration": False,
            "quantity": quantity if quantity is not None else 1,
            "tax_rates": [],
            "test_clock": None,
        }
        account.invoice_items.add(item["id"], now, next(self._seq), item)
        if invoice is not None:
            self._attach_item(invoice, item)
        return item

    def retrieve_invoice_item(
        self, account: AccountData, p: Params, _: RequestContext, item_id: str
    ) -> JsonObject:
        p.allow()
        item = account.invoice_items.get(item_id)
        if item is None:
            raise no_such("invoiceitem", item_id)
        return item

    def _item_pricing(
        self, account: AccountData, p: Params, quantity: int | None, context: RequestContext
    ) -> tuple[JsonObject | None, str | None, int, str]:
        """``(price, unit_amount_decimal, amount, currency)`` of an invoice item from its
        ``price`` / ``pricing[price]`` / ``price_data`` / ``amount`` / unit amount parameters."""
        pricing = p.hash("pricing")
        if pricing is not None:
            pricing.allow("price")
        sources = [
            name
            for name, present in (
                ("price", "price" in p),
                ("pricing[price]", pricing is not None and "price" in pricing),
                ("price_data", "price_data" in p),
                ("amount", "amount" in p),
                ("unit_amount", "unit_amount" in p),
                ("unit_amount_decimal", "unit_amount_decimal" in p),
            )
            if present
        ]
        if not sources:
            raise invalid(
                "Missing required param: one of amount, pricing[price], price_data or "
                "unit_amount_decimal.",
                "amount",
                "parameter_missing",
            )
        if len(sources) > 1:
            raise invalid(
                f"You may only specify one of these parameters: {', '.join(sources)}.",
                sources[1],
            )
        source = sources[0]
        units = 1 if quantity is None else quantity
        if source in ("price", "pricing[price]"):
            price_id = (pricing if source == "pricing[price]" else p).required_text("price")
            price = account.prices.get(price_id)
            if price is None:
                raise no_such("price", price_id, source)
            currency = _currency(p) or price["currency"]
            if currency != price["currency"]:
                raise invalid(
                    f"The currency {currency} does not match the price's currency "
                    f"{price['currency']}.",
                    "currency",
                )
            decimal = price["unit_amount_decimal"]
            return price, decimal, _times(decimal, units), currency
        if source == "price_data":
            data = p.required_hash("price_data")
            data.allow("currency", "product", "tax_behavior", "unit_amount", "unit_amount_decimal")
            product_id = data.required_text("product")
            if account.products.get(product_id) is None:
                raise no_such("product", product_id, "price_data[product]")
            currency = _required_currency(data)
            _, decimal = _unit_amount(data)
            price = {"id": self._new_id("price"), "product": product_id}
            return price, decimal, _times(decimal, units), currency
        currency = _required_currency(p)
        if source == "amount":
            if units != 1:
                raise invalid(
                    "`amount` is the item's total and cannot be combined with a quantity other "
                    "than 1; send `unit_amount_decimal` (or a price) with `quantity` instead.",
                    "quantity",
                )
            amount = p.required_integer("amount")
            return None, str(amount), amount, currency
        _, decimal = _unit_amount(p)
        return None, decimal, _times(decimal, units), currency

    def _attach_item(self, invoice: JsonObject, item: JsonObject) -> None:
        """Add an invoice item to a draft invoice as a line and update the totals."""
        item["invoice"] = invoice["id"]
        item["parent"] = None
        pricing = item["pricing"]
        line = {
            "id": self._new_id("il"),
            "object": "line_item",
            "amount": item["amount"],
            "currency": item["currency"],
            "description": item["description"],
            "discount_amounts": [],
            "discountable": item["discountable"],
            "discounts": [],
            "invoice": invoice["id"],
            "livemode": False,
            "metadata": dict(item["metadata"]),
            "parent": {
                "invoice_item_details": {
                    "invoice_item": item["id"],
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": None,
                },
                "subscription_item_details": None,
                "type": "invoice_item_details",
            },
            "period": dict(item["period"]),
            "pretax_credit_amounts": [],
            "pricing": {
                "price_details": pricing["price_details"],
                "type": pricing["type"],
                "unit_amount_decimal": pricing["unit_amount_decimal"],
            },
            "quantity": item["quantity"],
            "taxes": [],
        }
        lines = invoice["lines"]
        lines["data"].append(line)
        lines["total_count"] = len(lines["data"])
        subtotal = sum(line["amount"] for line in lines["data"])
        amount_due = max(subtotal, 0)
        invoice.update(
            subtotal=subtotal,
            subtotal_excluding_tax=subtotal,
            total=subtotal,
            total_excluding_tax=subtotal,
            amount_due=amount_due,
            amount_remaining=amount_due,
        )


# --- parameter helpers -------------------------------------------------------------------------


def _limit(p: Params) -> int:
    limit = p.integer("limit", minimum=1, maximum=100)
    return 10 if limit is None else limit


def _list(data: list[JsonObject], has_more: bool, url: str) -> JsonObject:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def _created_range(p: Params) -> tuple[int | None, int | None]:
    """``(gte, lte)`` bounds from ``created=N`` or ``created[gt|gte|lt|lte]=N``."""
    if not isinstance(p.values.get("created"), dict):
        exact = p.integer("created")
        return exact, exact
    bounds = p.required_hash("created")
    bounds.allow("gt", "gte", "lt", "lte")
    gte_candidates = [bounds.integer("gte")]
    lte_candidates = [bounds.integer("lte")]
    greater = bounds.integer("gt")
    less = bounds.integer("lt")
    gte_candidates.append(None if greater is None else greater + 1)
    lte_candidates.append(None if less is None else less - 1)
    gte = max((v for v in gte_candidates if v is not None), default=None)
    lte = min((v for v in lte_candidates if v is not None), default=None)
    return gte, lte


def _currency(p: Params) -> str | None:
    """The ``currency`` parameter, lower-cased and checked, if sent."""
    currency = p.text("currency")
    if currency is None:
        return None
    currency = currency.lower()
    if not _CURRENCY.match(currency):
        raise invalid(f"Invalid currency: {currency}.", p.name("currency"))
    return currency


def _required_currency(p: Params) -> str:
    currency = _currency(p)
    if currency is None:
        raise missing_param(p.name("currency"))
    return currency


def _unit_amount(p: Params) -> tuple[int | None, str]:
    """``(unit_amount, unit_amount_decimal)`` from either parameter; one is required."""
    if "unit_amount" in p:
        amount = p.required_integer("unit_amount", minimum=0)
        return amount, str(amount)
    if "unit_amount_decimal" not in p:
        raise missing_param(p.name("unit_amount"))
    text = p.required_text("unit_amount_decimal")
    try:
        decimal = Decimal(text)
    except InvalidOperation:
        raise invalid(f"Invalid decimal: {text}", p.name("unit_amount_decimal")) from None
    if not decimal.is_finite() or decimal < 0:
        raise invalid(f"Invalid decimal: {text}", p.name("unit_amount_decimal"))
    normalized = format(decimal.normalize(), "f")
    return (int(decimal) if decimal == decimal.to_integral_value() else None), normalized


def _times(unit_amount_decimal: str, quantity: int) -> int:
    total = Decimal(unit_amount_decimal) * quantity
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _due_date(p: Params, collection_method: str, now: int) -> int | None:
    due_date = p.integer("due_date")
    days_until_due = p.integer("days_until_due", minimum=0)
    if collection_method != "send_invoice":
        for name, value in (("due_date", due_date), ("days_until_due", days_until_due)):
            if value is not None:
                raise invalid(
                    f"You can only set `{name}` when `collection_method` is `send_invoice`.",
                    name,
                )
        return None
    if due_date is not None and days_until_due is not None:
        raise invalid(
            "You may only specify one of these parameters: days_until_due, due_date.",
            "days_until_due",
        )
    if days_until_due is not None:
        return now + days_until_due * 86400
    if due_date is None:
        raise invalid(
            "Invoices with `collection_method=send_invoice` need `due_date` or `days_until_due`.",
            "due_date",
            "parameter_missing",
        )
    if due_date <= now:
        raise invalid("Invoice `due_date` must be in the future.", "due_date")
    if due_date > now + MAX_DUE_DATE_SECONDS:
        raise invalid("Invoice `due_date` must be within 5 years.", "due_date")
    return due_date


def _invoice(account: AccountData, invoice_id: str, param: str) -> JsonObject:
    invoice = account.invoices.get(invoice_id)
    if invoice is None:
        raise no_such("invoice", invoice_id, param)
    return invoice


def _decode_page(page: str | None) -> tuple[int, int] | None:
    """The search position encoded in a ``next_page`` token (``created.seq``)."""
    if page is None:
        return None
    created, _, seq = page.partition(".")
    if not (created.isdigit() and seq.isdigit()):
        raise invalid(f"Invalid page: {page}", "page")
    return int(created), int(seq)


def _snapshot_customer(invoice: JsonObject, customer: CustomerRecord) -> None:
    invoice.update(
        customer_address=customer.address.to_api() if customer.address else None,
        customer_email=customer.email,
        customer_name=customer.name,
        customer_phone=customer.phone,
        customer_shipping=customer.shipping.to_api() if customer.shipping else None,
    )


def _read_address(p: Params) -> Address:
    p.allow(*_ADDRESS_FIELDS)
    return Address(*(p.text(name) for name in _ADDRESS_FIELDS))


def _shipping_from_dict(values: Mapping[str, Any]) -> Shipping:
    return Shipping(
        values.get("name"), values.get("phone"), Address(**(values.get("address") or {}))
    )


def _apply_customer_params(customer: CustomerRecord, p: Params) -> None:
    """Set the customer fields present in a create/update request."""
    for name in ("description", "name", "phone"):
        if name in p:
            setattr(customer, name, p.text(name))
    if "email" in p:
        email = p.text("email")
        if email is not None and not _EMAIL.match(email):
            raise invalid(f"Invalid email address: {email}", "email", "email_invalid")
        customer.email = email
    if "address" in p:
        address = p.hash("address")
        customer.address = None if address is None else _read_address(address)
    if "shipping" in p:
        shipping = p.hash("shipping")
        if shipping is None:
            customer.shipping = None
        else:
            shipping.allow("address", "name", "phone")
            customer.shipping = Shipping(
                shipping.required_text("name"),
                shipping.text("phone"),
                _read_address(shipping.required_hash("address")),
            )
    if "preferred_locales" in p:
        locales = p.values["preferred_locales"]
        if locales == "":
            locales = []
        if not isinstance(locales, list) or not all(isinstance(v, str) for v in locales):
            raise invalid("Invalid array: preferred_locales", "preferred_locales")
        customer.preferred_locales = tuple(locales)
    customer.metadata = p.metadata(customer.metadata)


_Endpoint = Callable[..., JsonObject]
_ROUTES: list[tuple[str, re.Pattern[str], _Endpoint]] = [
    (method, re.compile(pattern), endpoint)
    for method, pattern, endpoint in (
        ("GET", r"/v1/customers", StripeApi.list_customers),
        ("POST", r"/v1/customers", StripeApi.create_customer),
        ("GET", r"/v1/customers/search", StripeApi.search_customers),
        ("GET", r"/v1/customers/([^/]+)", StripeApi.retrieve_customer),
        ("POST", r"/v1/customers/([^/]+)", StripeApi.update_customer),
        ("DELETE", r"/v1/customers/([^/]+)", StripeApi.delete_customer),
        ("GET", r"/v1/events", StripeApi.list_events),
        ("GET", r"/v1/events/([^/]+)", StripeApi.retrieve_event),
        ("POST", r"/v1/products", StripeApi.create_product),
        ("GET", r"/v1/products/([^/]+)", StripeApi.retrieve_product),
        ("POST", r"/v1/prices", StripeApi.create_price),
        ("GET", r"/v1/prices/([^/]+)", StripeApi.retrieve_price),
        ("GET", r"/v1/invoices", StripeApi.list_invoices),
        ("POST", r"/v1/invoices", StripeApi.create_invoice),
        ("GET", r"/v1/invoices/([^/]+)", StripeApi.retrieve_invoice),
        ("DELETE", r"/v1/invoices/([^/]+)", StripeApi.delete_invoice),
        ("POST", r"/v1/invoices/([^/]+)/finalize", StripeApi.finalize_invoice),
        ("POST", r"/v1/invoiceitems", StripeApi.create_invoice_item),
        ("GET", r"/v1/invoiceitems/([^/]+)", StripeApi.retrieve_invoice_item),
    )
]
