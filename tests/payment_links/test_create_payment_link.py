"""``create_payment_link`` end to end: the real Stripe SDK against the sandbox over HTTP, the
mongomock store, and Dagster's in-process executor."""

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import stripe
from bson import ObjectId
from dagster import (
    DagsterEventType,
    DagsterInstance,
    EnvVar,
    ReexecutionOptions,
    execute_job,
    in_process_executor,
    reconstructable,
)
from dagster._serdes import serialize_value

from stripe_crm_pipelines import store
from stripe_crm_pipelines.local.shortener import start_local_shortener
from stripe_crm_pipelines.payment_links.invoice import due_date_timestamp
from stripe_crm_pipelines.payment_links.job import create_payment_link
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from stripe_crm_pipelines.resources.crm_api import ACCESS_TOKEN_SCOPE, CrmApiResource
from stripe_crm_pipelines.resources.shortener import ShortenerResource

ACCOUNT_ID = ObjectId("650000000000000000000001")
OTHER_ACCOUNT_ID = ObjectId("650000000000000000000009")
OWNER_ID = ObjectId("650000000000000000000003")
CLIENT_ID = ObjectId("650000000000000000000004")
PARENT_ACCOUNT_ID = ObjectId("650000000000000000000005")
STRIPE_ACCOUNT = "acct_1PaymentLinks"
SECRET_KEY = "sk_test_payment_links_0123456789abcdef"
APP_SECRET = "app-secret-for-payment-link-tests-0123456789"
CUSTOMERS_PATH = "/v1/customers"
FIRST_OP = "load_payment_link_request"


@dataclass
class Env:
    sandbox: object
    db: object
    mongo_uri: str
    contact_id: ObjectId
    price_id: str
    instance: DagsterInstance

    def stripe_client(self) -> stripe.StripeClient:
        return stripe.StripeClient(
            SECRET_KEY, stripe_account=STRIPE_ACCOUNT, base_addresses={"api": self.sandbox.url}
        )

    def contact(self) -> dict:
        return self.db[store.CONTACTS].find_one({"_id": self.contact_id})

    def invoices(self) -> list[dict]:
        return list(self.sandbox.state.api.account(STRIPE_ACCOUNT).invoices.newest_first())

    def requests(self, path=None, method=None) -> list[dict]:
        return self.sandbox.state.requests(path, method)


def wait_for(condition, timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def shared_instance():
    """One ephemeral instance for the module's runs: cheaper than one per run."""
    return DagsterInstance.ephemeral()


@pytest.fixture
def env(stripe_sandbox, db, mongo_uri, shared_instance) -> Env:
    db[store.ACCOUNTS].insert_one(
        {"_id": ACCOUNT_ID, "client_id": CLIENT_ID, "parent_account": PARENT_ACCOUNT_ID}
    )
    db[store.STRIPE_KEYS].insert_one(
        {
            "account_id": ACCOUNT_ID,
            "connected_apps": ["billing"],
            "token": {"access_token": SECRET_KEY, "stripe_user_id": STRIPE_ACCOUNT},
        }
    )
    contact = {
        "type": "person",
        "parent_account": ACCOUNT_ID,
        "owner": OWNER_ID,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": "+15550100",
        "address": {"street": "12 Analytical Way", "city": "London", "zip": "N1 9GU"},
    }
    contact_id = db[store.CONTACTS].insert_one(contact).inserted_id
    client = stripe.StripeClient(
        SECRET_KEY, stripe_account=STRIPE_ACCOUNT, base_addresses={"api": stripe_sandbox.url}
    )
    price = client.v1.prices.create(
        params={"currency": "usd", "unit_amount": 5000, "product_data": {"name": "Consulting"}}
    )
    stripe_sandbox.state.clear_requests()
    return Env(stripe_sandbox, db, mongo_uri, contact_id, price.id, shared_instance)


def due_in(days: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=days)).isoformat()


def job_config(env: Env, **overrides) -> dict:
    config = {
        "account_id": str(ACCOUNT_ID),
        "contact_id": str(env.contact_id),
        "currency": "usd",
        "line_items": [
            {"price_id": env.price_id, "quantity": 2},
            {"amount": 1999, "quantity": 3, "description": "Setup fee"},
        ],
        "due_date": due_in(14),
    }
    config.update(overrides)
    return config


