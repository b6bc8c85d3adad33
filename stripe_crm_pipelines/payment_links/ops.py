"""The ops of ``create_payment_link``: thin adapters over invoice.py and customers.py.

Each op that calls Stripe loads the account's key from MongoDB itself; the key never travels
between ops (outputs are pickled to disk) and never reaches config, tags, logs or metadata.
Every Stripe write carries an idempotency key derived from the run id, so an op retried after a
lost response replays the same write instead of making a second customer, invoice or item.
"""

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

import stripe as stripe_sdk
from dagster import (
    Backoff,
    Config,
    Failure,
    Jitter,
    MetadataValue,
    OpExecutionContext,
    RetryPolicy,
    op,
)
from pydantic import Field

from stripe_crm_pipelines import store
from stripe_crm_pipelines.errors import is_transient
from stripe_crm_pipelines.payment_links.customers import (
    ResolvedCustomer,
    crm_api_customer_creator,
    find_or_create_customer,
    load_contact,
    stripe_customer_creator,
)
from stripe_crm_pipelines.payment_links.invoice import (
    IssuedInvoice,
    PaymentLinkConfigError,
    PaymentLinkRequest,
    format_amount,
    idempotency_key,
    invoice_item_params,
    invoice_params,
    payment_link_document,
    utc_today,
    validate_payment_link_request,
)
from stripe_crm_pipelines.resources.crm_api import CrmApiError, CrmApiResource
from stripe_crm_pipelines.resources.mongo import MongoResource
from stripe_crm_pipelines.resources.shortener import ShortenerResource
from stripe_crm_pipelines.resources.stripe import (
    StripeResource,
    stripe_error_message,
)
from stripe_crm_pipelines.stripe_keys import (
    StripeCredentials,
    StripeKeyError,
    load_billing_credentials,
)

MAX_DRAFTS_PER_CHAIN = 20
"""Drafts a run and its re-executions may create (each one deleted before the next)."""


