"""Queuing an import by hand: the request built as the CRM would, refused before insert when bad."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from bson import ObjectId

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import queue
from stripe_crm_pipelines.billing_import.new_requests import (
    build_import_request,
)
from stripe_crm_pipelines.billing_import.requests import (
    InvalidImportRequest,
    parse_import_request,
)
from tests.billing_import.test_job import add_account, add_request

NOW = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)
USER = ObjectId("65b000000000000000000001")


def build(db, account_id, **options):
    options.setdefault("import_type", "contacts")
    options.setdefault("queued_by", "cli")
    return build_import_request(db, account_id=account_id, now=NOW, **options)


def test_a_queued_request_is_what_the_crm_writes_plus_the_controls(db):
    account_id = add_account(db)

    document = build(
        db,
        str(account_id),
        mappings={"name": "name", "address-city": "address.city"},
        max_customers=100,
        user_id=str(USER),
    )
    import_id = queue.enqueue(db, document)

    stored = db[store.QUEUES].find_one({"_id": import_id})
    assert stored == {
        "_id": import_id,
        "status": "pending",
        "source": "billing-contacts",
        "in_progress": False,
        "type": "contacts",
        "account_id": account_id,
        "user_id": USER,
        "parent_account": account_id,
        "client_id": None,
        "mappings": {"name": "name", "address-city": "address.city"},
        "new_contact": True,
        "dry_run": False,
        "keep_in_sync": False,
        "deletion_policy": "keep",
        "queued_by": "cli",
        "max_customers": 100,
        "createdAt": NOW,
    }
    request = parse_import_request(stored)
    assert (request.queued_by, request.max_customers, request.contact_type) == (
        "cli",
        100,
        "person",
    )


def test_crm_fields_come_from_the_account_document(db):
    account_id = add_account(db)
    owner, parent, client = ObjectId(), ObjectId(), ObjectId()
    db[store.ACCOUNTS].update_one(
        {"_id": account_id},
        {"$set": {"owner": owner, "parent_account": parent, "client_id": client}},
    )
    add_request(db, account_id)

    document = build(db, account_id, import_type="companies", queued_by="launchpad")

    assert (document["user_id"], document["parent_account"], document["client_id"]) == (
        owner,
        parent,
        client,
    )
    assert (document["type"], document["queued_by"]) == ("companies", "launchpad")


def test_crm_fields_fall_back_to_the_accounts_newest_request(db):
    account_id = add_account(db)
    add_request(db, account_id, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    newest = add_request(db, account_id, created_at=datetime(2026, 1, 2, tzinfo=UTC))
    newest_document = db[store.QUEUES].find_one({"_id": newest})

    document = build(db, account_id)

    assert document["user_id"] == newest_document["user_id"]
    assert document["parent_account"] == newest_document["parent_account"]
    assert document["client_id"] == newest_document["client_id"]


def test_the_given_user_wins(db):
    account_id = add_account(db)
    db[store.ACCOUNTS].update_one({"_id": account_id}, {"$set": {"owner": ObjectId()}})

    assert build(db, account_id, user_id=USER)["user_id"] == USER


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"import_type": "people"}, "type: 'people' is not one of 'contacts', 'companies'"),
        (
            {"mappings": {"adress-city": "address.city"}},
            "mappings['adress-city']: Stripe key names no field of a Stripe customer "
            "('adress' is not one of its fields); did you mean 'address-city'?",
        ),
        ({"mappings": {"name": "owner"}}, "mappings['name']: CRM field 'owner' is set by"),
        ({"max_customers": 0}, "max_customers: must be a positive integer, got 0"),
        ({"deletion_policy": "drop"}, "deletion_policy: 'drop' is not one of"),
        ({"dry_run": True, "keep_in_sync": True}, "keep_in_sync: a dry run writes nothing"),
        ({"user_id": "me"}, "user_id: 'me' is not an ObjectId"),
    ],
)
def test_invalid_requests_are_refused_naming_the_field(db, options, message):
    account_id = add_account(db)
    options.setdefault("user_id", USER)

    with pytest.raises(InvalidImportRequest) as raised:
        build(db, account_id, **options)

    assert str(raised.value).startswith(message)


def test_unknown_account_is_refused(db):
    missing = ObjectId()

    with pytest.raises(InvalidImportRequest, match=f"account_id: no account {missing} in"):
        build(db, missing, user_id=USER)
    with pytest.raises(InvalidImportRequest, match="account_id: 'acme' is not an ObjectId"):
        build(db, "acme", user_id=USER)


def test_account_without_billing_key_is_refused(db):
    account_id = add_account(db, secret_key=None)

    with pytest.raises(InvalidImportRequest) as raised:
        build(db, account_id, user_id=USER)

    assert str(raised.value) == (
        f"account_id: account {account_id} has no Stripe key connected for billing; "
        "the import would wait until one is connected"
    )


def test_user_is_required_when_the_account_cannot_tell(db):
    account_id = add_account(db)

    with pytest.raises(InvalidImportRequest, match=r"^user_id: account .* names no owner"):
        build(db, account_id)