def run_job(
    env: Env,
    config: dict,
    *,
    shortener_url: str | None = None,
    stripe_retries: int = 2,
    stripe_timeout: float = 5.0,
    crm_api_url: str | None = None,
    app_secret: str | None = None,
):
    return create_payment_link.execute_in_process(
        run_config={"ops": {FIRST_OP: {"config": config}}},
        resources={
            "mongo": MongoResource(uri=env.mongo_uri),
            "stripe": StripeResource(
                api_base=env.sandbox.url,
                max_retries=stripe_retries,
                initial_retry_delay_seconds=0.01,
                timeout_seconds=stripe_timeout,
            ),
            "shortener": ShortenerResource(base_url=shortener_url, timeout_seconds=2),
            "crm_api": CrmApiResource(
                base_url=crm_api_url, app_secret=app_secret, timeout_seconds=5
            ),
        },
        instance=env.instance,
        raise_on_error=False,
    )


def failure_description(result) -> str:
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            if data.user_failure_data is not None:
                return data.user_failure_data.description
            return data.error.message
    raise AssertionError("the run has no step failure")


def published(result) -> dict:
    """Metadata of the publish step, as plain values."""
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_OUTPUT and event.step_key == (
            "publish_payment_link"
        ):
            return {k: v.value for k, v in event.step_output_data.metadata.items()}
    raise AssertionError("publish_payment_link produced no output")


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- the happy path ------------------------------------------------------------------------------


def test_creates_a_finalized_invoice_for_a_new_customer(env):
    config = job_config(env)
    result = run_job(env, config)
    assert result.success, failure_description(result)

    [invoice] = env.invoices()
    customer_id = env.contact()["stripe_customer_id"]
    assert invoice["customer"] == customer_id
    assert invoice["status"] == "open"
    assert invoice["collection_method"] == "send_invoice"
    assert invoice["auto_advance"] is False
    assert invoice["currency"] == "usd"
    assert invoice["due_date"] == due_date_timestamp(datetime.fromisoformat(config["due_date"]))
    assert invoice["description"] == "Invoice for Ada Lovelace — 2 items"
    lines = invoice["lines"]["data"]
    assert [(line["amount"], line["quantity"]) for line in lines] == [(10000, 2), (5997, 3)]
    assert lines[0]["pricing"]["price_details"]["price"] == env.price_id
    assert lines[1]["description"] == "Setup fee"
    assert invoice["amount_due"] == 15997

    [customer] = env.sandbox.state.customers(STRIPE_ACCOUNT)
    assert customer["id"] == customer_id
    assert (customer["name"], customer["email"], customer["phone"]) == (
        "Ada Lovelace",
        "ada@example.com",
        "+15550100",
    )
    assert customer["address"]["line1"] == "12 Analytical Way"
    assert customer["address"]["postal_code"] == "N1 9GU"
    assert customer["address"]["state"] is None
    assert customer["metadata"] == {
        "crm_contact_id": str(env.contact_id),
        "crm_account_id": str(ACCOUNT_ID),
    }

    link = env.db[store.PAYMENT_LINKS].find_one({"invoice_id": invoice["id"]})
    assert link["account_id"] == ACCOUNT_ID
    assert link["contact_id"] == env.contact_id
    assert link["invoice_number"] == invoice["number"]
    assert link["hosted_invoice_url"] == invoice["hosted_invoice_url"]
    assert link["short_url"] == invoice["hosted_invoice_url"]
    assert (link["amount_due"], link["currency"]) == (15997, "usd")
    assert link["run_id"] == result.run_id
    assert link["created_at"] is not None

    metadata = published(result)
    assert metadata["invoice_id"] == invoice["id"]
    assert metadata["invoice_number"] == invoice["number"]
    assert metadata["amount_due"] == 15997
    assert metadata["currency"] == "usd"
    assert metadata["hosted_invoice_url"] == invoice["hosted_invoice_url"]
    assert metadata["short_url"] == invoice["hosted_invoice_url"]
    assert result.output_for_node("publish_payment_link")["invoice_id"] == invoice["id"]

    requests = env.requests()
    assert {r["stripe_account"] for r in requests} == {STRIPE_ACCOUNT}
    writes = [r for r in requests if r["method"] == "POST"]
    assert [r["idempotency_key"] for r in writes] == [
        f"{result.run_id}:customer",
        f"{result.run_id}:invoice",
        f"{result.run_id}:item:0",
        f"{result.run_id}:item:1",
        f"{result.run_id}:finalize",
    ]


