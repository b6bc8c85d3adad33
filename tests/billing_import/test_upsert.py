"""Matching and bulk-writing one page of customers (upsert.py), against mongomock."""

from __future__ import annotations

import pytest
from bson import ObjectId

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import upsert
from stripe_crm_pipelines.billing_import.mapping import parse_mappings
from stripe_crm_pipelines.billing_import.upsert import (
    SeenCustomers,
    UpsertTarget,
    backfill_email_keys,
    find_existing_contacts,
    plan_upserts,
    upsert_customers,
)
from tests.conftest import SEED_MAPPINGS, enforce_unique_contacts


class CountingCollection:
    """A collection that counts the round trips made through it."""

    def __init__(self, collection):
        self._collection = collection
        self.calls: list[str] = []

    def __getattr__(self, name):
        attribute = getattr(self._collection, name)
        if callable(attribute):

            def counted(*args, **kwargs):
                self.calls.append(name)
                return attribute(*args, **kwargs)

            return counted
        return attribute


def make_target(
    account_id: ObjectId | None = None,
    *,
    contact_type: str = "person",
    new_contact: bool = True,
    mappings: dict | None = None,
) -> UpsertTarget:
    return UpsertTarget(
        account_id=account_id or ObjectId(),
        contact_type=contact_type,
        user_id=ObjectId(),
        new_contact=new_contact,
        mappings=parse_mappings(mappings),
    )


def customer(customer_id: str, email: str | None = None, **fields) -> dict:
    return {"id": customer_id, "object": "customer", "email": email, **fields}


@pytest.fixture
def contacts(db):
    enforce_unique_contacts(db)
    return db[store.CONTACTS]


def test_new_customers_are_created_with_owner_type_and_source(contacts):
    target = make_target(mappings=SEED_MAPPINGS)
    page = [
        customer(
            "cus_123",
            "test@example.com",
            address={"line1": "123 Main St", "city": "New York", "state": "NY"},
        ),
        customer("cus_124", " Other@Example.com "),
    ]

    result = upsert_customers(contacts, page, target, SeenCustomers())

    assert (result.added, result.updated, result.skipped, result.errors) == (2, 0, 0, [])
    created = contacts.find_one({"stripe_customer_id": "cus_123"}, {"_id": 0, "createdAt": 0})
    assert created == {
        "parent_account": target.account_id,
        "type": "person",
        "email_key": "test@example.com",
        "owner": target.user_id,
        "created_by": target.user_id,
        "source": "stripe",
        "stripe_customer_id": "cus_123",
        "email": "test@example.com",
        "address": {"street": "123 Main St", "city": "New York", "state_province": "NY"},
    }
    other = contacts.find_one({"stripe_customer_id": "cus_124"})
    assert (other["email"], other["email_key"]) == ("Other@Example.com", "other@example.com")


def test_existing_contacts_match_by_stripe_id_then_by_email_in_any_case(contacts):
    target = make_target(mappings={"name": "name", "phone": "phone"})
    by_id = contacts.insert_one(
        {**target.scope(), "email": "old@example.com", "email_key": "old@example.com",
         "stripe_customer_id": "cus_1", "name": "Old Name"}
    ).inserted_id  # fmt: skip
    by_email = contacts.insert_one(
        {**target.scope(), "email": "Jane@Example.com", "email_key": "jane@example.com",
         "name": "Jane", "phone": "111"}
    ).inserted_id  # fmt: skip
    page = [
        customer("cus_1", "new@example.com", name="New Name"),
        customer("cus_2", "  JANE@example.COM", name="Jane Doe", phone=None),
    ]

    result = upsert_customers(contacts, page, target, SeenCustomers())

    assert (result.added, result.updated) == (0, 2)
    first = contacts.find_one({"_id": by_id})
    assert first["name"] == "New Name"
    assert (first["email"], first["email_key"]) == ("new@example.com", "new@example.com")
    assert first["old_field_values"] == {"email": "old@example.com", "name": "Old Name"}
    second = contacts.find_one({"_id": by_email})
    assert second["stripe_customer_id"] == "cus_2"
    assert second["phone"] == "111", "a missing Stripe value keeps the contact's value"
    assert second["old_field_values"] == {
        "email": "Jane@Example.com",
        "name": "Jane",
        "phone": "111",
    }
    assert contacts.count_documents({}) == 2


