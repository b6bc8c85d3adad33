"""Reliability and security of the billing import: resume, recovery, faults, bad input, isolation.

Helpers shared by the modules here; the request and account helpers are in ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bson import ObjectId
from dagster import DagsterInstance, SensorResult, build_sensor_context

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.mapping import normalize_email
from stripe_crm_pipelines.billing_import.sensor import billing_import_sensor
from stripe_crm_pipelines.resources import MongoResource
from stripe_crm_pipelines.resources.import_batching import ImportBatchingResource

VOLATILE_CONTACT_FIELDS = frozenset(
    {"_id", "parent_account", "owner", "created_by", "createdAt", "old_field_values"}
)
"""Fields that differ between two equally correct imports (ids, times, the requesting user)."""


def checkpointed(db, import_id: ObjectId) -> bool:
    """Whether the import has checkpointed a batch (counted, with more to list)."""
    checkpoint = (db[store.QUEUES].find_one({"_id": import_id}) or {}).get("checkpoint") or {}
    return checkpoint.get("cursor") is not None


def contact_snapshot(db, account_id: ObjectId) -> dict[str, dict[str, Any]]:
    """The account's contacts by Stripe customer id, without :data:`VOLATILE_CONTACT_FIELDS`;
    fails on two contacts of one customer."""
    snapshot: dict[str, dict[str, Any]] = {}
    for contact in db[store.CONTACTS].find({"parent_account": account_id}):
        customer_id = contact["stripe_customer_id"]
        assert customer_id not in snapshot, f"two contacts for {customer_id}"
        snapshot[customer_id] = {
            key: value for key, value in contact.items() if key not in VOLATILE_CONTACT_FIELDS
        }
    return snapshot


def expected_customer_ids(customers_newest_first: Iterable[Mapping[str, Any]]) -> set[str]:
    """The customers that must end up as contacts of a fresh import with ``new_contact``: the
    newest customer of each email (compared trimmed and case-insensitively) and every customer
    without an email."""
    seen: set[str] = set()
    wanted: set[str] = set()
    for customer in customers_newest_first:
        key = normalize_email(customer.get("email"))
        if key is None or key not in seen:
            wanted.add(customer["id"])
        if key is not None:
            seen.add(key)
    return wanted


def assert_no_duplicate_contacts(db, account_id: ObjectId) -> None:
    contacts = list(db[store.CONTACTS].find({"parent_account": account_id}))
    customer_ids = [c["stripe_customer_id"] for c in contacts]
    email_keys = [c["email_key"] for c in contacts if c.get("email_key")]
    assert len(customer_ids) == len(set(customer_ids)), "a Stripe customer has two contacts"
    assert len(email_keys) == len(set(email_keys)), "an email has two contacts"


def assert_counts_add_up(result: Mapping[str, Any], customers: int) -> None:
    """Every fetched customer is counted exactly once, in one of the result's counts."""
    assert result["customers_fetched"] == customers
    counted = (
        result["records_added"]
        + result["records_updated"]
        + result["records_skipped"]
        + result["duplicates"]
        + result["import_errors_count"]
    )
    assert counted == customers, result


def evaluate_sensor(instance: DagsterInstance, mongo_uri: str) -> SensorResult:
    """One tick of the sensor, every request with a run of its own."""
    context = build_sensor_context(
        instance=instance,
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "import_batching": ImportBatchingResource(max_requests=0),
        },
    )
    return billing_import_sensor.evaluate_tick(context)


class FaultyCollection:
    """A collection whose calls go through ``before(collection_name, method, args)`` first; the
    hook may raise (a fault before the call) or return a callable run after the call succeeded
    (a fault after it took effect, whose reply is lost)."""

    def __init__(self, collection, name: str, before: Callable[..., Any]):
        self._collection = collection
        self._name = name
        self._before = before

    def __getattr__(self, attribute: str):
        value = getattr(self._collection, attribute)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            after = self._before(self._name, attribute, args)
            result = value(*args, **kwargs)
            if after is not None:
                after()
            return result

        return call


class FaultyDatabase:
    """A database whose collections are :class:`FaultyCollection`s with the same hook."""

    def __init__(self, database, before: Callable[..., Any]):
        self._database = database
        self._before = before

    def __getitem__(self, name: str) -> FaultyCollection:
        return FaultyCollection(self._database[name], name, self._before)

    def __getattr__(self, name: str):
        return getattr(self._database, name)