NETWORK_RETRY_POLICY = RetryPolicy(
    max_retries=3, delay=1, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


class LineItemConfig(Config):
    """One invoice line: either ``price_id`` (+ ``quantity``) or ``amount`` + ``description``."""

    price_id: str | None = Field(
        default=None,
        description="ID of a saved Stripe price (price_…). Give this or amount, not both.",
    )
    amount: int | None = Field(
        default=None,
        description="Custom unit price in the currency's minor unit (cents for usd: 1999 is "
        "$19.99). Give this or price_id, not both; needs a description.",
    )
    quantity: int = Field(default=1, description="Number of units, at least 1.")
    description: str | None = Field(
        default=None, description="Text of the line on the invoice; required with amount."
    )


class PaymentLinkConfig(Config):
    """What to bill whom: the Launchpad form of ``create_payment_link``."""

    account_id: str = Field(
        description="CRM account (24-hex ObjectId) whose connected billing Stripe account "
        "issues the invoice."
    )
    contact_id: str = Field(
        description="CRM contact (24-hex ObjectId) of that account to bill; its Stripe customer "
        "is found by email/phone or created."
    )
    currency: str = Field(description="ISO 4217 currency code, e.g. usd or eur.")
    line_items: list[LineItemConfig] = Field(
        description="Invoice lines (1 to 250): each a price_id, or an amount with a description."
    )
    due_date: str = Field(
        description="Due date, ISO YYYY-MM-DD (today or later, UTC); the invoice is due at the "
        "end of that day UTC."
    )
    description: str | None = Field(
        default=None,
        description="Invoice description; default 'Invoice for <contact> — <n> items'.",
    )
    user_id: str | None = Field(
        default=None,
        description="Only with API_BASE_URL: CRM user (ObjectId) the customer-creation token "
        "speaks for; default the contact's owner.",
    )
    client_id: str | None = Field(
        default=None,
        description="Only with API_BASE_URL: OAuth client (ObjectId) of that token; default the "
        "account's client_id.",
    )


@op(retry_policy=NETWORK_RETRY_POLICY)
def load_payment_link_request(
    context: OpExecutionContext, config: PaymentLinkConfig, mongo: MongoResource
) -> PaymentLinkRequest:
    """Validate the config, then check the contact and the billing Stripe key exist."""
    try:
        request = validate_payment_link_request(
            account_id=config.account_id,
            contact_id=config.contact_id,
            currency=config.currency,
            line_items=[item.model_dump() for item in config.line_items],
            due_date=config.due_date,
            description=config.description,
            user_id=config.user_id,
            client_id=config.client_id,
            today=utc_today(),
        )
    except PaymentLinkConfigError as error:
        raise Failure(
            description=str(error),
            metadata={"invalid_fields": MetadataValue.text(", ".join(error.fields))},
            allow_retries=False,
        ) from None
    db = mongo.database()
    _load_contact(db, request)
    _stripe_credentials(db, request)
    context.add_output_metadata(
        {
            "line_items": MetadataValue.int(len(request.line_items)),
            "currency": MetadataValue.text(request.currency),
            "due_date": MetadataValue.text(request.due_date.isoformat()),
        }
    )
    return request


@op(retry_policy=NETWORK_RETRY_POLICY)
def find_or_create_stripe_customer(
    context: OpExecutionContext,
    request: PaymentLinkRequest,
    mongo: MongoResource,
    stripe: StripeResource,
    crm_api: CrmApiResource,
) -> ResolvedCustomer:
    """The contact's Stripe customer: linked, searched, listed by email, or created and linked."""
    db = mongo.database()
    contact = _load_contact(db, request)
    client = _stripe_client(db, stripe, request)
    if crm_api.is_enabled():
        account = db[store.ACCOUNTS].find_one({"_id": request.account_id})
        create = crm_api_customer_creator(crm_api, request, contact, account)
    else:
        create = stripe_customer_creator(client)
    step = "finding or creating the Stripe customer"
    with _failures_from_calls(step, may_retry=_may_retry(context)):
        resolved = find_or_create_customer(
            client,
            db,
            contact,
            create=create,
            idempotency_key=idempotency_key(_writes_run_id(context), "customer"),
        )
    if not resolved.linked:
        context.log.warning(
            f"Stripe customer {resolved.customer_id} is linked to another contact of the "
            "account; this contact was not linked to it."
        )
    context.log.info(f"Billing Stripe customer {resolved.customer_id} ({resolved.found_by}).")
    context.add_output_metadata(
        {
            "stripe_customer_id": MetadataValue.text(resolved.customer_id),
            "found_by": MetadataValue.text(resolved.found_by),
        }
    )
    return resolved


@op(retry_policy=NETWORK_RETRY_POLICY)
def create_finalized_invoice(
    context: OpExecutionContext,
    request: PaymentLinkRequest,
    customer: ResolvedCustomer,
    mongo: MongoResource,
    stripe: StripeResource,
) -> IssuedInvoice:
    """Draft invoice, every line item attached to it, then finalised without sending."""
    client = _stripe_client(mongo.database(), stripe, request)
    invoice = issue_invoice(
        client,
        request,
        customer,
        run_id=context.run_id,
        writes_run_id=_writes_run_id(context),
        may_retry=_may_retry(context),
        log=context.log,
    )
    context.add_output_metadata(
        {
            "invoice_id": MetadataValue.text(invoice.invoice_id),
            "status": MetadataValue.text(invoice.status),
            "amount_due": MetadataValue.int(invoice.amount_due),
        }
    )
    return invoice


@op(retry_policy=NETWORK_RETRY_POLICY)
def publish_payment_link(
    context: OpExecutionContext,
    request: PaymentLinkRequest,
    customer: ResolvedCustomer,
    invoice: IssuedInvoice,
    mongo: MongoResource,
    shortener: ShortenerResource,
) -> dict:
    """Shorten the hosted invoice URL (the long one on failure) and save the payment link."""
    shortened = shortener.shorten(invoice.hosted_invoice_url)
    if shortened.problem:
        context.log.warning(f"Keeping the long invoice URL; shortening failed: {shortened.problem}")
    elif not shortened.shortened:
        context.log.info("No shortener configured (SHORTENER_URL); keeping the long invoice URL.")
    document = payment_link_document(
        request,
        invoice,
        customer_id=customer.customer_id,
        short_url=shortened.url,
        run_id=context.run_id,
        created_at=datetime.now(UTC),
    )
    mongo.database()[store.PAYMENT_LINKS].update_one(
        {"invoice_id": invoice.invoice_id}, {"$setOnInsert": document}, upsert=True
    )
    context.add_output_metadata(
        {
            "invoice_id": MetadataValue.text(invoice.invoice_id),
            "invoice_number": MetadataValue.text(invoice.number or ""),
            "amount_due": MetadataValue.int(invoice.amount_due),
            "amount_due_display": MetadataValue.text(
                format_amount(invoice.amount_due, invoice.currency)
            ),
            "currency": MetadataValue.text(invoice.currency),
            "hosted_invoice_url": MetadataValue.url(invoice.hosted_invoice_url),
            "short_url": MetadataValue.url(shortened.url),
            "stripe_customer_id": MetadataValue.text(customer.customer_id),
        }
    )
    return {
        **document,
        "account_id": str(request.account_id),
        "contact_id": str(request.contact_id),
    }


def issue_invoice(
    client: stripe_sdk.StripeClient,
    request: PaymentLinkRequest,
    customer: ResolvedCustomer,
    *,
    run_id: str,
    writes_run_id: str,
    may_retry: bool,
    log,
) -> IssuedInvoice:
    """Create the draft, attach every item, finalise without sending.

    The writes' idempotency keys derive from ``writes_run_id``, the first run of a
    re-execution chain (its own id otherwise). A re-execution therefore gets back the draft
    that chain made first (``<root>:invoice``); if that one was deleted, the next
    (``<root>#2:invoice``, …), up to the first one not deleted. That invoice, if open, is the
    one published; if still a draft, it is carried on. However many times a failed run is
    re-executed, the contact is billed once.

    A failure after the draft exists deletes it, unless the error is transient and the op will
    be retried: the retry then replays the same idempotent writes and carries on. When the
    answer to the finalisation was lost, the invoice is looked up first: finalised, it is used;
    unreadable, it is left as it is and the failure says so.
    """
    keys, draft = writes_run_id, None
    for number in range(1, MAX_DRAFTS_PER_CHAIN + 1):
        keys = writes_run_id if number == 1 else f"{writes_run_id}#{number}"
        draft = _create_draft(client, request, customer, keys, may_retry=may_retry)
        if writes_run_id == run_id:
            break  # a first run: its drafts are deleted only when it gives up for good
        with _failures_from_calls(f"reading invoice {draft.id}", may_retry=may_retry):
            current = _current_invoice(client, draft.id)
        if current is None:
            log.info(f"Draft invoice {draft.id} of this run chain was deleted; trying the next")
            continue
        if current.status == "open":
            log.info(f"Invoice {draft.id} was finalised by an earlier run of this chain")
            return _issued(current)
        if current.status != "draft":
            raise Failure(
                description=f"Invoice {draft.id}, created by an earlier run of this chain, is "
                f"{current.status}; launch a new run to bill the contact again",
                allow_retries=False,
            )
        break
    else:
        raise Failure(
            description=f"{MAX_DRAFTS_PER_CHAIN} draft invoices of run {writes_run_id} and its "
            "re-executions were deleted; launch a new run rather than re-executing this one",
            allow_retries=False,
        )
    assert draft is not None
    step = "finalizing the invoice"
    try:
        for index, item in enumerate(request.line_items):
            step = f"adding line_items[{index}]"
            client.v1.invoice_items.create(
                params=invoice_item_params(
                    item,
                    invoice_id=draft.id,
                    customer_id=customer.customer_id,
                    currency=request.currency,
                ),
                options={"idempotency_key": idempotency_key(keys, f"item:{index}")},
            )
        step = "finalizing the invoice"
        final = client.v1.invoices.finalize_invoice(
            draft.id,
            params={"auto_advance": False},
            options={"idempotency_key": idempotency_key(keys, "finalize")},
        )
    except stripe_sdk.StripeError as error:
        if may_retry and is_transient(error):
            raise _stripe_failure(error, step, allow_retries=True) from None
        if is_transient(error):
            try:
                current = _current_invoice(client, draft.id)
            except stripe_sdk.StripeError:
                raise _stripe_failure(
                    error,
                    f"{step}; invoice {draft.id} could not be read to tell whether Stripe "
                    "finalised it, so it was left as it is: re-execute this run to publish it "
                    "or carry it on",
                    allow_retries=False,
                ) from None
            if current is not None and current.status == "open":
                log.warning(f"The answer to {step} was lost; invoice {draft.id} is finalised")
                return _issued(current)
        deleted = _delete_draft(client, draft.id, log)
        outcome = "was deleted" if deleted else "could not be deleted; see the run's log"
        raise _stripe_failure(
            error, f"{step}; the draft invoice {draft.id} {outcome}", allow_retries=False
        ) from None
    return _issued(final)


def _create_draft(client, request, customer, keys: str, *, may_retry: bool):
    with _failures_from_calls("creating the draft invoice", may_retry=may_retry):
        return client.v1.invoices.create(
            params=invoice_params(
                request, customer_id=customer.customer_id, contact_name=customer.contact_name
            ),
            options={"idempotency_key": idempotency_key(keys, "invoice")},
        )


def _current_invoice(client: stripe_sdk.StripeClient, invoice_id: str):
    """The invoice as Stripe holds it now; None once deleted. Other errors are raised: an
    invoice that cannot be read is not taken for gone."""
    try:
        invoice = client.v1.invoices.retrieve(invoice_id)
    except stripe_sdk.InvalidRequestError as error:
        if getattr(error, "code", None) == "resource_missing":
            return None
        raise
    return None if getattr(invoice, "deleted", False) else invoice


def _issued(invoice) -> IssuedInvoice:
    return IssuedInvoice(
        invoice_id=invoice.id,
        number=invoice.number,
        hosted_invoice_url=invoice.hosted_invoice_url,
        amount_due=invoice.amount_due,
        currency=invoice.currency,
        status=invoice.status,
    )


def _delete_draft(client: stripe_sdk.StripeClient, invoice_id: str, log) -> bool:
    """Delete the draft; whether it is gone."""
    try:
        client.v1.invoices.delete(invoice_id)
    except stripe_sdk.StripeError as error:
        log.error(f"Could not delete draft invoice {invoice_id}: {stripe_error_message(error)}")
        return False
    return True


def _load_contact(db, request: PaymentLinkRequest) -> dict:
    contact = load_contact(db, request.account_id, request.contact_id)
    if contact is None:
        raise Failure(
            description=f"contact_id: contact {request.contact_id} not found in account "
            f"{request.account_id}",
            allow_retries=False,
        )
    return contact


def _stripe_credentials(db, request: PaymentLinkRequest) -> StripeCredentials:
    try:
        return load_billing_credentials(db, request.account_id)
    except StripeKeyError as error:
        raise Failure(description=f"account_id: {error}", allow_retries=False) from None


def _stripe_client(db, resource: StripeResource, request: PaymentLinkRequest):
    credentials = _stripe_credentials(db, request)
    return resource.client(credentials.secret_key, credentials.stripe_account)


def _writes_run_id(context: OpExecutionContext) -> str:
    """The run whose idempotency keys this run's Stripe writes use: the first run of a
    re-execution chain, so re-executing a failed run replays its writes instead of billing the
    contact a second time."""
    return context.run.root_run_id or context.run_id


def _may_retry(context: OpExecutionContext) -> bool:
    """Whether the retry policy still allows this op another attempt."""
    return context.retry_number < NETWORK_RETRY_POLICY.max_retries


def _stripe_failure(error: stripe_sdk.StripeError, step: str, *, allow_retries: bool) -> Failure:
    if getattr(error, "param", None) == "due_date":
        return Failure(
            description=f"due_date: Stripe rejected the due date while {step}: "
            f"{stripe_error_message(error)}",
            allow_retries=False,
        )
    return Failure(
        description=f"Stripe failed while {step}: {stripe_error_message(error)}",
        allow_retries=allow_retries,
    )


@contextlib.contextmanager
def _failures_from_calls(step: str, *, may_retry: bool) -> Iterator[None]:
    """Turn Stripe and CRM API errors into Failures; only transient ones may be retried."""
    try:
        yield
    except PaymentLinkConfigError as error:
        raise Failure(description=str(error), allow_retries=False) from None
    except stripe_sdk.StripeError as error:
        raise _stripe_failure(
            error, step, allow_retries=may_retry and is_transient(error)
        ) from None
    except CrmApiError as error:
        raise Failure(
            description=f"CRM API failed while {step}: {error}",
            allow_retries=may_retry and error.retryable,
        ) from None