def test_without_mappings_an_existing_contact_only_gets_its_stripe_id(contacts):
    target = make_target()
    contact_id = contacts.insert_one(
        {**target.scope(), "email": "a@example.com", "email_key": "a@example.com", "name": "A"}
    ).inserted_id

    result = upsert_customers(
        contacts, [customer("cus_9", "A@example.com", name="Z")], target, SeenCustomers()
    )

    assert result.updated == 1
    assert contacts.find_one({"_id": contact_id}, {"_id": 0}) == {
        **target.scope(),
        "email": "a@example.com",
        "email_key": "a@example.com",
        "name": "A",
        "stripe_customer_id": "cus_9",
    }


def test_other_accounts_and_the_other_type_are_never_touched(contacts):
    target = make_target(mappings={"name": "name"})
    untouched = [
        {"parent_account": ObjectId(), "type": "person", "email": "a@example.com",
         "email_key": "a@example.com", "name": "other account"},
        {"parent_account": target.account_id, "type": "business", "email": "a@example.com",
         "email_key": "a@example.com", "stripe_customer_id": "cus_other", "name": "other type"},
    ]  # fmt: skip
    contacts.insert_many([dict(doc) for doc in untouched])

    result = upsert_customers(
        contacts, [customer("cus_a", "a@example.com", name="Imported")], target, SeenCustomers()
    )

    assert result.added == 1
    for doc in untouched:
        assert (
            contacts.find_one({"parent_account": doc["parent_account"], "type": doc["type"]})[
                "name"
            ]
            == doc["name"]
        )
    assert contacts.count_documents(target.scope()) == 1


@pytest.mark.parametrize("new_contact", [True, False])
def test_a_customer_linked_to_a_contact_of_the_other_type_is_skipped_with_the_reason(
    contacts, new_contact
):
    target = make_target(mappings={"name": "name"}, new_contact=new_contact)
    # A payment link for a business contact created its Stripe customer.
    business = contacts.insert_one(
        {"parent_account": target.account_id, "type": "business", "name": "Demo Client LLC",
         "email": "billing@client.com", "email_key": "billing@client.com",
         "stripe_customer_id": "cus_X"}
    ).inserted_id  # fmt: skip
    before = contacts.find_one({"_id": business})
    counting = CountingCollection(contacts)

    result = upsert_customers(
        counting,
        [customer("cus_X", "billing@client.com", name="Demo"), customer("cus_Y", "y@x.com")],
        target,
        SeenCustomers(),
    )

    assert counting.calls == ["find", "bulk_write"] if new_contact else ["find"]
    assert (result.added, result.updated, result.skipped) == (int(new_contact), 0, 2 - new_contact)
    reason = "already linked to a business contact of the account"
    assert result.skip_reasons[reason] == 1
    assert result.skipped_customers[0].as_document() == {
        "stripe_customer_id": "cus_X",
        "email": "billing@client.com",
        "reason": reason,
        "contact_id": business,
    }
    assert contacts.count_documents({"stripe_customer_id": "cus_X"}) == 1
    assert contacts.find_one({"_id": business}) == before


def test_a_customer_linked_to_the_other_type_still_updates_its_own_match(contacts):
    target = make_target(mappings={"name": "name"})
    contacts.insert_one(
        {"parent_account": target.account_id, "type": "business", "stripe_customer_id": "cus_X"}
    )
    person = contacts.insert_one(
        {**target.scope(), "email": "p@x.com", "email_key": "p@x.com", "name": "P"}
    ).inserted_id

    result = upsert_customers(
        contacts, [customer("cus_X", "p@x.com", name="Pat")], target, SeenCustomers()
    )

    assert (result.updated, result.skipped) == (1, 0)
    assert contacts.find_one({"_id": person})["name"] == "Pat"