# --- finding the customer ------------------------------------------------------------------------


def test_finds_the_customer_by_email_with_quotes_escaped(env):
    email = "o'neil@example.com"
    env.db[store.CONTACTS].update_one({"_id": env.contact_id}, {"$set": {"email": email}})
    existing = env.sandbox.state.add_customer(STRIPE_ACCOUNT, email=email, name="O'Neil")

    result = run_job(env, job_config(env))

    assert result.success, failure_description(result)
    assert env.invoices()[0]["customer"] == existing["id"]
    assert env.requests(CUSTOMERS_PATH, "POST") == []
    [search] = env.requests(f"{CUSTOMERS_PATH}/search")
    assert search["query"]["query"] == "email:'o\\'neil@example.com' OR phone:'+15550100'"
    assert env.contact()["stripe_customer_id"] == existing["id"]


def test_finds_the_customer_by_phone(env):
    existing = env.sandbox.state.add_customer(STRIPE_ACCOUNT, phone="+15550100", name="Ada L.")

    result = run_job(env, job_config(env))

    assert result.success, failure_description(result)
    assert env.invoices()[0]["customer"] == existing["id"]
    assert env.requests(CUSTOMERS_PATH, "POST") == []


def test_a_customer_with_the_phone_but_another_email_is_not_billed(env):
    bob = env.sandbox.state.add_customer(STRIPE_ACCOUNT, email="bob@example.com", phone="+15550100")

    result = run_job(env, job_config(env))

    assert result.success, failure_description(result)
    # The contact (ada@example.com, +15550100) gets a customer of its own.
    [created] = env.requests(CUSTOMERS_PATH, "POST")
    assert created["form"]["email"] == "ada@example.com"
    invoice_customer = env.invoices()[0]["customer"]
    assert invoice_customer != bob["id"]
    assert env.contact()["stripe_customer_id"] == invoice_customer
    customers = {c["id"]: c for c in env.sandbox.state.customers(STRIPE_ACCOUNT)}
    assert customers.keys() == {bob["id"], invoice_customer}
    assert customers[invoice_customer]["email"] == "ada@example.com"


@pytest.mark.parametrize("another_customer_has_the_phone", [False, True])
def test_finds_a_customer_search_has_not_indexed_yet_by_listing(
    env, another_customer_has_the_phone
):
    if another_customer_has_the_phone:
        # Search finds this one by the contact's phone; its email says it is someone else.
        env.sandbox.state.add_customer(STRIPE_ACCOUNT, email="bob@example.com", phone="+15550100")
    env.sandbox.state.configure(search_index_delay=3600)
    existing = env.stripe_client().v1.customers.create(params={"email": "ada@example.com"})
    env.sandbox.state.clear_requests()

    result = run_job(env, job_config(env))

    assert result.success, failure_description(result)
    assert env.invoices()[0]["customer"] == existing.id
    assert env.contact()["stripe_customer_id"] == existing.id
    assert env.requests(CUSTOMERS_PATH, "POST") == []
    [listing] = env.requests(CUSTOMERS_PATH, "GET")
    assert listing["query"]["email"] == "ada@example.com"


def test_uses_the_linked_customer_and_skips_search(env):
    existing = env.sandbox.state.add_customer(STRIPE_ACCOUNT, email="someone@else.com")
    env.db[store.CONTACTS].update_one(
        {"_id": env.contact_id}, {"$set": {"stripe_customer_id": existing["id"]}}
    )

    result = run_job(env, job_config(env))

    assert result.success, failure_description(result)
    assert env.invoices()[0]["customer"] == existing["id"]
    assert env.requests(f"{CUSTOMERS_PATH}/search") == []


def test_replaces_a_linked_customer_that_no_longer_exists(env):
    env.db[store.CONTACTS].update_one(
        {"_id": env.contact_id}, {"$set": {"stripe_customer_id": "cus_deleted"}}
    )

    result = run_job(env, job_config(env))

    assert result.success, failure_description(result)
    new_id = env.contact()["stripe_customer_id"]
    assert new_id != "cus_deleted"
    assert env.invoices()[0]["customer"] == new_id


