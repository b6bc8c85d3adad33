"""``revert_billing_import``: undo a real ``billing_contact_import`` from its change log."""

from __future__ import annotations

import pytest
from bson import ObjectId
from dagster import DagsterInstance

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import revert
from stripe_crm_pipelines.billing_import.revert_job import RevertImportConfig, revert_billing_import
from stripe_crm_pipelines.definitions import defs
from stripe_crm_pipelines.history import history_frame
from stripe_crm_pipelines.resources import MongoResource
from tests.billing_import.test_job import (
    CONNECTED_ACCOUNT,
    add_account,
    add_request,
    import_result,
    op_metadata,
    run_failure_message,
    run_import,
)
from tests.conftest import enforce_unique_contacts

# The mistake: the city lands in the state field, and the name in the company field.
WRONG_MAPPINGS = {"address-city": "address.state_province", "name": "company"}


@pytest.fixture
def instance():
    return DagsterInstance.ephemeral()


def run_revert(mongo_uri: str, import_id: ObjectId, instance: DagsterInstance):
    return revert_billing_import.execute_in_process(
        run_config={"ops": {"revert_import": {"config": {"import_id": str(import_id)}}}},
        resources={"mongo": MongoResource(uri=mongo_uri)},
        instance=instance,
        raise_on_error=False,
    )


def revert_result(db, import_id: ObjectId) -> dict:
    [result] = db[store.IMPORT_RESULTS].find({"reverted_import_id": import_id})
    return result


@pytest.fixture
def imported(db, mongo_uri, stripe_sandbox, instance):
    """An account's contacts before and after an import with a mapping mistake."""
    for customer_id, email, city, name in [
        ("cus_a", "ann@example.com", "Boston", "Ann"),
        ("cus_b", "bob@example.com", "Denver", "Bob"),
        ("cus_new", "new@example.com", "Austin", "Newt"),
        ("cus_new2", "new2@example.com", "Tulsa", "Nia"),
    ]:
        stripe_sandbox.state.add_customer(
            CONNECTED_ACCOUNT, id=customer_id, email=email, name=name, address={"city": city}
        )
    account_id = add_account(db)
    contacts = db[store.CONTACTS]
    contacts.insert_many(
        [
            {"parent_account": account_id, "type": "person", "email": "ann@example.com",
             "email_key": "ann@example.com", "stripe_customer_id": "cus_a", "name": "Ann",
             "address": {"street": "1 Main St", "state_province": "MA"}},
            {"parent_account": account_id, "type": "person", "email": "Bob@Example.com",
             "email_key": "bob@example.com", "company": "Bob Co",
             "old_field_values": {"email": "bob@old.com"}},
            {"parent_account": account_id, "type": "business", "name": "Other type",
             "stripe_customer_id": "cus_z"},
        ]
    )  # fmt: skip
    before = {contact["_id"]: contact for contact in contacts.find({})}
    import_id = add_request(db, account_id, mappings=WRONG_MAPPINGS)
    assert run_import(mongo_uri, stripe_sandbox, import_id, instance).success
    result = import_result(db, import_id)
    assert (result["records_added"], result["records_updated"]) == (2, 2)
    return import_id, before


def test_revert_after_a_mapping_mistake_restores_every_field(db, mongo_uri, instance, imported):
    import_id, before = imported
    contacts = db[store.CONTACTS]
    ann = contacts.find_one({"stripe_customer_id": "cus_a"})
    assert (ann["address"]["state_province"], ann["company"]) == ("Boston", "Ann")
    assert db[store.IMPORT_CHANGES].count_documents({"import_id": import_id}) == 4

    result = run_revert(mongo_uri, import_id, instance)

    assert result.success
    assert {contact["_id"]: contact for contact in contacts.find({})} == before
    document = revert_result(db, import_id)
    assert {
        key: document[key]
        for key in ("status", "name", "type", "records_restored", "records_removed", "conflicts")
    } == {
        "status": "completed",
        "name": "stripe-revert",
        "type": "person",
        "records_restored": 2,
        "records_removed": 2,
        "conflicts": 0,
    }
    assert document["run_id"] == result.run_id
    request = db[store.QUEUES].find_one({"_id": import_id})
    assert request["reverted_at"] == document["finished_at"]
    # Found by account in run history, beside the import it undid.
    run_tags = instance.get_run_by_id(result.run_id).tags
    assert run_tags["stripe_crm/account_id"] == str(request["account_id"])
    assert run_tags["stripe_crm/import_id"] == str(import_id)
    assert request["revert_result_id"] == document["_id"]
    assert request["status"] == "completed"
    metadata = op_metadata(result, "revert_import")
    assert (metadata["records_restored"], metadata["records_removed"]) == (2, 2)