def test_update_only_imports_skip_customers_without_a_contact(contacts):
    target = make_target(new_contact=False)
    contacts.insert_one({**target.scope(), "email": "a@example.com", "email_key": "a@example.com"})

    result = upsert_customers(
        contacts,
        [customer("cus_a", "a@example.com"), customer("cus_b", "b@example.com")],
        target,
        SeenCustomers(),
    )

    assert (result.added, result.updated, result.skipped) == (0, 1, 1)
    assert result.skip_reasons == {"no matching contact and new_contact is false": 1}
    assert contacts.count_documents({}) == 1


def test_a_customer_without_email_is_keyed_by_its_stripe_id_and_found_again(contacts):
    target = make_target(mappings={"name": "name"})

    first = upsert_customers(contacts, [customer("cus_x", None, name="X")], target, SeenCustomers())
    again = upsert_customers(contacts, [customer("cus_x", None, name="Y")], target, SeenCustomers())

    assert (first.added, again.added, again.updated) == (1, 0, 1)
    [contact] = contacts.find(target.scope())
    assert contact["stripe_customer_id"] == "cus_x"
    assert contact["name"] == "Y"
    assert "email_key" not in contact
    assert "email" not in contact


def test_an_existing_email_is_kept_when_stripe_has_none(contacts):
    target = make_target(mappings={"name": "name"})
    contacts.insert_one(
        {**target.scope(), "email": "k@example.com", "email_key": "k@example.com",
         "stripe_customer_id": "cus_k"}
    )  # fmt: skip

    upsert_customers(contacts, [customer("cus_k", None, name="K")], target, SeenCustomers())

    contact = contacts.find_one(target.scope())
    assert (contact["email"], contact["email_key"], contact["name"]) == (
        "k@example.com",
        "k@example.com",
        "K",
    )


def test_duplicate_emails_make_one_contact_and_the_first_customer_wins(contacts):
    target = make_target(mappings={"name": "name"})
    seen = SeenCustomers()
    first_page = [
        customer("cus_new", "dup@example.com", name="Newest"),
        customer("cus_mid", "DUP@example.com ", name="Middle"),
    ]
    second_page = [customer("cus_old", "dup@EXAMPLE.com", name="Oldest")]

    one = upsert_customers(contacts, first_page, target, seen)
    two = upsert_customers(contacts, second_page, target, seen)

    assert (one.added, len(one.duplicates), two.added, two.updated) == (1, 1, 0, 0)
    assert [d.as_document() for d in one.duplicates + two.duplicates] == [
        {"stripe_customer_id": "cus_mid", "email": "DUP@example.com", "duplicate_of": "cus_new"},
        {"stripe_customer_id": "cus_old", "email": "dup@EXAMPLE.com", "duplicate_of": "cus_new"},
    ]
    [contact] = contacts.find(target.scope())
    assert (contact["name"], contact["stripe_customer_id"]) == ("Newest", "cus_new")


def test_two_customers_resolving_to_one_existing_contact_update_it_once(contacts):
    target = make_target(mappings={"name": "name"})
    contacts.insert_one(
        {**target.scope(), "email": "a@example.com", "email_key": "a@example.com",
         "stripe_customer_id": "cus_a"}
    )  # fmt: skip
    page = [customer("cus_b", "a@example.com", name="B"), customer("cus_a", None, name="A")]

    result = upsert_customers(contacts, page, target, SeenCustomers())

    assert (result.updated, [d.duplicate_of for d in result.duplicates]) == (1, ["cus_b"])
    assert contacts.find_one(target.scope())["name"] == "B"