def test_a_contact_of_another_account_is_not_found(env):
    stranger = {"type": "person", "parent_account": OTHER_ACCOUNT_ID, "email": "x@example.com"}
    other = env.db[store.CONTACTS].insert_one(stranger).inserted_id

    result = run_job(env, job_config(env, contact_id=str(other)))

    assert not result.success
    assert failure_description(result) == (
        f"contact_id: contact {other} not found in account {ACCOUNT_ID}"
    )
    assert env.requests() == []


def test_an_account_without_a_billing_key_fails_before_stripe(env):
    env.db[store.STRIPE_KEYS].delete_many({})

    result = run_job(env, job_config(env))

    assert not result.success
    assert "account_id:" in failure_description(result)
    assert "no Stripe key" in failure_description(result)
    assert env.requests() == []


# --- failures ------------------------------------------------------------------------------------


def test_a_failing_item_deletes_the_draft_and_fails_with_stripes_message(env):
    config = job_config(
        env,
        line_items=[
            {"amount": 1000, "quantity": 1, "description": "Fine"},
            {"price_id": "price_does_not_exist", "quantity": 1},
        ],
    )

    result = run_job(env, config)

    assert not result.success
    description = failure_description(result)
    assert "line_items[1]" in description
    assert "No such price: 'price_does_not_exist'" in description
    assert "was deleted" in description
    assert env.invoices() == []
    assert env.sandbox.state.accounts()[STRIPE_ACCOUNT]["invoice_items"] == 0
    assert len(env.requests(method="DELETE")) == 1
    assert env.db[store.PAYMENT_LINKS].count_documents({}) == 0


def test_a_due_date_stripe_rejects_is_a_validation_failure(env):
    result = run_job(env, job_config(env, due_date=due_in(6 * 366)))

    assert not result.success
    description = failure_description(result)
    assert description.startswith("due_date: Stripe rejected the due date")
    assert "within 5 years" in description
    assert env.invoices() == []


@pytest.mark.parametrize(
    ("fault", "path"),
    [
        ({"kind": "reset", "endpoint": "POST /v1/customers"}, "/v1/customers"),
        ({"kind": "reset", "endpoint": "POST /v1/invoices"}, "/v1/invoices"),
        ({"kind": "timeout", "endpoint": "POST /v1/invoiceitems", "delay": 2}, "/v1/invoiceitems"),
        ({"kind": "reset", "endpoint": "POST /v1/invoices/*/finalize"}, None),
    ],
    ids=["customer-reset", "invoice-reset", "item-timeout", "finalize-reset"],
)
def test_an_op_retried_after_a_lost_response_creates_everything_once(env, fault, path):
    # Without email or phone the retry cannot find the customer by search and must re-send the
    # creation: only its idempotency key keeps it from making a second customer.
    env.db[store.CONTACTS].update_one(
        {"_id": env.contact_id}, {"$unset": {"email": "", "phone": ""}}
    )
    env.sandbox.state.inject_fault(**fault, after_effect=True, count=1)

    result = run_job(env, job_config(env), stripe_retries=0, stripe_timeout=1)

    assert result.success, failure_description(result)
    retried = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    assert len(retried) == 1
    [invoice] = env.invoices()
    assert invoice["status"] == "open"
    assert len(invoice["lines"]["data"]) == 2
    assert len(env.sandbox.state.customers(STRIPE_ACCOUNT)) == 1
    assert env.sandbox.state.accounts()[STRIPE_ACCOUNT]["invoice_items"] == 2
    if path is not None:
        # The sandbox logs a request when it has answered it: a delayed answer to the first
        # attempt may be logged after the run has already finished.
        def sent_keys() -> list[str]:
            return [write["idempotency_key"] for write in env.requests(path, "POST")]

        wait_for(lambda: len(sent_keys()) > len(set(sent_keys())))
        writes = env.requests(path, "POST")
        keys = [write["idempotency_key"] for write in writes]
        assert len(keys) == len(set(keys)) + 1
        assert [write["replayed"] for write in writes].count(True) == 1


