"""The sync engine against the Stripe sandbox over HTTP: a real import, then events applied."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_sync.events import (
    EVENT_RETENTION_SECONDS,
    read_customer_events,
)
from stripe_crm_pipelines.billing_sync.state import (
    SYNC_STATE,
    EventsCursor,
    load_sync_state,
    record_full_import,
    set_enabled,
)
from stripe_crm_pipelines.billing_sync.syncer import (
    SYNC_RESULT_NAME,
    SyncOutcome,
    apply_changes,
    new_outcome,
    run_sync,
)
from stripe_crm_pipelines.resources import StripeResource
from stripe_crm_pipelines.resources.stripe import RequestStats
from stripe_crm_pipelines.sandbox import SandboxControl
from tests.billing_import.test_job import (
    CONNECTED_ACCOUNT,
    SECRET_KEY,
    add_account,
    add_request,
    run_import,
)
from tests.billing_import.test_upsert import SEED_MAPPINGS

DAY = 24 * 3600


def stripe_client(sandbox, stripe_account: str = CONNECTED_ACCOUNT, stats=None):
    resource = StripeResource(api_base=sandbox.url, initial_retry_delay_seconds=0.01)
    return resource.client(SECRET_KEY, stripe_account, stats=stats)


def keep_in_sync(
    db,
    mongo_uri,
    sandbox,
    instance,
    *,
    stripe_account: str = CONNECTED_ACCOUNT,
    mappings: dict | None = None,
    new_contact: bool = True,
    deletion_policy: str = "keep",
    change_during_import=None,
) -> ObjectId:
    """A completed keep_in_sync import of the account; the import engine takes the events cursor
    before it lists customers and records the sync state when it completes.
    ``change_during_import`` runs after the import has read every customer."""
    account_id = add_account(db, stripe_account=stripe_account)
    mappings = SEED_MAPPINGS if mappings is None else mappings
    import_id = add_request(
        db,
        account_id,
        mappings=mappings,
        new_contact=new_contact,
        keep_in_sync=True,
        deletion_policy=deletion_policy,
    )
    assert run_import(mongo_uri, sandbox, import_id, instance).success
    if change_during_import is not None:
        change_during_import()
    state = load_sync_state(db, account_id, "person")
    assert state is not None, "the completed keep_in_sync import started the account's sync"
    return account_id


def sync(db, sandbox, account_id, stripe_account=CONNECTED_ACCOUNT, **kwargs) -> SyncOutcome:
    stats = RequestStats()
    state = load_sync_state(db, account_id, "person")
    client = stripe_client(sandbox, stripe_account, stats)
    return run_sync(db, client, state, run_id=f"run-{ObjectId()}", stats=stats, **kwargs)


def contact_of(db, customer_id: str) -> dict[str, Any]:
    return db[store.CONTACTS].find_one({"stripe_customer_id": customer_id})


def contacts_snapshot(db) -> list[dict[str, Any]]:
    return list(db[store.CONTACTS].find({}, sort=[("_id", 1)]))


def sandbox_client(stripe_client_factory, account: str = CONNECTED_ACCOUNT):
    """A second client, as someone editing customers in Stripe's dashboard would be."""
    return stripe_client_factory(account)


# --- updates, new customers, deletions --------------------------------------------------------