def test_an_import_whose_request_named_its_account_as_a_string_is_reverted(
    db, mongo_uri, instance, imported
):
    import_id, before = imported
    # The CRM may write the account id as a hex string; the import reads it as the ObjectId.
    account_id = db[store.QUEUES].find_one({"_id": import_id})["account_id"]
    db[store.QUEUES].update_one({"_id": import_id}, {"$set": {"account_id": str(account_id)}})

    result = run_revert(mongo_uri, import_id, instance)

    assert result.success
    assert {contact["_id"]: contact for contact in db[store.CONTACTS].find({})} == before
    document = revert_result(db, import_id)
    assert (document["records_restored"], document["records_removed"]) == (2, 2)


def test_a_contact_edited_after_the_import_keeps_the_edit(db, mongo_uri, instance, imported):
    import_id, _ = imported
    contacts = db[store.CONTACTS]
    ann = contacts.find_one({"stripe_customer_id": "cus_a"})
    contacts.update_one({"_id": ann["_id"]}, {"$set": {"address.state_province": "NH"}})

    result = run_revert(mongo_uri, import_id, instance)

    assert result.success
    ann = contacts.find_one({"_id": ann["_id"]})
    assert ann["address"] == {"street": "1 Main St", "state_province": "NH"}, "the edit stays"
    assert "company" not in ann, "the other field the import wrote is restored"
    assert "old_field_values" not in ann, "the bookkeeping goes back too"
    document = revert_result(db, import_id)
    assert (document["records_restored"], document["conflicts"]) == (2, 1)
    assert document["conflict_details"] == [
        {"contact_id": ann["_id"], "stripe_customer_id": "cus_a",
         "fields": ["address.state_province"]}
    ]  # fmt: skip
    metadata = op_metadata(result, "revert_import")
    row = metadata["first_conflicts"].records[0].data
    assert row["left_as_is"] == "changed since: address.state_province"


def test_a_created_contact_edited_since_is_kept_and_untouched_ones_removed(
    db, mongo_uri, instance, imported
):
    import_id, _ = imported
    contacts = db[store.CONTACTS]
    edited = contacts.find_one({"stripe_customer_id": "cus_new"})
    contacts.update_one({"_id": edited["_id"]}, {"$set": {"phone": "555-0100"}})

    assert run_revert(mongo_uri, import_id, instance).success

    assert contacts.find_one({"_id": edited["_id"]})["phone"] == "555-0100"
    assert contacts.count_documents({"stripe_customer_id": "cus_new2"}) == 0
    document = revert_result(db, import_id)
    assert (document["records_removed"], document["conflicts"]) == (1, 1)
    assert document["conflict_details"] == [
        {"contact_id": edited["_id"], "stripe_customer_id": "cus_new",
         "reason": "edited since the import created it"}
    ]  # fmt: skip


def test_a_later_import_that_changed_nothing_does_not_block_the_revert(
    db, mongo_uri, stripe_sandbox, instance, imported
):
    import_id, before = imported
    again = add_request(db, before[next(iter(before))]["parent_account"], mappings=WRONG_MAPPINGS)
    assert run_import(mongo_uri, stripe_sandbox, again, instance).success

    assert run_revert(mongo_uri, import_id, instance).success

    document = revert_result(db, import_id)
    assert (document["records_removed"], document["conflicts"]) == (2, 0)
    restored = {c["_id"]: c for c in db[store.CONTACTS].find({})}
    for contact_id, contact in before.items():
        assert {k: v for k, v in restored[contact_id].items() if k != "old_field_values"} == {
            k: v for k, v in contact.items() if k != "old_field_values"
        }


