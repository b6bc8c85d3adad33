"""Dry runs of ``billing_contact_import``: the plan and its preview, and not one write."""

from __future__ import annotations

import pytest
from bson import ObjectId
from dagster import DagsterInstance

from stripe_crm_pipelines import store
from tests.billing_import.test_job import (
    CONNECTED_ACCOUNT,
    add_account,
    add_request,
    import_result,
    op_metadata,
    run_import,
)


@pytest.fixture
def instance():
    return DagsterInstance.ephemeral()


def seed(sandbox, db) -> ObjectId:
    sandbox.state.add_customer(
        CONNECTED_ACCOUNT, id="cus_a", email="a@example.com", name="Ann", created=1_700_000_003
    )
    sandbox.state.add_customer(
        CONNECTED_ACCOUNT, id="cus_b", email="B@example.com", name="Bob", created=1_700_000_002
    )
    sandbox.state.add_customer(
        CONNECTED_ACCOUNT, id="cus_c", email="c@example.com", name="Cy", created=1_700_000_001
    )
    account_id = add_account(db)
    db[store.CONTACTS].insert_many(
        [
            {"parent_account": account_id, "type": "person", "email": "a@example.com",
             "email_key": "a@example.com", "stripe_customer_id": "cus_a", "name": "Annie"},
            # Created by another tool: no email key, matched by email all the same.
            {"parent_account": account_id, "type": "person", "email": "b@example.com",
             "name": "Bob"},
        ]
    )  # fmt: skip
    return account_id


def test_a_dry_run_writes_nothing_and_previews_every_change(
    db, mongo_uri, stripe_sandbox, instance
):
    account_id = seed(stripe_sandbox, db)
    before = list(db[store.CONTACTS].find({}))
    import_id = add_request(db, account_id, mappings={"name": "name"}, dry_run=True)

    result = run_import(mongo_uri, stripe_sandbox, import_id, instance)

    assert result.success
    assert list(db[store.CONTACTS].find({})) == before, "no contact and no email key written"
    assert db[store.IMPORT_CHANGES].count_documents({}) == 0
    document = import_result(db, import_id)
    assert document["dry_run"] is True
    assert (document["status"], document["records_added"], document["records_updated"]) == (
        "completed",
        1,
        2,
    )
    assert document["email_keys_backfilled"] == 1
    assert document["preview"] == [
        {"stripe_customer_id": "cus_a", "email": "a@example.com", "action": "update",
         "changes": {"name": ["Annie", "Ann"]}},
        {"stripe_customer_id": "cus_b", "email": "B@example.com", "action": "update",
         "changes": {"stripe_customer_id": [None, "cus_b"],
                     "email": ["b@example.com", "B@example.com"]}},
        {"stripe_customer_id": "cus_c", "email": "c@example.com", "action": "add",
         "changes": {"stripe_customer_id": [None, "cus_c"], "email": [None, "c@example.com"],
                     "name": [None, "Cy"]}},
    ]  # fmt: skip
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["result_id"]) == ("completed", document["_id"])

    metadata = op_metadata(result, "record_import_result")
    assert metadata["dry_run"] is True
    rows = [record.data for record in metadata["preview"].records]
    assert rows[0] == {
        "stripe_customer_id": "cus_a",
        "email": "a@example.com",
        "action": "update",
        "changes": 'name: "Annie" → "Ann"',
    }
    assert rows[2]["changes"].startswith('stripe_customer_id: ∅ → "cus_c"')
    assert result.asset_materializations_for_node("record_import_result") == []


def test_the_real_run_after_a_dry_run_does_what_the_preview_said(
    db, mongo_uri, stripe_sandbox, instance
):
    account_id = seed(stripe_sandbox, db)
    dry = add_request(db, account_id, mappings={"name": "name"}, dry_run=True)
    assert run_import(mongo_uri, stripe_sandbox, dry, instance).success

    real = add_request(db, account_id, mappings={"name": "name"})
    assert run_import(mongo_uri, stripe_sandbox, real, instance).success

    planned, done = import_result(db, dry), import_result(db, real)
    assert (done["dry_run"], "preview" in done) == (False, False)
    for count in ("records_added", "records_updated", "records_skipped", "duplicates"):
        assert done[count] == planned[count]
    for entry in planned["preview"]:
        contact = db[store.CONTACTS].find_one({"stripe_customer_id": entry["stripe_customer_id"]})
        for field, (_, after) in entry["changes"].items():
            assert contact[field] == after


def test_a_failed_dry_run_is_recorded_as_a_dry_run(db, mongo_uri, stripe_sandbox, instance):
    import_id = add_request(db, add_account(db), mappings={"name": "owner"}, dry_run=True)

    assert not run_import(mongo_uri, stripe_sandbox, import_id, instance).success

    document = import_result(db, import_id)
    assert (document["status"], document["dry_run"]) == ("failed", True)