def test_updates_and_new_customers_are_applied_with_one_request(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    ada = sandbox.state.add_customer(
        CONNECTED_ACCOUNT, email="ada@example.com", address={"line1": "1 Main St", "city": "Oslo"}
    )
    sandbox.state.add_customer(CONNECTED_ACCOUNT, email="bob@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    editor = sandbox_client(stripe_client_factory)
    editor.v1.customers.update(
        ada["id"], params={"address": {"line1": "2 High St", "city": "Rome"}}
    )
    new = editor.v1.customers.create(
        params={"email": "cy@example.com", "address": {"city": "Lima"}}
    )
    sandbox.state.clear_requests()

    outcome = sync(db, sandbox, account_id)

    assert outcome.status == "completed", outcome.error
    assert contact_of(db, ada["id"])["address"] == {"street": "2 High St", "city": "Rome"}
    assert contact_of(db, ada["id"])["old_field_values"]["address"]["city"] == "Oslo"
    created = contact_of(db, new.id)
    assert (created["email"], created["address"], created["source"]) == (
        "cy@example.com", {"city": "Lima"}, "stripe",
    )  # fmt: skip
    assert created["parent_account"] == account_id
    assert (outcome.records_added, outcome.records_updated, outcome.events_read) == (1, 1, 2)
    assert outcome.stripe_requests == 1
    assert sandbox.state.request_counts() == {"GET /v1/events": 1}
    [result] = db[store.IMPORT_RESULTS].find({"name": SYNC_RESULT_NAME})
    assert {key: result[key] for key in ("status", "type", "records_added", "records_updated",
                                         "records_archived", "events_read", "stripe_requests",
                                         "run_id", "account_id")} == {
        "status": "completed", "type": "person", "records_added": 1, "records_updated": 1,
        "records_archived": 0, "events_read": 2, "stripe_requests": 1,
        "run_id": outcome.run_id, "account_id": str(account_id),
    }  # fmt: skip
    assert result["started_at"] <= result["finished_at"]
    state = load_sync_state(db, account_id, "person")
    newest = editor.v1.events.list(params={"limit": 1}).data[0]
    assert state.events_cursor == EventsCursor(newest.id, newest.created)
    assert state.last_synced_at is not None and state.last_error is None


def test_a_sync_with_nothing_new_reads_one_page_and_writes_nothing(
    db, mongo_uri, sandbox, instance
):
    sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    sync(db, sandbox, account_id)
    before = contacts_snapshot(db)

    outcome = sync(db, sandbox, account_id)

    assert outcome.status == "completed"
    assert outcome.events_read == 0 and outcome.stripe_requests == 1
    assert contacts_snapshot(db) == before


def test_new_customers_are_skipped_without_new_contact(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance, new_contact=True)
    db[store.CONTACTS].update_many({}, {"$set": {"kept": True}})
    db[SYNC_STATE].update_one({"account_id": account_id}, {"$set": {"new_contact": False}})
    new = sandbox_client(stripe_client_factory).v1.customers.create(
        params={"email": "new@example.com"}
    )

    outcome = sync(db, sandbox, account_id)

    assert outcome.records_skipped == 1 and outcome.records_added == 0
    assert contact_of(db, new.id) is None


@pytest.mark.parametrize("policy", ["keep", "archive"])
def test_deleted_customers_follow_the_deletion_policy(
    db, mongo_uri, sandbox, instance, stripe_client_factory, policy
):
    gone = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="gone@example.com")
    sandbox.state.add_customer(CONNECTED_ACCOUNT, email="kept@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance, deletion_policy=policy)
    before = contact_of(db, gone["id"])
    editor = sandbox_client(stripe_client_factory)
    editor.v1.customers.delete(gone["id"])
    deleted_event = editor.v1.events.list(params={"type": "customer.deleted"}).data[0]

    outcome = sync(db, sandbox, account_id)
    again = sync(db, sandbox, account_id)

    after = contact_of(db, gone["id"])
    assert db[store.CONTACTS].count_documents({}) == 2  # nothing is ever deleted
    if policy == "keep":
        assert after == before
        assert (outcome.deletions_kept, outcome.records_archived) == (1, 0)
    else:
        assert after == {
            **before,
            "stripe_deleted": True,
            "stripe_deleted_at": datetime.fromtimestamp(deleted_event.created, UTC),
        }
        assert outcome.records_archived == 1
        [result] = db[store.IMPORT_RESULTS].find({"run_id": outcome.run_id})
        assert result["records_archived"] == 1
    assert again.events_read == 0 and contact_of(db, gone["id"]) == after


def test_an_email_change_keeps_the_contact_matched_by_its_stripe_id(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    ada = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="Ada@Example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    contact_id = contact_of(db, ada["id"])["_id"]
    sandbox_client(stripe_client_factory).v1.customers.update(
        ada["id"], params={"email": "ada.lovelace@example.org"}
    )

    outcome = sync(db, sandbox, account_id)

    contact = db[store.CONTACTS].find_one({"_id": contact_id})
    assert (contact["email"], contact["email_key"]) == (
        "ada.lovelace@example.org", "ada.lovelace@example.org",
    )  # fmt: skip
    assert contact["old_field_values"]["email"] == "Ada@Example.com"
    assert db[store.CONTACTS].count_documents({}) == 1
    assert (outcome.records_updated, outcome.records_added) == (1, 0)
    # A new customer with the old email now matches no contact by Stripe id and gets its own.
    reused = sandbox_client(stripe_client_factory).v1.customers.create(
        params={"email": "ada@example.com"}
    )
    sync(db, sandbox, account_id)
    assert contact_of(db, reused.id)["_id"] != contact_id


def test_a_customer_updated_several_times_between_syncs_gets_its_newest_state(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    ada = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    editor = sandbox_client(stripe_client_factory)
    for city in ("Paris", "Berlin", "Madrid"):
        editor.v1.customers.update(ada["id"], params={"address": {"city": city}})

    outcome = sync(db, sandbox, account_id)

    assert contact_of(db, ada["id"])["address"]["city"] == "Madrid"
    assert (outcome.events_read, outcome.customers_changed, outcome.records_updated) == (3, 1, 1)


def test_changes_made_while_the_full_import_runs_are_applied_by_the_first_sync(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    ada = sandbox.state.add_customer(
        CONNECTED_ACCOUNT, email="ada@example.com", address={"city": "Oslo"}
    )
    editor = sandbox_client(stripe_client_factory)
    late: dict[str, Any] = {}

    def edit_after_the_import_read_ada():
        editor.v1.customers.update(ada["id"], params={"address": {"city": "Bergen"}})
        late["customer"] = editor.v1.customers.create(params={"email": "late@example.com"})

    account_id = keep_in_sync(
        db, mongo_uri, sandbox, instance, change_during_import=edit_after_the_import_read_ada
    )
    assert contact_of(db, ada["id"])["address"]["city"] == "Oslo"  # the import missed it

    outcome = sync(db, sandbox, account_id)

    assert contact_of(db, ada["id"])["address"]["city"] == "Bergen"
    assert contact_of(db, late["customer"].id) is not None
    assert (outcome.records_updated, outcome.records_added) == (1, 1)


def test_an_account_without_events_at_import_time_syncs_from_a_time_cursor(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    sandbox.state.seed_customers(30, seed=5, account=CONNECTED_ACCOUNT)  # records no events
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    state = load_sync_state(db, account_id, "person")
    assert state.events_cursor.event_id is None
    customer_id = sandbox.state.customers(CONNECTED_ACCOUNT)[0]["id"]
    sandbox_client(stripe_client_factory).v1.customers.update(
        customer_id, params={"address": {"city": "Quito"}}
    )

    outcome = sync(db, sandbox, account_id)

    assert outcome.status == "completed" and outcome.records_updated == 1
    assert contact_of(db, customer_id)["address"]["city"] == "Quito"
    assert load_sync_state(db, account_id, "person").events_cursor.event_id is not None


# --- stale cursors ----------------------------------------------------------------------------


def test_a_cursor_stripe_no_longer_keeps_queues_a_full_import(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    ada = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance, deletion_policy="archive")
    control = SandboxControl(sandbox.url)
    control.advance_clock(31 * DAY)
    sandbox_client(stripe_client_factory).v1.customers.update(ada["id"], params={"name": "Ada"})
    before = contacts_snapshot(db)
    original = db[store.QUEUES].find_one({"keep_in_sync": True})

    outcome = sync(db, sandbox, account_id)

    assert outcome.status == "resync_queued"
    assert "Stripe no longer has the cursor's event" in outcome.error
    assert contacts_snapshot(db) == before  # no guessing
    resync = db[store.QUEUES].find_one({"_id": outcome.resync_import_id})
    assert {key: resync[key] for key in resync if key not in ("_id", "createdAt")} == {
        "status": "pending",
        "source": "billing-contacts",
        "in_progress": False,
        "type": "contacts",
        "account_id": account_id,
        "user_id": original["user_id"],
        "parent_account": original["parent_account"],
        "client_id": original["client_id"],
        "mappings": SEED_MAPPINGS,
        "new_contact": True,
        "keep_in_sync": True,
        "deletion_policy": "archive",
        "reason": "resync",
        "queued_by": "sync",
    }
    state = load_sync_state(db, account_id, "person")
    assert state.resync_import_id == resync["_id"]
    assert "stale" in state.last_error and str(resync["_id"]) in state.last_error
    assert not state.is_due(datetime.now(UTC))
    # A second sync does not queue a second import while the first waits.
    assert sync(db, sandbox, account_id).resync_import_id == resync["_id"]
    assert db[store.QUEUES].count_documents({"reason": "resync"}) == 1
    control.close()


def test_a_time_cursor_older_than_30_days_queues_a_full_import(db, mongo_uri, sandbox, instance):
    sandbox.state.seed_customers(3, seed=5, account=CONNECTED_ACCOUNT)
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    cursor = load_sync_state(db, account_id, "person").events_cursor
    assert cursor.event_id is None

    stale = sync(db, sandbox, account_id, now=cursor.created + EVENT_RETENTION_SECONDS + 60)

    assert stale.status == "resync_queued" and "30 days" in stale.error
    assert db[store.QUEUES].count_documents({"reason": "resync"}) == 1


def test_a_quiet_account_moves_its_cursor_on_instead_of_going_stale(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    ada = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    cursor = load_sync_state(db, account_id, "person").events_cursor
    assert cursor.event_id is not None

    week_later = sync(db, sandbox, account_id, now=cursor.created + 3 * DAY)
    assert load_sync_state(db, account_id, "person").events_cursor == cursor
    sandbox.state.advance_clock(8 * DAY)  # Stripe's clock and the sync's move together
    quiet = sync(db, sandbox, account_id, now=cursor.created + 8 * DAY)
    moved = load_sync_state(db, account_id, "person").events_cursor
    sandbox.state.advance_clock(25 * DAY)  # the import's event is gone now
    sandbox_client(stripe_client_factory).v1.customers.update(
        ada["id"], params={"address": {"city": "Faro"}}
    )
    later = sync(db, sandbox, account_id, now=cursor.created + 33 * DAY)

    assert (week_later.status, quiet.status, quiet.events_read) == ("completed", "completed", 0)
    assert moved.event_id is None and moved.created >= cursor.created + 8 * DAY - 300
    assert later.status == "completed" and later.records_updated == 1
    assert contact_of(db, ada["id"])["address"]["city"] == "Faro"
    assert db[store.QUEUES].count_documents({"reason": "resync"}) == 0


# --- failures and idempotency -----------------------------------------------------------------


def test_a_crash_between_the_writes_and_the_cursor_changes_nothing_when_run_again(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    ada = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    gone = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="gone@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance, deletion_policy="archive")
    editor = sandbox_client(stripe_client_factory)
    editor.v1.customers.update(ada["id"], params={"address": {"city": "Paris"}, "name": "Ada"})
    editor.v1.customers.delete(gone["id"])
    new = editor.v1.customers.create(params={"email": "new@example.com"})
    state = load_sync_state(db, account_id, "person")
    # The first run writes, then dies before moving the cursor.
    read = read_customer_events(stripe_client(sandbox), state.events_cursor)
    crashed = new_outcome(state, "crashed-run")
    apply_changes(db, state, read.changes, crashed)
    assert (crashed.records_updated, crashed.records_added, crashed.records_archived) == (1, 1, 1)
    written = contacts_snapshot(db)
    assert load_sync_state(db, account_id, "person").events_cursor == state.events_cursor

    outcome = sync(db, sandbox, account_id)

    assert contacts_snapshot(db) == written
    assert outcome.events_read == 3
    assert (outcome.records_added, outcome.records_updated, outcome.records_archived) == (0, 0, 0)
    assert outcome.records_unchanged == 2
    assert contact_of(db, new.id)["stripe_customer_id"] == new.id


def test_events_of_two_customers_sharing_an_email_applied_twice_change_nothing(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    editor = sandbox_client(stripe_client_factory)
    older = editor.v1.customers.create(
        params={"email": "Same@example.com", "address": {"city": "Old"}}
    )
    newer = editor.v1.customers.create(
        params={"email": "same@example.com", "address": {"city": "New"}}
    )
    state = load_sync_state(db, account_id, "person")
    read = read_customer_events(stripe_client(sandbox), state.events_cursor)
    first = new_outcome(state, "crashed-run")
    apply_changes(db, state, read.changes, first)
    # The newer customer wins the email; the older one is a duplicate.
    assert (first.records_added, first.duplicates) == (1, 1)
    written = contacts_snapshot(db)
    assert contact_of(db, newer.id)["address"]["city"] == "New"

    outcome = sync(db, sandbox, account_id)  # the same events again: the cursor did not move

    assert contacts_snapshot(db) == written
    assert contact_of(db, older.id) is None
    assert (outcome.records_added, outcome.records_updated, outcome.records_unchanged) == (0, 0, 1)
    assert outcome.duplicates == 1


def test_a_customer_a_business_contact_holds_is_skipped_by_a_person_sync(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    customer = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="biz@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance, mappings={})
    # As a payment link for a business contact would have linked it.
    db[store.CONTACTS].delete_many({"stripe_customer_id": customer["id"]})
    db[store.CONTACTS].insert_one(
        {
            "parent_account": account_id,
            "type": "business",
            "email": "biz@example.com",
            "stripe_customer_id": customer["id"],
        }
    )
    sandbox_client(stripe_client_factory).v1.customers.update(customer["id"], params={"name": "B"})

    outcome = sync(db, sandbox, account_id)

    assert (outcome.records_unchanged, outcome.records_skipped) == (0, 1)
    assert customer["id"] not in outcome.written_customer_ids
    assert db[store.CONTACTS].count_documents({"stripe_customer_id": customer["id"]}) == 1


def test_a_revoked_key_fails_clearly_and_the_state_says_so(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    ada = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    sandbox_client(stripe_client_factory).v1.customers.update(ada["id"], params={"name": "A"})
    cursor = load_sync_state(db, account_id, "person").events_cursor
    sandbox.state.configure(api_keys=("sk_test_someone_else",))

    outcome = sync(db, sandbox, account_id)

    assert outcome.status == "failed" and not outcome.transient
    assert outcome.error.startswith("Stripe rejected the account's billing key")
    assert SECRET_KEY not in outcome.error
    state = load_sync_state(db, account_id, "person")
    assert state.last_error == outcome.error
    assert state.events_cursor == cursor and state.last_synced_at is None
    [result] = db[store.IMPORT_RESULTS].find({"name": SYNC_RESULT_NAME})
    assert (result["status"], result["error"]) == ("failed", outcome.error)


def test_an_event_the_sync_cannot_read_fails_it_clearly_and_leaves_the_cursor(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    ada = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    before = load_sync_state(db, account_id, "person")
    sandbox_client(stripe_client_factory).v1.customers.update(
        ada["id"], params={"address": {"city": "Paris"}}
    )
    with sandbox.state.lock:  # the server sends an event without its customer's id
        events = sandbox.state.api.account(CONNECTED_ACCOUNT).events
        del next(iter(events.newest_first()))["data"]["object"]["id"]

    outcome = sync(db, sandbox, account_id)

    assert outcome.status == "failed" and not outcome.transient
    assert outcome.error == "Sync failed unexpectedly: KeyError: 'id'"
    after = load_sync_state(db, account_id, "person")
    assert after.last_error == outcome.error
    assert after.events_cursor == before.events_cursor
    result = db[store.IMPORT_RESULTS].find_one({"name": "stripe-sync", "run_id": outcome.run_id})
    assert (result["status"], result["error"]) == ("failed", outcome.error)
    assert contact_of(db, ada["id"]).get("address", {}).get("city") is None


def test_two_accounts_sync_at_once_each_with_its_own_changes(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    accounts = {"acct_1SyncFirst": None, "acct_2SyncSecond": None}
    customers = {}
    for stripe_account in accounts:
        customers[stripe_account] = sandbox.state.add_customer(
            stripe_account, email=f"{stripe_account}@example.com"
        )
        accounts[stripe_account] = keep_in_sync(
            db, mongo_uri, sandbox, instance, stripe_account=stripe_account
        )
        stripe_client_factory(stripe_account).v1.customers.update(
            customers[stripe_account]["id"], params={"address": {"city": stripe_account}}
        )
    sandbox.state.configure(latency_ms=50)
    outcomes: dict[str, SyncOutcome] = {}

    def run(stripe_account):
        outcomes[stripe_account] = sync(db, sandbox, accounts[stripe_account], stripe_account)

    threads = [threading.Thread(target=run, args=(name,)) for name in accounts]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert time.perf_counter() - started < 2
    for stripe_account, account_id in accounts.items():
        outcome = outcomes[stripe_account]
        assert outcome.status == "completed" and outcome.records_updated == 1
        contact = contact_of(db, customers[stripe_account]["id"])
        assert contact["parent_account"] == account_id
        assert contact["address"]["city"] == stripe_account
    assert db[store.CONTACTS].count_documents({}) == 2


# --- the state --------------------------------------------------------------------------------


def test_a_later_full_import_replaces_the_state_and_keeps_a_pause(db, mongo_uri, sandbox, instance):
    sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    assert set_enabled(db, account_id, "person", False)
    db[SYNC_STATE].update_one({"account_id": account_id}, {"$set": {"last_error": "old"}})

    record_full_import(
        db,
        account_id=account_id,
        import_type="contacts",
        user_id=ObjectId(),
        mappings={"name": "full_name"},
        new_contact=False,
        deletion_policy="archive",
        events_cursor=EventsCursor("evt_1", 1_700_000_000),
        finished_at=datetime.now(UTC),
    )

    assert db[SYNC_STATE].count_documents({}) == 1
    state = load_sync_state(db, account_id, "person")
    assert (state.mappings, state.new_contact, state.deletion_policy) == (
        {"name": "full_name"}, False, "archive",
    )  # fmt: skip
    assert state.events_cursor == EventsCursor("evt_1", 1_700_000_000)
    assert state.last_error is None and not state.enabled
    assert not state.is_due(datetime.now(UTC))
    with pytest.raises(ValueError, match="deletion_policy"):
        record_full_import(
            db,
            account_id=account_id,
            import_type="contacts",
            user_id=ObjectId(),
            mappings={},
            new_contact=False,
            deletion_policy="purge",
            events_cursor=EventsCursor(None, 0),
            finished_at=datetime.now(UTC),
        )


def test_one_state_per_account_and_type_is_enforced_by_an_index(db):
    [index] = [
        index for index in db[SYNC_STATE].list_indexes() if index["name"] == "by_account_type"
    ]
    assert index["unique"] and list(index["key"]) == ["account_id", "type"]


def archived_contact(db, mongo_uri, sandbox, instance, editor) -> tuple[ObjectId, ObjectId]:
    """An account kept in sync with the archive policy whose one customer, shared@example.com,
    was deleted and its contact archived: (account id, contact id)."""
    gone = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="shared@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance, deletion_policy="archive")
    editor.v1.customers.delete(gone["id"])
    sync(db, sandbox, account_id)
    assert contact_of(db, gone["id"])["stripe_deleted"] is True
    return account_id, contact_of(db, gone["id"])["_id"]


def test_an_archived_contact_taken_by_a_new_customer_with_its_email_is_live_again(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    editor = sandbox_client(stripe_client_factory)
    account_id, contact_id = archived_contact(db, mongo_uri, sandbox, instance, editor)

    successor = editor.v1.customers.create(params={"email": "Shared@example.com"})
    sync(db, sandbox, account_id)

    contact = db[store.CONTACTS].find_one({"_id": contact_id})
    assert contact["stripe_customer_id"] == successor.id
    assert "stripe_deleted" not in contact and "stripe_deleted_at" not in contact


def test_a_full_import_that_writes_an_archived_contact_makes_it_live_again(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    editor = sandbox_client(stripe_client_factory)
    account_id, contact_id = archived_contact(db, mongo_uri, sandbox, instance, editor)
    successor = editor.v1.customers.create(params={"email": "shared@example.com"})

    # The account is imported again (as the resync of a stale cursor does) before a sync.
    again = add_request(
        db, account_id, mappings=SEED_MAPPINGS, keep_in_sync=True, deletion_policy="archive"
    )
    assert run_import(mongo_uri, sandbox, again, instance).success

    contact = db[store.CONTACTS].find_one({"_id": contact_id})
    assert contact["stripe_customer_id"] == successor.id
    assert "stripe_deleted" not in contact and "stripe_deleted_at" not in contact
    # The next sync of the successor's event finds the contact as it should be.
    assert sync(db, sandbox, account_id).status == "completed"
    assert "stripe_deleted" not in db[store.CONTACTS].find_one({"_id": contact_id})


def test_an_archived_contact_already_holding_a_live_customers_values_is_made_live(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    """A contact left archived though it holds a live customer (a write that stopped half way in
    an earlier version, or a hand edit) is not taken for unchanged by that customer's events."""
    ada = sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance, deletion_policy="archive")
    db[store.CONTACTS].update_one(
        {"stripe_customer_id": ada["id"]},
        {"$set": {"stripe_deleted": True, "stripe_deleted_at": datetime.now(UTC)}},
    )
    sandbox_client(stripe_client_factory).v1.customers.update(
        ada["id"], params={"metadata": {"note": "no mapped field changes"}}
    )

    outcome = sync(db, sandbox, account_id)

    assert (outcome.records_updated, outcome.records_unchanged) == (1, 0)
    contact = contact_of(db, ada["id"])
    assert "stripe_deleted" not in contact and "stripe_deleted_at" not in contact


def test_a_request_may_set_the_sync_interval(db):
    account_id = ObjectId()

    def record(interval):
        record_full_import(
            db,
            account_id=account_id,
            import_type="companies",
            user_id=ObjectId(),
            mappings={},
            new_contact=True,
            deletion_policy=None,
            events_cursor=EventsCursor(None, 1_700_000_000),
            finished_at=datetime.now(UTC),
            sync_interval_seconds=interval,
        )
        return load_sync_state(db, account_id, "business")

    assert record(None).sync_interval_seconds == 300
    assert record(30).sync_interval_seconds == 30
    assert record(None).sync_interval_seconds == 30  # kept until a request sets another
    assert record(None).deletion_policy == "keep"


def test_a_contact_the_crm_created_since_the_import_is_matched_by_email(
    db, mongo_uri, sandbox, instance, stripe_client_factory
):
    sandbox.state.add_customer(CONNECTED_ACCOUNT, email="ada@example.com")
    account_id = keep_in_sync(db, mongo_uri, sandbox, instance)
    crm_contact = (
        db[store.CONTACTS]
        .insert_one({"parent_account": account_id, "type": "person", "email": " Grace@Example.com"})
        .inserted_id
    )
    grace = sandbox_client(stripe_client_factory).v1.customers.create(
        params={"email": "grace@example.com", "address": {"city": "Arlington"}}
    )

    outcome = sync(db, sandbox, account_id)

    assert (outcome.records_added, outcome.records_updated) == (0, 1)
    contact = db[store.CONTACTS].find_one({"_id": crm_contact})
    assert contact["stripe_customer_id"] == grace.id
    assert contact["address"] == {"city": "Arlington"}