@pytest.mark.parametrize(
    "company", ["Ann Corp", ["Ann", "Ann Corp"]], ids=["other-value", "array-holding-the-value"]
)
def test_contacts_changed_between_the_reverts_read_and_its_write_are_left_as_changed(
    db, mongo_uri, instance, imported, monkeypatch, company
):
    import_id, _ = imported
    contacts = db[store.CONTACTS]
    plan_revert = revert.plan_revert

    def plan_then_someone_writes(entries, current, later):
        plan = plan_revert(entries, current, later)
        # A person (or an import or sync of the account) edits two contacts right now.
        contacts.update_one({"stripe_customer_id": "cus_a"}, {"$set": {"company": company}})
        contacts.update_one({"stripe_customer_id": "cus_new"}, {"$set": {"phone": "555-0100"}})
        return plan

    monkeypatch.setattr(revert, "plan_revert", plan_then_someone_writes)

    assert run_revert(mongo_uri, import_id, instance).success

    assert contacts.find_one({"stripe_customer_id": "cus_a"})["company"] == company
    assert contacts.find_one({"stripe_customer_id": "cus_new"})["phone"] == "555-0100"
    document = revert_result(db, import_id)
    assert (document["records_removed"], document["records_restored"]) == (1, 1)
    assert document["conflicts"] == 2
    changed = [
        c for c in document["conflict_details"] if c.get("reason") == revert.CHANGED_DURING_REVERT
    ]
    assert len(changed) == 2
    assert contacts.count_documents({"stripe_customer_id": "cus_new2"}) == 0


def test_a_field_a_later_import_changed_is_a_conflict_even_at_the_same_value(
    db, mongo_uri, stripe_sandbox, instance
):
    stripe_sandbox.state.add_customer(
        CONNECTED_ACCOUNT, id="cus_a", email="ann@example.com", address={"city": "Boston"}
    )
    account_id = add_account(db)
    contacts = db[store.CONTACTS]
    contacts.insert_one(
        {"parent_account": account_id, "type": "person", "email": "ann@example.com",
         "email_key": "ann@example.com", "address": {"city": "Old"}}
    )  # fmt: skip
    mappings = {"address-city": "address.city"}
    first = add_request(db, account_id, mappings=mappings)
    assert run_import(mongo_uri, stripe_sandbox, first, instance).success
    # A person corrects the city; the next import writes Stripe's value over it again.
    contacts.update_one({"email": "ann@example.com"}, {"$set": {"address.city": "Cambridge"}})
    second = add_request(db, account_id, mappings=mappings)
    assert run_import(mongo_uri, stripe_sandbox, second, instance).success

    assert run_revert(mongo_uri, first, instance).success

    assert contacts.find_one({"email": "ann@example.com"})["address"]["city"] == "Boston"
    [conflict] = revert_result(db, first)["conflict_details"]
    assert conflict["fields"] == ["address.city"]
    # Reverting the later import first hands the field back to the first one.
    assert run_revert(mongo_uri, second, instance).success
    assert contacts.find_one({"email": "ann@example.com"})["address"]["city"] == "Cambridge"


def test_a_revert_with_a_failed_write_fails_the_run_and_can_be_run_again(
    db, mongo_uri, stripe_sandbox, instance
):
    enforce_unique_contacts(db)
    stripe_sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_a", email="ann@new.com")
    account_id = add_account(db)
    contacts = db[store.CONTACTS]
    contacts.insert_one(
        {"parent_account": account_id, "type": "person", "email": "ann@old.com",
         "email_key": "ann@old.com", "stripe_customer_id": "cus_a"}
    )  # fmt: skip
    import_id = add_request(db, account_id, mappings={"name": "name"})
    assert run_import(mongo_uri, stripe_sandbox, import_id, instance).success
    # Someone adds a contact with the old email: restoring it breaks the unique email index.
    blocker = contacts.insert_one(
        {"parent_account": account_id, "type": "person", "email": "ann@old.com",
         "email_key": "ann@old.com"}
    ).inserted_id  # fmt: skip

    result = run_revert(mongo_uri, import_id, instance)

    assert not result.success
    message = run_failure_message(result)
    assert message.startswith(f"Import {import_id} only partly reverted: 1 contact write(s)")
    document = revert_result(db, import_id)
    assert (document["status"], document["revert_errors_count"]) == ("failed", 1)
    assert "not marked reverted" in document["error"]
    assert db[store.QUEUES].find_one({"_id": import_id}).get("reverted_at") is None
    assert history_frame([document]).loc[0, "import_errors"] == 1

    contacts.delete_one({"_id": blocker})
    assert run_revert(mongo_uri, import_id, instance).success
    assert contacts.find_one({"stripe_customer_id": "cus_a"})["email"] == "ann@old.com"
    assert db[store.QUEUES].find_one({"_id": import_id})["reverted_at"] is not None


# --- refusals -----------------------------------------------------------------------------------


def assert_refused(db, mongo_uri, instance, import_id, message: str) -> None:
    contacts = list(db[store.CONTACTS].find({}))
    results = db[store.IMPORT_RESULTS].count_documents({})
    result = run_revert(mongo_uri, import_id, instance)
    assert not result.success
    assert run_failure_message(result) == f"Not reverted: {message}"
    assert list(db[store.CONTACTS].find({})) == contacts
    assert db[store.IMPORT_RESULTS].count_documents({}) == results


