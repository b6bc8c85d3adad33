"""Shared fixtures and helpers: an in-process store per test, the Stripe sandbox
(tests/sandbox_plugin.py), and the accounts, requests and runs the billing import tests build."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId
from dagster import DagsterEventType, DagsterInstance

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.resources import MongoResource, StripeResource

pytest_plugins = ["tests.sandbox_plugin", "tests.devstack"]

SECRET_KEY = "sk_test_51BillingImportSecretKeyForTests0000"
CONNECTED_ACCOUNT = "acct_1BillingImportTest"
SEED_MAPPINGS = {
    "address-street": "address.street",
    "address-city": "address.city",
    "address-state": "address.state_province",
}
"""The seed's mapping example (SPEC §4)."""


@pytest.fixture
def mongo_uri() -> str:
    """A fresh in-process mongomock store, private to the test."""
    return f"mongomock://test-{uuid.uuid4().hex}"


@pytest.fixture
def db(mongo_uri):
    database = store.connect(mongo_uri)
    store.ensure_indexes(database)
    return database


@pytest.fixture
def instance() -> DagsterInstance:
    return DagsterInstance.ephemeral()


@pytest.fixture
def contacts(db):
    return db[store.CONTACTS]


@pytest.fixture
def unique_contacts(db):
    """Contacts with MongoDB's unique indexes; mongomock checks them by scanning, so only
    the tests about duplicate-key errors use them."""
    enforce_unique_contacts(db)
    return db[store.CONTACTS]


@pytest.fixture
def sandbox(stripe_sandbox):
    return stripe_sandbox


def enforce_unique_contacts(db) -> None:
    """The partial unique indexes production MongoDB has on contacts.

    ``store.ensure_indexes`` leaves them off on mongomock; mongomock does honour
    ``partialFilterExpression`` when the index is made with ``create_index``.
    """
    for field in ("stripe_customer_id", "email_key"):
        db[store.CONTACTS].create_index(
            [("parent_account", 1), ("type", 1), (field, 1)],
            name=f"test_unique_{field}",
            unique=True,
            partialFilterExpression={field: {"$type": "string"}},
        )


def add_account(
    db,
    *,
    secret_key: str | None = SECRET_KEY,
    stripe_account: str = CONNECTED_ACCOUNT,
    connected_apps: Any = ("billing",),
) -> ObjectId:
    """An account, with a billing Stripe key unless ``secret_key`` is None."""
    account_id = db[store.ACCOUNTS].insert_one({"name": "Acme Agency"}).inserted_id
    if secret_key is not None:
        db[store.STRIPE_KEYS].insert_one(
            {
                "account_id": account_id,
                "connected_apps": list(connected_apps),
                "token": {"access_token": secret_key, "stripe_user_id": stripe_account},
            }
        )
    return account_id


def add_request(
    db,
    account_id: ObjectId,
    *,
    import_type: str = "contacts",
    mappings: dict | None = None,
    new_contact: bool = True,
    created_at: datetime | None = None,
    **fields: Any,
) -> ObjectId:
    """A pending import request as the CRM writes it (no fields the project adds)."""
    return (
        db[store.QUEUES]
        .insert_one(
            {
                "status": "pending",
                "source": "billing-contacts",
                "in_progress": False,
                "type": import_type,
                "account_id": account_id,
                "user_id": ObjectId(),
                "parent_account": ObjectId(),
                "client_id": ObjectId(),
                "mappings": mappings if mappings is not None else {},
                "new_contact": new_contact,
                "createdAt": created_at or datetime.now(UTC),
                **fields,
            }
        )
        .inserted_id
    )


def run_import(
    mongo_uri: str,
    sandbox,
    import_id: ObjectId,
    instance: DagsterInstance,
    **config: Any,
):
    """``billing_contact_import`` for ``import_id`` in process, against the sandbox."""
    return billing_contact_import.execute_in_process(
        run_config={
            "ops": {"claim_import_request": {"config": {"import_id": str(import_id), **config}}}
        },
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "stripe": StripeResource(api_base=sandbox.url, initial_retry_delay_seconds=0.01),
        },
        instance=instance,
        raise_on_error=False,
    )


def import_result(db, import_id: ObjectId) -> dict:
    """The one ``contact_import_results`` document of ``import_id``."""
    [result] = db[store.IMPORT_RESULTS].find({"import_id": import_id})
    return result


def run_failure_message(result) -> str:
    [failure] = [
        event for event in result.all_events if event.event_type == DagsterEventType.STEP_FAILURE
    ]
    return failure.step_failure_data.user_failure_data.description


def op_metadata(result, op_name: str) -> dict[str, Any]:
    [output] = [
        event
        for event in result.events_for_node(op_name)
        if event.event_type == DagsterEventType.STEP_OUTPUT
    ]
    return {key: value.value for key, value in output.step_output_data.metadata.items()}


def everything_recorded(instance: DagsterInstance, run_id: str) -> str:
    """Every event, log message, metadata value, tag and config value of a run, as text."""
    run = instance.get_run_by_id(run_id)
    parts = [json.dumps(run.tags), json.dumps(run.run_config, default=str)]
    for entry in instance.all_logs(run_id):
        parts.append(entry.user_message or "")
        parts.append(repr(entry.dagster_event))
    return "\n".join(parts)