@pytest.mark.parametrize("batches", [[2], [1, 1]], ids=["one batch", "two batches"])
def test_a_contact_taken_by_a_newer_customer_stays_taken_wherever_batches_begin(contacts, batches):
    target = make_target(mappings={"name": "name"})
    contacts.insert_one(
        {**target.scope(), "email": "old@example.com", "email_key": "old@example.com",
         "stripe_customer_id": "cus_b", "name": "Before"}
    )  # fmt: skip
    # Newest first: cus_b, the contact's customer, has a new email now; cus_c, older, has the
    # email the contact had. Looked up after cus_b's update landed, cus_c would match nothing.
    customers = [
        customer("cus_b", "new@example.com", name="B"),
        customer("cus_c", "old@example.com", name="C"),
    ]
    seen = SeenCustomers()
    results, start = [], 0
    for size in batches:
        results.append(upsert_customers(contacts, customers[start : start + size], target, seen))
        start += size

    assert sum(r.updated for r in results) == 1
    assert sum(r.added for r in results) == 0
    assert [d.as_document() for r in results for d in r.duplicates] == [
        {"stripe_customer_id": "cus_c", "email": "old@example.com", "duplicate_of": "cus_b"}
    ]
    [contact] = contacts.find(target.scope())
    assert (contact["email"], contact["name"]) == ("new@example.com", "B")


def test_a_failing_write_is_an_import_error_and_the_rest_of_the_batch_lands(contacts):
    target = make_target(mappings={"name": "name"})
    # cus_2 now has the email another contact holds: its update breaks the unique email key.
    contacts.insert_many(
        [
            {**target.scope(), "email": "taken@example.com", "email_key": "taken@example.com"},
            {**target.scope(), "email": "two@example.com", "email_key": "two@example.com",
             "stripe_customer_id": "cus_2"},
        ]
    )  # fmt: skip
    page = [
        customer("cus_1", "one@example.com", name="One"),
        customer("cus_2", "Taken@example.com", name="Two"),
        customer("cus_3", "three@example.com", name="Three"),
    ]

    result = upsert_customers(contacts, page, target, SeenCustomers())

    assert (result.added, result.updated) == (2, 0)
    [error] = result.errors
    assert error.stripe_customer_id == "cus_2"
    assert error.email == "Taken@example.com"
    assert "already has this email" in error.message
    assert contacts.count_documents({"stripe_customer_id": {"$in": ["cus_1", "cus_3"]}}) == 2


def test_a_customer_that_cannot_be_mapped_is_an_import_error(contacts):
    target = make_target()

    result = upsert_customers(
        contacts, [{"email": "no-id@example.com"}, customer("cus_ok", "ok@example.com")], target,
        SeenCustomers(),
    )  # fmt: skip

    assert result.added == 1
    [error] = result.errors
    assert (error.email, error.stripe_customer_id) == ("no-id@example.com", None)
    assert "Could not map" in error.message


def test_concurrent_imports_converge_on_one_contact(contacts):
    account = ObjectId()
    one, two = make_target(account), make_target(account)
    page = [customer("cus_1", "same@example.com")]
    plans = [
        plan_upserts(page, find_existing_contacts(contacts, page, target), target, SeenCustomers())
        for target in (one, two)
    ]

    contacts.bulk_write(plans[0].operations, ordered=False)
    result = contacts.bulk_write(plans[1].operations, ordered=False)

    assert (result.upserted_count, result.matched_count) == (0, 1)
    assert contacts.count_documents({"parent_account": account}) == 1


def test_address_parts_replace_a_null_address_whole(contacts):
    target = make_target(mappings=SEED_MAPPINGS)
    contact_id = contacts.insert_one(
        {**target.scope(), "email": "a@example.com", "email_key": "a@example.com",
         "address": None}
    ).inserted_id  # fmt: skip
    page = [customer("cus_a", "a@example.com", address={"line1": "1 Road", "city": "Paris"})]
    plan = plan_upserts(page, contacts.find(target.scope()), target, SeenCustomers())

    assert plan.operations[0]._doc["$set"]["address"] == {"street": "1 Road", "city": "Paris"}
    upsert_customers(contacts, page, target, SeenCustomers())
    assert contacts.find_one({"_id": contact_id})["address"] == {
        "street": "1 Road",
        "city": "Paris",
    }