def test_an_import_already_reverted_is_refused(db, mongo_uri, instance, imported):
    import_id, _ = imported
    assert run_revert(mongo_uri, import_id, instance).success
    reverted_at = db[store.QUEUES].find_one({"_id": import_id})["reverted_at"]

    assert_refused(
        db,
        mongo_uri,
        instance,
        import_id,
        f"Import {import_id} was already reverted at {reverted_at}",
    )


def test_a_revert_of_a_revert_is_refused(db, mongo_uri, instance, imported):
    import_id, _ = imported
    assert run_revert(mongo_uri, import_id, instance).success
    revert_id = revert_result(db, import_id)["_id"]

    assert_refused(
        db,
        mongo_uri,
        instance,
        revert_id,
        f"{revert_id} is a revert (of import {import_id}); a revert cannot be reverted",
    )


def test_a_dry_run_is_refused(db, mongo_uri, stripe_sandbox, instance):
    stripe_sandbox.state.add_customer(CONNECTED_ACCOUNT, id="cus_1", email="a@example.com")
    import_id = add_request(db, add_account(db), dry_run=True)
    assert run_import(mongo_uri, stripe_sandbox, import_id, instance).success

    assert_refused(
        db,
        mongo_uri,
        instance,
        import_id,
        f"Import {import_id} was a dry run: it changed no contact, so there is nothing to revert",
    )


def test_a_failed_import_is_refused(db, mongo_uri, stripe_sandbox, instance):
    account_id = add_account(db)
    import_id = add_request(db, account_id)
    db[store.STRIPE_KEYS].delete_many({})
    assert not run_import(mongo_uri, stripe_sandbox, import_id, instance).success
    error = db[store.QUEUES].find_one({"_id": import_id})["error"]

    assert_refused(
        db,
        mongo_uri,
        instance,
        import_id,
        f"Import {import_id} is 'failed': {error}; only a completed import can be reverted",
    )


def test_an_unknown_or_pending_import_is_refused(db, mongo_uri, instance):
    missing = ObjectId()
    assert_refused(db, mongo_uri, instance, missing, f"Import {missing} does not exist")
    pending = add_request(db, add_account(db))
    assert_refused(
        db,
        mongo_uri,
        instance,
        pending,
        f"Import {pending} is 'pending'; only a completed import can be reverted",
    )


def test_a_launchpad_id_that_is_not_an_object_id_is_refused(db, mongo_uri, instance):
    assert defs.resolve_job_def("revert_billing_import").name == "revert_billing_import"
    assert "completed import request" in RevertImportConfig.model_fields["import_id"].description

    result = run_revert(mongo_uri, "not-an-id", instance)

    assert not result.success
    assert "import_id" in str(result.get_step_failure_events()[0].step_failure_data.error)


# --- the change log, read newest first ----------------------------------------------------------


def test_entries_are_undone_newest_first_and_a_revert_run_again_changes_nothing(db):
    account_id = add_account(db)
    import_id = add_request(db, account_id, status="completed")
    contact_id = (
        db[store.CONTACTS]
        .insert_one(
            {
                "parent_account": account_id,
                "type": "person",
                "name": "C",
                "old_field_values": {"v": 2},
            }
        )
        .inserted_id
    )
    # An attempt wrote the name, then a retried batch rewrote only the bookkeeping.
    db[store.IMPORT_CHANGES].insert_many(
        [
            {"import_id": import_id, "contact_id": contact_id, "action": "update",
             "changes": [{"field": "name", "before": "A", "after": "C"},
                         {"field": "old_field_values", "after": {"v": 1}}]},
            {"import_id": import_id, "contact_id": contact_id, "action": "update",
             "changes": [{"field": "old_field_values", "before": {"v": 1}, "after": {"v": 2}}]},
        ]
    )  # fmt: skip

    outcome = revert.revert_import(db, import_id, run_id=None)

    assert db[store.CONTACTS].find_one({"_id": contact_id}, {"_id": 0, "type": 0}) == {
        "parent_account": account_id,
        "name": "A",
    }
    assert (outcome.records_restored, outcome.fields_restored, outcome.conflicts) == (1, 2, 0)
    db[store.QUEUES].update_one({"_id": import_id}, {"$unset": {"reverted_at": ""}})
    again = revert.revert_import(db, import_id, run_id=None)
    assert (again.records_restored, again.conflicts) == (0, 0)