def test_a_finalisation_whose_answer_is_lost_every_time_publishes_the_open_invoice(env):
    env.sandbox.state.inject_fault(
        kind="reset", endpoint="POST /v1/invoices/*/finalize", after_effect=True, count=100
    )

    result = run_job(env, job_config(env), stripe_retries=0, stripe_timeout=1)

    assert result.success, failure_description(result)
    [invoice] = env.invoices()
    assert invoice["status"] == "open"
    assert env.requests(method="DELETE") == []
    [link] = env.db[store.PAYMENT_LINKS].find()
    assert link["invoice_id"] == invoice["id"]


def test_a_draft_that_cannot_be_deleted_is_not_said_to_be(env):
    env.sandbox.state.inject_fault(endpoint="DELETE /v1/invoices/*", status=500, count=100)
    config = job_config(env, line_items=[{"price_id": "price_does_not_exist", "quantity": 1}])

    result = run_job(env, config, stripe_retries=0)

    assert not result.success
    description = failure_description(result)
    [invoice] = env.invoices()
    assert invoice["status"] == "draft"
    assert f"the draft invoice {invoice['id']} could not be deleted" in description
    assert "was deleted" not in description


def make_reexecutable_job():
    """``create_payment_link`` with the resources of ``PAYMENT_LINK_TEST_*``, read when a run
    starts (a re-execution loads the job by reference, so its resources cannot be passed in)."""
    return create_payment_link.graph.to_job(
        name="create_payment_link",
        executor_def=in_process_executor,
        resource_defs={
            "mongo": MongoResource(uri=EnvVar("PAYMENT_LINK_TEST_MONGO_URI")),
            "stripe": StripeResource(
                api_base=EnvVar("PAYMENT_LINK_TEST_STRIPE_URL"),
                max_retries=0,
                timeout_seconds=1,
                initial_retry_delay_seconds=0.01,
            ),
            "shortener": ShortenerResource(),
            "crm_api": CrmApiResource(),
        },
    )


LOST_FINALISATION = {"kind": "reset", "endpoint": "POST /v1/invoices/*/finalize"}
UNREADABLE_INVOICES = {"endpoint": "GET /v1/invoices/*", "status": 500}
REFUSED_ITEM = {"endpoint": "POST /v1/invoiceitems", "status": 400}


def reexecute(job, instance, failed_run_id):
    options = ReexecutionOptions.from_failure(failed_run_id, instance)
    return execute_job(job, instance, reexecution_options=options)


@pytest.mark.parametrize(
    "runs",
    [
        # Finalised, but every answer lost and the invoice unreadable: the run cannot tell.
        [[LOST_FINALISATION, UNREADABLE_INVOICES], []],
        # An item refused once: the first run deletes its draft.
        [[REFUSED_ITEM], []],
        # Still unreadable when re-executed: the re-execution fails too, without a new invoice.
        [[LOST_FINALISATION, UNREADABLE_INVOICES], [UNREADABLE_INVOICES], []],
        # The first re-execution makes the chain's second draft and finalises it unheard.
        [[REFUSED_ITEM], [LOST_FINALISATION, UNREADABLE_INVOICES], []],
    ],
    ids=["finalised", "deleted", "still-unreadable", "re-executed-twice"],
)
def test_re_executing_failed_runs_bills_the_contact_once(env, monkeypatch, tmp_path, runs):
    monkeypatch.setenv("PAYMENT_LINK_TEST_MONGO_URI", env.mongo_uri)
    monkeypatch.setenv("PAYMENT_LINK_TEST_STRIPE_URL", env.sandbox.url)
    instance = DagsterInstance.local_temp(str(tmp_path))
    job = reconstructable(make_reexecutable_job)
    run_config = {"ops": {FIRST_OP: {"config": job_config(env)}}}
    previous = None
    for number, faults in enumerate(runs):
        env.sandbox.state.clear_faults()
        for fault in faults:
            after_effect = {"after_effect": True} if fault.get("kind") == "reset" else {}
            env.sandbox.state.inject_fault(
                **fault, **after_effect, count=1 if fault is REFUSED_ITEM else 100
            )
        if previous is None:
            run = execute_job(job, instance, run_config=run_config)
        else:
            run = reexecute(job, instance, previous.run_id)
        with run as result:
            last = number == len(runs) - 1
            assert result.success is last
            if previous is not None:
                assert result.dagster_run.root_run_id == (
                    previous.dagster_run.root_run_id or previous.run_id
                )
            opened = [i for i in env.invoices() if i["status"] == "open"]
            assert len(opened) <= 1
            previous = result

    invoices = env.invoices()
    [link] = env.db[store.PAYMENT_LINKS].find()
    [open_invoice] = [i for i in invoices if i["status"] == "open"]
    assert [i["status"] for i in invoices if i["status"] != "deleted"] == ["open"]
    assert link["invoice_id"] == open_invoice["id"]
    assert len(open_invoice["lines"]["data"]) == 2
    assert len(env.sandbox.state.customers(STRIPE_ACCOUNT)) == 1


