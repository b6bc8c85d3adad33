"""``billing_contact_import`` end to end: mongomock store, the Stripe sandbox over HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from bson import ObjectId
from dagster import DagsterEventType

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from tests.conftest import (
    CONNECTED_ACCOUNT,
    SECRET_KEY,
    SEED_MAPPINGS,
    add_account,
    add_request,
    everything_recorded,
    import_result,
    op_metadata,
    run_failure_message,
    run_import,
)

# --- the import -------------------------------------------------------------------------------


def test_the_seed_mapping_example_end_to_end(db, contacts, mongo_uri, sandbox, instance):
    sandbox.state.add_customer(
        CONNECTED_ACCOUNT,
        id="cus_123",
        email="test@example.com",
        name="John Doe",
        address={"line1": "123 Main St", "city": "New York", "state": "NY"},
    )
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings=SEED_MAPPINGS)

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert result.success
    contact = contacts.find_one({"stripe_customer_id": "cus_123"})
    assert {key: contact[key] for key in ("stripe_customer_id", "email", "address")} == {
        "stripe_customer_id": "cus_123",
        "email": "test@example.com",
        "address": {"street": "123 Main St", "city": "New York", "state_province": "NY"},
    }
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert contact["parent_account"] == account_id
    assert contact["owner"] == contact["created_by"] == request["user_id"]
    assert (contact["type"], contact["source"]) == ("person", "stripe")
    assert (request["status"], request["in_progress"], request["attempts"]) == (
        "completed",
        False,
        1,
    )
    document = import_result(db, import_id)
    assert request["result_id"] == document["_id"]
    assert {
        key: document[key] for key in ("status", "name", "type", "records_added", "records_updated")
    } == {
        "status": "completed",
        "name": "stripe",
        "type": "person",
        "records_added": 1,
        "records_updated": 0,
    }
    assert document["user_id"] == request["user_id"]
    assert document["account_id"] == str(account_id)
    assert document["run_id"] == result.run_id
    assert document["started_at"] <= document["finished_at"]


def test_1050_customers_over_11_pages(db, contacts, mongo_uri, sandbox, instance, capsys):
    sandbox.state.seed_customers(1050, seed=7, account=CONNECTED_ACCOUNT)
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings={"name": "name", **SEED_MAPPINGS})

    started = time.perf_counter()
    # One sequential walk (windows are tested in test_windows.py): no fan-out on a slow machine.
    result = billing_contact_import.execute_in_process(
        run_config={
            "ops": {
                "claim_import_request": {"config": {"import_id": str(import_id)}},
                "sync_customers": {"config": {"fan_out_after_seconds": 600}},
            }
        },
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "stripe": StripeResource(api_base=sandbox.url, initial_retry_delay_seconds=0.01),
        },
        instance=instance,
    )
    elapsed = time.perf_counter() - started

    assert result.success
    document = import_result(db, import_id)
    assert (document["customers_fetched"], document["pages_fetched"]) == (1050, 11)
    assert document["records_updated"] == document["records_skipped"] == 0
    assert document["import_errors_count"] == 0
    assert document["duplicates"] > 0, "the seeded customers reuse some emails"
    assert document["records_added"] + document["duplicates"] == 1050
    assert contacts.count_documents({"parent_account": account_id}) == document["records_added"]
    assert len(document["duplicate_customers"]) == document["duplicates"]

    listing = sandbox.state.requests(path="/v1/customers", method="GET")
    assert len(listing) == 11
    assert {entry["stripe_account"] for entry in listing} == {CONNECTED_ACCOUNT}
    assert {entry["query"]["limit"] for entry in listing} == {"100"}
    assert "starting_after" not in listing[0]["query"]
    assert all(entry["query"]["created"]["lte"] for entry in listing)
    newest_first = [c["id"] for c in sandbox.state.customers(CONNECTED_ACCOUNT)]
    assert [entry["query"].get("starting_after") for entry in listing[1:]] == newest_first[
        99:1000:100
    ]

    metadata = op_metadata(result, "sync_customers")
    assert metadata["records_added"] == document["records_added"]
    assert metadata["pages_fetched"] == 11
    assert metadata["stripe_requests"] == 11
    assert len(metadata["sample_contacts"]) == 5
    with capsys.disabled():
        print(
            f"\n1,050 customers: {document['records_added']} added, "
            f"{document['duplicates']} duplicates, {document['pages_fetched']} pages "
            f"in {elapsed:.2f}s"
        )


def test_rerunning_an_import_adds_nothing_and_updates_every_contact(
    db, contacts, mongo_uri, sandbox, instance
):
    sandbox.state.seed_customers(230, seed=3, account=CONNECTED_ACCOUNT)
    account_id = add_account(db)
    first = add_request(db, account_id, mappings={"name": "name", "phone": "phone"})
    assert run_import(mongo_uri, sandbox, first, instance).success
    before = contacts.count_documents({})

    second = add_request(db, account_id, mappings={"name": "name", "phone": "phone"})
    assert run_import(mongo_uri, sandbox, second, instance).success

    one, two = import_result(db, first), import_result(db, second)
    assert two["records_added"] == 0
    assert two["records_updated"] == one["records_added"]
    assert two["duplicates"] == one["duplicates"]
    assert contacts.count_documents({}) == before


@pytest.mark.parametrize(
    ("import_type", "contact_type"), [("contacts", "person"), ("companies", "business")]
)
def test_person_and_business_imports(
    db, contacts, mongo_uri, sandbox, instance, import_type, contact_type
):
    sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_1", email="a@example.com")
    account_id = add_account(db)
    import_id = add_request(db, account_id, import_type=import_type)

    assert run_import(mongo_uri, sandbox, import_id, instance).success

    assert contacts.find_one({"stripe_customer_id": "cus_1"})["type"] == contact_type
    assert import_result(db, import_id)["type"] == contact_type


def test_update_only_import_matches_existing_contacts_and_creates_none(
    db, contacts, mongo_uri, sandbox, instance
):
    sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_old", email="Known@Example.com", name="K")
    sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_link", email="x@example.com", name="L")
    sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_new", email="new@example.com", name="N")
    account_id = add_account(db)
    # Written by other tools: no email_key.
    known = contacts.insert_one(
        {"parent_account": account_id, "type": "person", "email": " known@example.COM"}
    ).inserted_id
    linked = contacts.insert_one(
        {"parent_account": account_id, "type": "person", "stripe_customer_id": "cus_link",
         "email": "other@example.com"}
    ).inserted_id  # fmt: skip
    import_id = add_request(db, account_id, mappings={"name": "name"}, new_contact=False)

    assert run_import(mongo_uri, sandbox, import_id, instance).success

    document = import_result(db, import_id)
    assert (document["records_added"], document["records_updated"]) == (0, 2)
    assert document["records_skipped"] == 1
    assert contacts.count_documents({}) == 2
    known_contact = contacts.find_one({"_id": known})
    assert (known_contact["stripe_customer_id"], known_contact["name"]) == ("cus_old", "K")
    assert known_contact["old_field_values"] == {"email": " known@example.COM"}
    assert contacts.find_one({"_id": linked})["email"] == "x@example.com"


def test_contacts_of_another_account_and_of_the_other_type_are_untouched(
    db, contacts, mongo_uri, sandbox, instance
):
    sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_1", email="a@example.com", name="New")
    account_id = add_account(db)
    others = [
        {"parent_account": ObjectId(), "type": "person", "email": "a@example.com", "name": "X"},
        {"parent_account": account_id, "type": "business", "email": "A@example.com",
         "stripe_customer_id": "cus_other", "name": "Y"},
    ]  # fmt: skip
    contacts.insert_many(others)
    snapshot = list(contacts.find({}))
    import_id = add_request(db, account_id, mappings={"name": "name"})

    assert run_import(mongo_uri, sandbox, import_id, instance).success

    assert [contacts.find_one({"_id": doc["_id"]}) for doc in snapshot] == snapshot
    assert contacts.count_documents({"parent_account": account_id, "type": "person"}) == 1


def test_a_customer_linked_to_a_business_contact_is_not_created_again_as_a_person(
    db, contacts, mongo_uri, sandbox, instance
):
    sandbox.state.add_customer(
        CONNECTED_ACCOUNT, id="cus_X", email="billing@client.com", name="Demo Client LLC"
    )
    sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_new", email="new@example.com")
    account_id = add_account(db)
    # The Stripe customer a payment link created for the business contact.
    business = contacts.insert_one(
        {"parent_account": account_id, "type": "business", "name": "Demo Client LLC",
         "email": "billing@client.com", "stripe_customer_id": "cus_X"}
    ).inserted_id  # fmt: skip
    import_id = add_request(db, account_id, mappings={"name": "name"}, new_contact=True)

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert result.success
    assert contacts.count_documents({"stripe_customer_id": "cus_X"}) == 1
    assert contacts.count_documents({"parent_account": account_id, "type": "person"}) == 1
    document = import_result(db, import_id)
    reason = "already linked to a business contact of the account"
    assert (document["records_added"], document["records_skipped"]) == (1, 1)
    assert document["skip_reasons"] == {reason: 1}
    assert document["skipped_customers"] == [
        {"stripe_customer_id": "cus_X", "email": "billing@client.com", "reason": reason,
         "contact_id": business}
    ]  # fmt: skip
    metadata = op_metadata(result, "sync_customers")
    assert (metadata["records_skipped"], metadata["skip_reasons"]) == (1, {reason: 1})


def test_customers_without_email_are_keyed_by_stripe_id_and_not_duplicated_on_rerun(
    db, contacts, mongo_uri, sandbox, instance
):
    sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_a", email=None, name="No Mail A")
    sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_b", email=None, name="No Mail B")
    account_id = add_account(db)
    first = add_request(db, account_id, mappings={"name": "name"})
    assert run_import(mongo_uri, sandbox, first, instance).success
    second = add_request(db, account_id, mappings={"name": "name"})
    assert run_import(mongo_uri, sandbox, second, instance).success

    assert sorted(c["stripe_customer_id"] for c in contacts.find({})) == ["cus_a", "cus_b"]
    assert import_result(db, first)["records_added"] == 2
    assert (
        import_result(db, second)["records_added"],
        import_result(db, second)["records_updated"],
    ) == (0, 2)


def test_duplicate_emails_give_one_contact_and_the_result_says_so(
    db, contacts, mongo_uri, sandbox, instance
):
    sandbox.state.add_customer(
        CONNECTED_ACCOUNT, id="cus_old", email="dup@example.com", name="Old", created=1_600_000_000
    )
    sandbox.state.add_customer(
        CONNECTED_ACCOUNT, id="cus_new", email="DUP@example.com", name="New", created=1_700_000_000
    )
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings={"name": "name"})

    assert run_import(mongo_uri, sandbox, import_id, instance).success

    [contact] = contacts.find({})
    assert (contact["stripe_customer_id"], contact["name"]) == ("cus_new", "New")
    document = import_result(db, import_id)
    assert (document["records_added"], document["duplicates"]) == (1, 1)
    assert document["duplicate_customers"] == [
        {"stripe_customer_id": "cus_old", "email": "dup@example.com", "duplicate_of": "cus_new"}
    ]


def test_a_write_error_mid_batch_is_reported_and_the_rest_lands(
    db, unique_contacts, mongo_uri, sandbox, instance
):
    for index in range(5):
        sandbox.state.add_customer(
            CONNECTED_ACCOUNT,
            id=f"cus_{index}",
            email="taken@example.com" if index == 2 else f"c{index}@example.com",
            created=1_700_000_000 + index,
        )
    account_id = add_account(db)
    unique_contacts.insert_many(
        [
            {"parent_account": account_id, "type": "person", "email": "taken@example.com"},
            {"parent_account": account_id, "type": "person", "email": "old2@example.com",
             "stripe_customer_id": "cus_2"},
        ]
    )  # fmt: skip
    import_id = add_request(db, account_id, mappings={"name": "name"})

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert result.success
    document = import_result(db, import_id)
    assert (document["status"], document["records_added"], document["import_errors_count"]) == (
        "completed",
        4,
        1,
    )
    [error] = document["importerrors"]
    assert (error["stripe_customer_id"], error["email"]) == ("cus_2", "taken@example.com")
    assert (
        unique_contacts.count_documents(
            {"stripe_customer_id": {"$in": ["cus_0", "cus_1", "cus_3", "cus_4"]}}
        )
        == 4
    )
    metadata = op_metadata(result, "sync_customers")
    assert metadata["import_errors"] == 1
    assert metadata["first_errors"].records[0].data["stripe_customer_id"] == "cus_2"


def test_transient_stripe_errors_and_rate_limits_are_retried(
    db, contacts, mongo_uri, sandbox, instance
):
    sandbox.state.seed_customers(250, seed=11, account=CONNECTED_ACCOUNT)
    sandbox.state.inject_fault(endpoint="GET /v1/customers", status=500, count=2)
    sandbox.state.inject_fault(endpoint="GET /v1/customers", status=429, retry_after=0.05, count=1)
    account_id = add_account(db)
    import_id = add_request(db, account_id)

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert result.success
    document = import_result(db, import_id)
    assert (document["customers_fetched"], document["pages_fetched"]) == (250, 3)
    assert (document["stripe_requests"], document["stripe_retries"]) == (6, 3)
    assert document["stripe_throttled"] == 1
    metadata = op_metadata(result, "sync_customers")
    assert (metadata["stripe_retries"], metadata["stripe_throttled"]) == (3, 1)


def test_a_completed_import_is_recorded_as_the_accounts_asset(db, mongo_uri, sandbox, instance):
    sandbox.state.seed_customers(12, seed=5, account=CONNECTED_ACCOUNT)
    account_id = add_account(db)
    import_id = add_request(db, account_id)

    result = run_import(mongo_uri, sandbox, import_id, instance)

    [materialization] = result.asset_materializations_for_node("record_import_result")
    assert materialization.asset_key.path == ["crm_contacts"]
    assert materialization.partition == str(account_id)
    checks = result.get_asset_check_evaluations()
    assert {check.check_name for check in checks} == {"unique_stripe_customer_ids", "unique_emails"}
    assert all(check.passed and check.partition == str(account_id) for check in checks)
    assert materialization.metadata["customers_fetched"].value == 12
    assert op_metadata(result, "record_import_result")["result_id"] == str(
        import_result(db, import_id)["_id"]
    )


# --- claims -----------------------------------------------------------------------------------


def test_a_claimed_request_is_not_processed_twice(db, mongo_uri, sandbox, instance):
    sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_1", email="a@example.com")
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    db[store.QUEUES].update_one(
        {"_id": import_id}, {"$set": {"in_progress": True, "claimed_by_run": "other-run"}}
    )
    before = db[store.QUEUES].find_one({"_id": import_id})

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert not result.success
    assert "already in progress" in run_failure_message(result)
    assert "other-run" in run_failure_message(result)
    assert db[store.QUEUES].find_one({"_id": import_id}) == before
    assert db[store.IMPORT_RESULTS].count_documents({}) == 0
    assert sandbox.state.requests() == []


def test_a_run_whose_request_was_queued_again_records_no_result(
    db, mongo_uri, sandbox, instance, monkeypatch
):
    from datetime import UTC, datetime

    from stripe_crm_pipelines.billing_import import queue

    sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_1", email="a@example.com")
    import_id = add_request(db, add_account(db))
    complete = queue.complete

    def recovered_first(db_, import_id_, run_id, outcome):
        # Recovery judged the run dead just before it closed its request.
        assert queue.requeue(db_, import_id_, run_id, f"Run {run_id} died", datetime.now(UTC))
        return complete(db_, import_id_, run_id, outcome)

    monkeypatch.setattr(queue, "complete", recovered_first)

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert result.success
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert (request["status"], request["in_progress"]) == ("pending", False)
    assert db[store.IMPORT_RESULTS].count_documents({}) == 0
    message = op_metadata(result, "record_import_result")["result"]
    assert message.startswith(f"Import request {import_id} is no longer claimed by this run")
    assert not [
        event
        for event in result.all_events
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION
    ]


def test_a_completed_request_is_not_run_again(db, contacts, mongo_uri, sandbox, instance):
    sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_1", email="a@example.com")
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    assert run_import(mongo_uri, sandbox, import_id, instance).success
    before = db[store.QUEUES].find_one({"_id": import_id})

    again = run_import(mongo_uri, sandbox, import_id, instance)

    assert not again.success
    assert "'completed', not pending" in run_failure_message(again)
    assert db[store.QUEUES].find_one({"_id": import_id}) == before
    assert db[store.IMPORT_RESULTS].count_documents({}) == 1


def test_an_unknown_import_id_fails_clearly(db, mongo_uri, sandbox, instance):
    missing = ObjectId()
    result = run_import(mongo_uri, sandbox, missing, instance)
    assert not result.success
    assert run_failure_message(result) == f"Import request {missing} does not exist"


def test_launchpad_config_refuses_an_import_id_that_is_not_an_object_id(
    db, mongo_uri, sandbox, instance
):
    import_id = add_request(db, add_account(db))
    before = db[store.QUEUES].find_one({"_id": import_id})

    result = run_import(mongo_uri, sandbox, f"{import_id}x", instance)

    assert not result.success
    assert "import_id" in str(result.get_step_failure_events()[0].step_failure_data.error)
    assert db[store.QUEUES].find_one({"_id": import_id}) == before


# --- failures ---------------------------------------------------------------------------------


def assert_failed_without_writes(db, import_id, message_part: str, result) -> dict:
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert not result.success
    assert (request["status"], request["in_progress"]) == ("failed", False)
    assert message_part in request["error"]
    assert run_failure_message(result) == request["error"]
    document = import_result(db, import_id)
    assert document["status"] == "failed"
    assert document["error"] == request["error"]
    assert request["result_id"] == document["_id"]
    assert db[store.CONTACTS].count_documents({}) == 0
    return document


def test_a_rejected_stripe_key_fails_the_import(db, mongo_uri, sandbox, instance):
    bad_key = "sk_" + "live_RevokedKeyThatMustNeverBeShown9999"  # no key-shaped literal in the repo
    sandbox.state.seed_customers(5, account=CONNECTED_ACCOUNT)
    account_id = add_account(db, secret_key=bad_key)
    import_id = add_request(db, account_id)

    result = run_import(mongo_uri, sandbox, import_id, instance)

    document = assert_failed_without_writes(db, import_id, "Invalid API Key", result)
    assert "HTTP 401" in document["error"]
    recorded = everything_recorded(instance, result.run_id)
    assert bad_key not in recorded
    assert bad_key not in json.dumps(list(db[store.QUEUES].find({}, {"_id": 0})), default=str)
    assert bad_key not in json.dumps(document, default=str)


def test_a_key_without_access_to_the_account_fails_the_import(db, mongo_uri, sandbox, instance):
    sandbox.state.forbid_key(SECRET_KEY, CONNECTED_ACCOUNT)
    account_id = add_account(db)
    import_id = add_request(db, account_id)

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert_failed_without_writes(db, import_id, "HTTP 403", result)


def test_an_invalid_mapping_fails_before_any_write_or_stripe_call(db, mongo_uri, sandbox, instance):
    sandbox.state.seed_customers(5, account=CONNECTED_ACCOUNT)
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings={"name": "owner"})

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert_failed_without_writes(db, import_id, "mappings['name']", result)
    assert sandbox.state.requests() == []


@pytest.mark.parametrize(
    ("change", "message_part"),
    [
        ({"type": "leads"}, "type: 'leads' is not one of"),
        ({"account_id": "not-an-id"}, "account_id"),
        ({"new_contact": "yes"}, "new_contact"),
    ],
)
def test_an_invalid_request_fails_with_its_reason(
    db, mongo_uri, sandbox, instance, change, message_part
):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    db[store.QUEUES].update_one({"_id": import_id}, {"$set": change})

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert_failed_without_writes(db, import_id, message_part, result)
    assert sandbox.state.requests() == []


def test_a_deleted_account_fails_the_import(db, mongo_uri, sandbox, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    db[store.ACCOUNTS].delete_one({"_id": account_id})

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert_failed_without_writes(db, import_id, "no longer exists", result)


def test_a_removed_stripe_key_fails_the_import(db, mongo_uri, sandbox, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    db[store.STRIPE_KEYS].delete_many({})

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert_failed_without_writes(db, import_id, "no Stripe key connected", result)


def test_the_stripe_key_appears_nowhere_in_the_run(db, mongo_uri, sandbox, instance):
    sandbox.state.seed_customers(120, seed=9, account=CONNECTED_ACCOUNT)
    sandbox.state.inject_fault(endpoint="GET /v1/customers", status=500, count=1)
    account_id = add_account(db)
    import_id = add_request(db, account_id, mappings=SEED_MAPPINGS)

    result = run_import(mongo_uri, sandbox, import_id, instance)

    assert result.success
    assert SECRET_KEY not in everything_recorded(instance, result.run_id)
    assert SECRET_KEY not in json.dumps(import_result(db, import_id), default=str)
    assert SECRET_KEY not in json.dumps(db[store.QUEUES].find_one({"_id": import_id}), default=str)


# --- resuming -----------------------------------------------------------------------------------

FAULT_BEFORE_REQUEST: dict[str, Any] = {}


class StripeFailingOnRequest(StripeResource):
    """Injects ``FAULT_BEFORE_REQUEST`` once, just before the n-th request of a client."""

    def client(self, secret_key, stripe_account, *, stats=None, before_request=None):
        sent = iter(range(1, 1_000_000))

        def inject() -> None:
            if next(sent) == FAULT_BEFORE_REQUEST.get("request"):
                FAULT_BEFORE_REQUEST.pop("request")
                FAULT_BEFORE_REQUEST["sandbox"].state.inject_fault(**FAULT_BEFORE_REQUEST["fault"])

        return super().client(secret_key, stripe_account, stats=stats, before_request=inject)


def test_a_failed_page_is_retried_from_the_checkpoint(db, contacts, mongo_uri, sandbox, instance):
    sandbox.state.seed_customers(250, seed=12, account=CONNECTED_ACCOUNT)
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    FAULT_BEFORE_REQUEST.update(
        sandbox=sandbox, request=2, fault={"endpoint": "GET /v1/customers", "status": 503}
    )

    result = billing_contact_import.execute_in_process(
        run_config={"ops": {"claim_import_request": {"config": {"import_id": str(import_id)}}}},
        resources={
            "mongo": MongoResource(uri=mongo_uri),
            "stripe": StripeFailingOnRequest(api_base=sandbox.url, max_retries=0),
        },
        instance=instance,
        raise_on_error=False,
    )

    assert result.success
    assert any(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)
    document = import_result(db, import_id)
    assert (document["customers_fetched"], document["pages_fetched"]) == (250, 3)
    assert document["records_added"] + document["duplicates"] == 250
    assert document["records_updated"] == 0, "duplicates across the retry are still duplicates"
    assert contacts.count_documents({}) == document["records_added"]
    listing = sandbox.state.requests(path="/v1/customers", method="GET")
    # Page 1, page 2 failing; the retry re-reads page 1 (no writes), then pages 2 and 3.
    assert [entry["status"] for entry in listing] == [200, 503, 200, 200, 200]
    assert listing[3]["query"]["starting_after"] == listing[1]["query"]["starting_after"]
    checkpoint = db[store.QUEUES].find_one({"_id": import_id})["checkpoint"]
    assert (checkpoint["run_id"], checkpoint["cursor"]) == (result.run_id, None)
