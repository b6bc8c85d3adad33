"""Faults: Stripe answering 429 with Retry-After, 5xx, timing out and dropping connections;
MongoDB dropping connections and timing out; two imports of one account racing on the same
contacts. Each import ends with exactly the right contacts.

The large imports use the embedded store (``file://``, what ``make dev`` runs on): mongomock
scans the whole collection for every upsert, which makes 5,000 customers take minutes."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from bson import ObjectId
from dagster import DagsterInstance
from pymongo import InsertOne
from pymongo.errors import AutoReconnect, NetworkTimeout

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import queue
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from tests.conftest import (
    CONNECTED_ACCOUNT,
    add_account,
    add_request,
    enforce_unique_contacts,
    import_result,
    run_import,
)
from tests.reliability import (
    FaultyDatabase,
    assert_counts_add_up,
    assert_no_duplicate_contacts,
    contact_snapshot,
    expected_customer_ids,
)

LISTING = "GET /v1/customers"


@pytest.fixture
def store_uri(tmp_path) -> str:
    """A fresh embedded store, shared by the threads and processes of the test."""
    uri = (tmp_path / "store").as_uri()
    store.ensure_indexes(store.connect(uri))
    return uri


def imported_customer_ids(db, account_id: ObjectId) -> set[str]:
    return set(contact_snapshot(db, account_id))


def run(mongo_uri, sandbox, import_id, instance, *, mongo: MongoResource | None = None, **stripe):
    return billing_contact_import.execute_in_process(
        run_config={"ops": {"claim_import_request": {"config": {"import_id": str(import_id)}}}},
        resources={
            "mongo": mongo or MongoResource(uri=mongo_uri),
            "stripe": StripeResource(
                api_base=sandbox.url, initial_retry_delay_seconds=0.01, **stripe
            ),
        },
        instance=instance,
        raise_on_error=False,
    )


# --- Stripe -----------------------------------------------------------------------------------

STRIPE_FAULTS = [
    {"status": 429, "retry_after": 1, "count": 3},
    {"status": 500, "count": 3},
    {"status": 502, "count": 1},
    {"status": 503, "count": 2},
    {"kind": "timeout", "delay": 4, "count": 2},
    {"kind": "reset", "count": 3},
    {"kind": "reset", "after_effect": True, "count": 1},
    {"status": 503, "probability": 0.03, "count": None},
]


def test_5000_customers_under_stripe_faults_end_with_exactly_the_right_contacts(
    store_uri, sandbox, instance
):
    sandbox.state.seed_customers(5000, seed=51, account=CONNECTED_ACCOUNT)
    for fault in STRIPE_FAULTS:
        sandbox.state.inject_fault(endpoint=LISTING, **fault)
    db = store.connect(store_uri)
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings={"name": "name", "phone": "phone"})

    result = run(store_uri, sandbox, import_id, instance, timeout_seconds=2.5, max_retries=10)

    # The client retries each request (honouring Retry-After); a burst longer than its retries
    # fails the op, which Dagster retries from the last checkpoint.
    assert result.success
    customers = sandbox.state.customers(CONNECTED_ACCOUNT)
    assert imported_customer_ids(db, account_id) == expected_customer_ids(customers)
    assert_no_duplicate_contacts(db, account_id)
    document = import_result(db, import_id)
    assert document["status"] == "completed"
    assert_counts_add_up(document, 5000)
    assert document["import_errors_count"] == 0
    assert document["records_added"] == len(expected_customer_ids(customers))
    log = sandbox.state.requests(path="/v1/customers")
    hit = Counter(entry["fault"] for entry in log if entry["fault"])
    assert hit["status"] >= 9 and hit["timeout"] == 2 and hit["reset"] == 4, hit
    assert sum(entry["status"] == 429 for entry in log) == 3


def test_stripe_failing_for_longer_than_the_retries_fails_the_import_clearly(
    db, mongo_uri, sandbox, instance
):
    sandbox.state.seed_customers(50, account=CONNECTED_ACCOUNT)
    sandbox.state.inject_fault(endpoint=LISTING, status=503, count=None)
    account_id = add_account(db)
    import_id = add_request(db, account_id)

    result = run(mongo_uri, sandbox, import_id, instance, max_retries=1)

    assert not result.success
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert request["status"] == "failed"
    assert "Stripe is unavailable" in request["error"]
    assert "HTTP 503" in request["error"]
    assert import_result(db, import_id)["status"] == "failed"
    assert db[store.CONTACTS].count_documents({}) == 0


# --- MongoDB ----------------------------------------------------------------------------------


class MongoFaults:
    """Every ``every``-th call on the import's collections fails with AutoReconnect or
    NetworkTimeout (alternately) before it reaches the store, up to ``limit`` faults; the
    methods in ``after_effect`` fail once each after taking effect (the reply is lost)."""

    def __init__(self, *, every: int, limit: int, after_effect: set[tuple[str, str]]):
        self.every = every
        self.limit = limit
        self.after_effect = set(after_effect)
        self.calls = 0
        self.injected: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, collection: str, method: str, args):
        with self.lock:
            if (collection, method) in self.after_effect:
                self.after_effect.discard((collection, method))
                self.injected.append(f"{collection}.{method} (after effect)")
                return self._lost_reply
            self.calls += 1
            if self.calls % self.every or len(self.injected) >= self.limit:
                return None
            error = AutoReconnect if len(self.injected) % 2 else NetworkTimeout
            self.injected.append(f"{collection}.{method}")
        raise error(f"injected fault {len(self.injected)}")

    @staticmethod
    def _lost_reply():
        raise AutoReconnect("connection closed before the reply (injected)")


def test_transient_mongodb_errors_are_retried_and_the_contacts_are_exact(
    store_uri, sandbox, instance, monkeypatch
):
    sandbox.state.seed_customers(1200, seed=52, account=CONNECTED_ACCOUNT)
    db = store.connect(store_uri)
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings={"name": "name"})
    faults = MongoFaults(
        every=3,
        limit=20,
        after_effect={(store.QUEUES, "find_one_and_update"), (store.CONTACTS, "bulk_write")},
    )
    open_database = store.open_database
    monkeypatch.setattr(
        store, "open_database", lambda uri, name: FaultyDatabase(open_database(uri, name), faults)
    )
    mongo = MongoResource(uri=store_uri, retry_initial_delay_seconds=0.001)

    result = run(store_uri, sandbox, import_id, instance, mongo=mongo)

    assert result.success
    assert len(faults.injected) == 20, faults.injected
    assert {name.split(" ")[0] for name in faults.injected} >= {
        f"{store.QUEUES}.find_one_and_update",
        f"{store.CONTACTS}.find",
        f"{store.CONTACTS}.bulk_write",
    }
    customers = sandbox.state.customers(CONNECTED_ACCOUNT)
    assert imported_customer_ids(db, account_id) == expected_customer_ids(customers)
    assert_no_duplicate_contacts(db, account_id)
    document = import_result(db, import_id)
    assert_counts_add_up(document, 1200)
    assert document["import_errors_count"] == 0
    # A bulk write repeated after its reply was lost counts its creations again as updates.
    assert document["records_added"] + document["records_updated"] == len(
        expected_customer_ids(customers)
    )
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["attempts"]) == ("completed", 1)


# --- two imports of one account -----------------------------------------------------------------


class RacingContacts:
    """The contacts collection as MongoDB answers when two imports insert the same contacts at
    once: ``race()`` (the other import) writes first, then this import's upserts, which had
    found no contact either, insert and collide on the unique indexes (E11000)."""

    def __init__(self, collection, race):
        self._collection = collection
        self._race = race

    def __getattr__(self, name):
        return getattr(self._collection, name)

    def bulk_write(self, requests, ordered=True, **kwargs):
        race = self._race.pop() if self._race else None
        if race is None:
            return self._collection.bulk_write(requests, ordered=ordered, **kwargs)
        race()
        inserts = [InsertOne(_inserted(op)) if op._upsert else op for op in requests]
        return self._collection.bulk_write(inserts, ordered=ordered, **kwargs)


def _inserted(upsert) -> dict:
    update = upsert._doc
    return {**upsert._filter, **update.get("$setOnInsert", {}), **update.get("$set", {})}


class RacingDatabase(FaultyDatabase):
    def __init__(self, database, race: list):
        super().__init__(database, lambda *args: None)
        self._race = race

    def __getitem__(self, name):
        collection = self._database[name]
        return RacingContacts(collection, self._race) if name == store.CONTACTS else collection


def allow_two_imports_of_one_account(monkeypatch) -> None:
    """Switch off the claim-time check that keeps a second import of an account from going on
    (billing_import/exclusion.py), to test the defence behind it: the unique indexes and the
    upsert retried as an update."""
    monkeypatch.setattr(queue, "others_working_on", lambda *args: [])


def test_an_upsert_that_loses_a_race_for_a_key_is_retried_as_an_update(
    db, mongo_uri, sandbox, instance, monkeypatch
):
    enforce_unique_contacts(db)
    allow_two_imports_of_one_account(monkeypatch)
    sandbox.state.seed_customers(180, seed=53, account=CONNECTED_ACCOUNT)
    account_id = add_account(db)
    first = add_request(db, account_id, mappings={"name": "name"})
    second = add_request(db, account_id, mappings={"name": "name"})
    open_database = store.open_database
    race: list = []
    monkeypatch.setattr(
        store, "open_database", lambda uri, name: RacingDatabase(open_database(uri, name), race)
    )

    def second_import_writes_first() -> None:
        thread = threading.Thread(
            target=lambda: run(mongo_uri, sandbox, second, DagsterInstance.ephemeral())
        )
        thread.start()
        thread.join()

    race.append(second_import_writes_first)
    result = run(mongo_uri, sandbox, first, instance)

    assert result.success
    assert race == [], "the race happened"
    customers = sandbox.state.customers(CONNECTED_ACCOUNT)
    assert imported_customer_ids(db, account_id) == expected_customer_ids(customers)
    assert_no_duplicate_contacts(db, account_id)
    one, two = import_result(db, first), import_result(db, second)
    assert one["import_errors_count"] == two["import_errors_count"] == 0
    assert one["records_added"] == 0, "every contact of the first page was taken by the other"
    assert two["records_added"] == len(expected_customer_ids(customers))
    for document in (one, two):
        assert_counts_add_up(document, 180)


def test_two_imports_of_one_account_at_once_on_the_embedded_store_give_one_contact_each(
    store_uri, sandbox, monkeypatch
):
    allow_two_imports_of_one_account(monkeypatch)
    sandbox.state.seed_customers(600, seed=54, account=CONNECTED_ACCOUNT)
    sandbox.state.configure(endpoint_latency_ms={LISTING: 20})
    db = store.connect(store_uri)
    account_id = add_account(db)
    imports = [add_request(db, account_id, mappings={"name": "name"}) for _ in range(2)]
    results: dict[ObjectId, bool] = {}

    def import_(import_id: ObjectId) -> None:
        outcome = run_import(store_uri, sandbox, import_id, DagsterInstance.ephemeral())
        results[import_id] = outcome.success

    threads = [threading.Thread(target=import_, args=(import_id,)) for import_id in imports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert results == dict.fromkeys(imports, True)
    customers = sandbox.state.customers(CONNECTED_ACCOUNT)
    expected = expected_customer_ids(customers)
    assert imported_customer_ids(db, account_id) == expected
    assert_no_duplicate_contacts(db, account_id)
    documents = [import_result(db, import_id) for import_id in imports]
    assert sum(document["records_added"] for document in documents) == len(expected)
    for document in documents:
        assert document["import_errors_count"] == 0
        assert document["records_added"] + document["records_updated"] == len(expected)
        assert_counts_add_up(document, 600)