# --- the shortener -------------------------------------------------------------------------------


def test_a_short_url_is_saved_when_the_shortener_answers(env):
    with start_local_shortener() as shortener:
        result = run_job(env, job_config(env), shortener_url=shortener.url)
        assert result.success, failure_description(result)
        link = env.db[store.PAYMENT_LINKS].find_one({})
        assert link["short_url"].startswith(shortener.url + "/")
        assert shortener.resolve(link["short_url"].rsplit("/", 1)[1]) == link["hosted_invoice_url"]
    assert published(result)["short_url"] == link["short_url"]


def test_the_long_url_is_kept_when_the_shortener_is_down(env):
    result = run_job(env, job_config(env), shortener_url=closed_port_url())
    warnings = [
        entry.user_message
        for entry in env.instance.all_logs(result.run_id)
        if entry.level == logging.WARNING
    ]

    assert result.success, failure_description(result)
    link = env.db[store.PAYMENT_LINKS].find_one({})
    assert link["short_url"] == link["hosted_invoice_url"]
    assert published(result)["short_url"] == link["hosted_invoice_url"]
    assert any("Keeping the long invoice URL" in message for message in warnings)


# --- config validation ---------------------------------------------------------------------------


def _items(*items):
    return {"line_items": list(items)}


VALIDATION_CASES = [
    ("account_id", {"account_id": "not-an-id"}),
    ("contact_id", {"contact_id": "65000000000000000000000"}),
    ("currency", {"currency": "us"}),
    ("currency", {"currency": "xyz"}),
    ("currency", {"currency": "usd1"}),
    ("line_items", _items()),
    ("line_items", _items(*[{"amount": 1, "description": "x"}] * 251)),
    ("line_items[0]", _items({"price_id": "price_1", "amount": 5, "description": "x"})),
    ("line_items[0]", _items({"quantity": 1})),
    ("line_items[0].amount", _items({"amount": 0, "description": "x"})),
    ("line_items[0].amount", _items({"amount": -100, "description": "x"})),
    ("line_items[0].quantity", _items({"price_id": "price_1", "quantity": 0})),
    ("line_items[1].description", _items({"price_id": "price_1"}, {"amount": 500})),
    ("line_items[0].price_id", _items({"price_id": "price 1"})),
    ("due_date", {"due_date": "2020-01-01"}),
    ("due_date", {"due_date": "31/12/2030"}),
    ("due_date", {"due_date": "2031-02-30"}),
    ("user_id", {"user_id": "someone"}),
    ("client_id", {"client_id": "client"}),
]


@pytest.mark.parametrize(
    ("field", "overrides"),
    VALIDATION_CASES,
    ids=[f"{field}-{i}" for i, (field, _) in enumerate(VALIDATION_CASES)],
)
def test_invalid_config_fails_naming_the_field_before_any_stripe_call(env, field, overrides):
    result = run_job(env, job_config(env, **overrides))

    assert not result.success
    description = failure_description(result)
    assert description.startswith("Invalid payment link config: ")
    assert f" {field}: " in description
    assert env.requests() == []


# --- the CRM API ("Router") path -----------------------------------------------------------------


class RouterStub:
    """The CRM's ``POST /v1/billing/customer``: checks the JWT, creates the customer in the
    sandbox (without HTTP, so the sandbox log shows only the job's own calls)."""

    def __init__(self, sandbox, secret: str):
        self.calls: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                token = self.headers["Authorization"].removeprefix("Bearer ")
                call = {"path": self.path, "body": body, "token": token, "headers": self.headers}
                try:
                    call["claims"] = jwt.decode(token, secret, algorithms=["HS256"])
                    call["header"] = jwt.get_unverified_header(token)
                except jwt.InvalidTokenError as error:
                    self._answer(401, {"error": {"message": str(error)}})
                    return
                finally:
                    stub.calls.append(call)
                customer = sandbox.state.add_customer(STRIPE_ACCOUNT, **_customer_fields(body))
                self._answer(200, {"success": True, "data": customer})

            def _answer(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self):
        self._server.shutdown()
        self._server.server_close()