def test_address_parts_merge_into_an_existing_address(contacts):
    target = make_target(mappings=SEED_MAPPINGS)
    contact_id = contacts.insert_one(
        {**target.scope(), "email": "a@example.com", "email_key": "a@example.com",
         "address": {"street": "old", "zip": "75001"}}
    ).inserted_id  # fmt: skip

    upsert_customers(
        contacts,
        [customer("cus_a", "a@example.com", address={"line1": "1 Road", "line2": "Flat 2"})],
        target,
        SeenCustomers(),
    )

    contact = contacts.find_one({"_id": contact_id})
    assert contact["address"] == {"street": "1 Road, Flat 2", "zip": "75001"}
    assert contact["old_field_values"] == {"email": "a@example.com", "address": {"street": "old"}}


def test_one_find_and_one_bulk_write_per_page(contacts):
    target = make_target(mappings=SEED_MAPPINGS)
    counting = CountingCollection(contacts)
    page = [customer(f"cus_{i}", f"c{i}@example.com") for i in range(100)]

    upsert_customers(counting, page, target, SeenCustomers())
    upsert_customers(counting, page, target, SeenCustomers())

    assert counting.calls == ["find", "bulk_write", "find", "bulk_write"]


def test_backfill_gives_other_tools_contacts_an_email_key(contacts):
    target = make_target()
    contacts.insert_many(
        [
            {**target.scope(), "email": " Mixed@Case.com "},
            {**target.scope(), "email": "mixed@case.com"},
            {**target.scope(), "email": ""},
            {**target.scope(), "email": None},
            {"parent_account": target.account_id, "type": "business", "email": "b@x.com"},
        ]
    )

    backfill = backfill_email_keys(contacts, target)

    assert (backfill.updated, backfill.conflicts) == (1, 1)
    assert sorted(str(c.get("email_key")) for c in contacts.find(target.scope())) == [
        "None",
        "None",
        "None",
        "mixed@case.com",
    ]
    assert "email_key" not in contacts.find_one({"type": "business"})


def test_backfill_writes_in_batches_and_counts_conflicts_across_them(contacts, monkeypatch):
    monkeypatch.setattr(upsert, "BACKFILL_BATCH_SIZE", 2)
    monkeypatch.setattr(upsert, "BACKFILL_READ_SIZE", 2)
    target = make_target()
    contacts.insert_many(
        [{**target.scope(), "email": f"c{n}@example.com"} for n in range(4)]
        + [{**target.scope(), "email": "C0@example.com"}]
    )
    counting = CountingCollection(contacts)

    backfill = backfill_email_keys(counting, target)

    assert (backfill.updated, backfill.conflicts) == (4, 1)
    # One read a batch: memory does not grow with the account.
    assert counting.calls == ["find", "bulk_write"] * 3
    keys = [c.get("email_key") for c in contacts.find(target.scope())]
    assert sorted(k for k in keys if k) == [f"c{n}@example.com" for n in range(4)]


def test_a_contact_whose_email_the_crm_changed_matches_by_its_email_now(contacts):
    target = make_target(mappings={"name": "name"})
    upsert_customers(
        contacts, [customer("cus_1", "old@example.com", name="A")], target, SeenCustomers()
    )
    edited = contacts.find_one({"stripe_customer_id": "cus_1"})["_id"]
    # The CRM, which knows nothing of email_key, changes the contact's email.
    contacts.update_one({"_id": edited}, {"$set": {"email": "new@example.com"}})

    upsert_customers(
        contacts,
        [customer("cus_2", "New@Example.com", name="B"), customer("cus_3", "old@example.com")],
        target,
        SeenCustomers(),
    )

    contact = contacts.find_one({"_id": edited})
    assert (contact["stripe_customer_id"], contact["email_key"]) == ("cus_2", "new@example.com")
    # The customer with the email the contact no longer has gets a contact of its own.
    added = contacts.find_one({"stripe_customer_id": "cus_3"})
    assert added["_id"] != edited and added["email_key"] == "old@example.com"