def _customer_fields(params: dict) -> dict:
    fields = {k: params[k] for k in ("name", "email", "phone", "metadata") if k in params}
    if "address" in params:
        fields["address"] = {
            key: params["address"].get(key)
            for key in ("line1", "line2", "city", "state", "postal_code", "country")
        }
    return fields


@pytest.fixture
def router(env):
    stub = RouterStub(env.sandbox, APP_SECRET)
    yield stub
    stub.stop()


def test_router_creates_the_customer_with_a_signed_token(env, router):
    before = int(time.time())

    result = run_job(env, job_config(env), crm_api_url=router.url, app_secret=APP_SECRET)

    assert result.success, failure_description(result)
    [call] = router.calls
    assert call["path"] == "/v1/billing/customer"
    assert call["header"]["alg"] == "HS256"
    claims = call["claims"]
    assert {k: v for k, v in claims.items() if k not in ("iat", "exp")} == {
        "type": "access_token",
        "uid": str(OWNER_ID),
        "account_id": str(ACCOUNT_ID),
        "parent_account": str(PARENT_ACCOUNT_ID),
        "client_id": str(CLIENT_ID),
        "scope": ACCESS_TOKEN_SCOPE,
    }
    assert before - 5 <= claims["iat"] <= time.time() + 5
    assert claims["exp"] - claims["iat"] == 3600
    assert call["headers"]["Idempotency-Key"] == f"{result.run_id}:customer"
    assert call["body"]["email"] == "ada@example.com"

    [customer] = env.sandbox.state.customers(STRIPE_ACCOUNT)
    assert env.contact()["stripe_customer_id"] == customer["id"]
    assert env.invoices()[0]["customer"] == customer["id"]
    assert env.requests(CUSTOMERS_PATH, "POST") == []


def test_router_token_uses_the_configured_user_and_client(env, router):
    user, client = ObjectId(), ObjectId()

    result = run_job(
        env,
        job_config(env, user_id=str(user), client_id=str(client)),
        crm_api_url=router.url,
        app_secret=APP_SECRET,
    )

    assert result.success, failure_description(result)
    claims = router.calls[0]["claims"]
    assert (claims["uid"], claims["client_id"]) == (str(user), str(client))


def test_router_without_app_secret_fails_clearly(env, router):
    result = run_job(env, job_config(env), crm_api_url=router.url)

    assert not result.success
    description = failure_description(result)
    assert "APP_SECRET is not set" in description
    assert "API_BASE_URL" in description
    assert router.calls == []
    assert env.sandbox.state.customers(STRIPE_ACCOUNT) == []
    assert env.invoices() == []


def test_router_token_without_a_user_or_client_names_them(env, router):
    env.db[store.CONTACTS].update_one({"_id": env.contact_id}, {"$unset": {"owner": ""}})
    env.db[store.ACCOUNTS].update_one({"_id": ACCOUNT_ID}, {"$unset": {"client_id": ""}})

    result = run_job(env, job_config(env), crm_api_url=router.url, app_secret=APP_SECRET)

    assert not result.success
    description = failure_description(result)
    assert " user_id: required to create customers through API_BASE_URL" in description
    assert " client_id: " in description
    assert router.calls == []


# --- secrets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_no_secret_reaches_run_config_tags_logs_or_metadata(env, router, outcome):
    config = job_config(env)
    if outcome == "failure":
        config["line_items"].append({"price_id": "price_missing", "quantity": 1})

    result = run_job(env, config, crm_api_url=router.url, app_secret=APP_SECRET)
    assert result.success is (outcome == "success")
    run = env.instance.get_run_by_id(result.run_id)
    records = [serialize_value(entry) for entry in env.instance.all_logs(result.run_id)]
    stored = [json.dumps(run.run_config), json.dumps(run.tags), *records]

    assert len(records) > 10
    tokens = [call["token"] for call in router.calls]
    for secret in (SECRET_KEY, APP_SECRET, *tokens):
        assert not any(secret in text for text in stored)