def test_a_customer_with_a_contacts_former_email_does_not_take_the_contact_over(contacts):
    target = make_target(mappings={"name": "name"})
    upsert_customers(
        contacts, [customer("cus_1", "old@example.com", name="A")], target, SeenCustomers()
    )
    contacts.update_one({"stripe_customer_id": "cus_1"}, {"$set": {"email": "new@example.com"}})
    # Another contact holds the new email already: the edited one keeps no key.
    contacts.insert_one(
        {**target.scope(), "email": "new@example.com", "email_key": "new@example.com"}
    )

    upsert_customers(contacts, [customer("cus_3", "old@example.com")], target, SeenCustomers())

    edited = contacts.find_one({"stripe_customer_id": "cus_1"})
    assert edited["email"] == "new@example.com" and "email_key" not in edited
    assert contacts.find_one({"stripe_customer_id": "cus_3"})["_id"] != edited["_id"]


def test_a_contact_matched_by_a_mapped_email_is_updated_with_its_values_logged(db, contacts):
    target = make_target(mappings={"metadata-work_email": "email", "name": "name"})
    target = UpsertTarget(**{**vars(target), "import_id": ObjectId()})
    existing = contacts.insert_one(
        {**target.scope(), "email": "work@example.com", "email_key": "work@example.com",
         "name": "Old"}
    ).inserted_id  # fmt: skip
    paid = customer(
        "cus_1", "home@example.com", name="New", metadata={"work_email": "work@example.com"}
    )

    result = upsert_customers(contacts, [paid], target, SeenCustomers(), db[store.IMPORT_CHANGES])

    assert (result.updated, result.added) == (1, 0)
    contact = contacts.find_one({"_id": existing})
    assert contact["name"] == "New" and contact["old_field_values"]["name"] == "Old"
    [entry] = db[store.IMPORT_CHANGES].find()
    assert (entry["action"], entry["contact_id"]) == ("update", existing)


# --- dry runs and the change log ----------------------------------------------------------------


def test_a_dry_run_plans_the_changes_and_writes_nothing(db, contacts):
    target = make_target(mappings={"name": "name", "address-city": "address.city"})
    dry = UpsertTarget(**{**vars(target), "dry_run": True, "import_id": ObjectId()})
    contacts.insert_many(
        [
            {**target.scope(), "email": "a@example.com", "email_key": "a@example.com",
             "stripe_customer_id": "cus_a", "name": "Old", "address": {"city": "Lyon"}},
            # Written by another tool: no email key yet, still matched by email.
            {**target.scope(), "email": " B@Example.com", "name": "Bee"},
        ]
    )  # fmt: skip
    snapshot = list(contacts.find({}))
    counting, change_log = CountingCollection(contacts), CountingCollection(db["changes"])
    seen = SeenCustomers()
    page = [
        customer("cus_a", "a@example.com", name="New", address={"city": "Paris"}),
        customer("cus_b", "b@example.com", name="Bee"),
        customer("cus_c", "c@example.com", name="Sea"),
    ]

    backfill = backfill_email_keys(counting, dry, seen)
    result = upsert_customers(counting, page, dry, seen, change_log)

    assert (backfill.updated, backfill.conflicts) == (1, 0)
    assert counting.calls == ["find", "find"]
    assert change_log.calls == []
    assert list(contacts.find({})) == snapshot
    assert (result.added, result.updated, result.skipped) == (1, 2, 0)
    assert result.preview == [
        {"stripe_customer_id": "cus_a", "email": "a@example.com", "action": "update",
         "changes": {"name": ["Old", "New"], "address.city": ["Lyon", "Paris"]}},
        {"stripe_customer_id": "cus_b", "email": "b@example.com", "action": "update",
         "changes": {"stripe_customer_id": [None, "cus_b"], "email": [" B@Example.com",
                                                                      "b@example.com"]}},
        {"stripe_customer_id": "cus_c", "email": "c@example.com", "action": "add",
         "changes": {"stripe_customer_id": [None, "cus_c"], "email": [None, "c@example.com"],
                     "name": [None, "Sea"]}},
    ]  # fmt: skip


def test_the_preview_stops_at_its_size_and_lists_skips_with_their_reason(contacts, monkeypatch):
    monkeypatch.setattr(upsert, "PREVIEW_SIZE", 3)
    target = UpsertTarget(**{**vars(make_target(new_contact=False)), "dry_run": True})

    result = upsert_customers(
        contacts, [customer(f"cus_{n}", f"{n}@x.com") for n in range(5)], target, SeenCustomers()
    )

    assert result.skipped == 5
    assert result.preview == [
        {"stripe_customer_id": f"cus_{n}", "email": f"{n}@x.com", "action": "skip",
         "changes": {}, "reason": "no matching contact and new_contact is false"}
        for n in range(3)
    ]  # fmt: skip


def test_every_change_is_logged_in_one_insert_before_the_bulk_write(db, contacts):
    target = UpsertTarget(**{**vars(make_target(mappings=SEED_MAPPINGS)), "import_id": ObjectId()})
    existing = contacts.insert_one(
        {**target.scope(), "email": "a@example.com", "email_key": "a@example.com",
         "address": {"city": "Lyon", "zip": "69001"}}
    ).inserted_id  # fmt: skip
    counted, change_log = CountingCollection(contacts), CountingCollection(db["changes"])
    counted.calls = change_log.calls = calls = []
    page = [
        customer("cus_a", "a@example.com", address={"line1": "1 Road", "city": "Paris"}),
        customer("cus_n", "n@example.com", address={"city": "Nice"}),
    ]

    upsert_customers(counted, page, target, SeenCustomers(), change_log)

    assert calls == ["find", "insert_many", "bulk_write"]
    update, add = db["changes"].find({}, {"_id": 0}).sort("_id", 1)
    old_values = {"email": "a@example.com", "address": {"city": "Lyon"}}
    assert update == {
        "import_id": target.import_id,
        "contact_id": existing,
        "action": "update",
        "stripe_customer_id": "cus_a",
        "email": "a@example.com",
        "changes": [
            {"field": "stripe_customer_id", "after": "cus_a"},
            {"field": "address.street", "after": "1 Road"},
            {"field": "address.city", "after": "Paris", "before": "Lyon"},
            {"field": "old_field_values", "after": old_values},
        ],
    }
    created = contacts.find_one({"stripe_customer_id": "cus_n"})
    assert (add["action"], add["contact_id"]) == ("add", created["_id"])
    assert add["created"] == {key: value for key, value in created.items() if key != "_id"}


def test_an_update_that_changes_nothing_is_not_logged(db, contacts):
    target = UpsertTarget(**{**vars(make_target()), "import_id": ObjectId()})
    contacts.insert_one(
        {**target.scope(), "email": "u@example.com", "email_key": "u@example.com",
         "stripe_customer_id": "cus_u"}
    )  # fmt: skip

    result = upsert_customers(
        contacts, [customer("cus_u", "u@example.com")], target, SeenCustomers(), db["changes"]
    )

    assert result.updated == 1
    assert db["changes"].count_documents({}) == 0


def test_a_write_that_fails_leaves_no_log_entry(db, contacts):
    target = UpsertTarget(
        **{**vars(make_target(mappings={"name": "name"})), "import_id": ObjectId()}
    )
    contacts.insert_many(
        [
            {**target.scope(), "email": "taken@example.com", "email_key": "taken@example.com"},
            {**target.scope(), "email": "two@example.com", "email_key": "two@example.com",
             "stripe_customer_id": "cus_2"},
        ]
    )  # fmt: skip
    page = [customer("cus_1", "one@example.com"), customer("cus_2", "Taken@example.com")]

    result = upsert_customers(contacts, page, target, SeenCustomers(), db["changes"])

    assert (result.added, len(result.errors)) == (1, 1)
    [entry] = db["changes"].find({})
    assert (entry["action"], entry["stripe_customer_id"]) == ("add", "cus_1")
