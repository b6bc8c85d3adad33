"""Every state change of an import request (queue.py), against mongomock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from bson import ObjectId

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import queue
from stripe_crm_pipelines.billing_import.queue import (
    Checkpoint,
    ClaimLost,
    ClaimRejected,
    ClaimState,
    NotClaimable,
)
from stripe_crm_pipelines.billing_import.results import ImportOutcome
from tests.conftest import add_account, add_request, import_result
from tests.reliability import FaultyDatabase

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def request_of(db, import_id: ObjectId) -> dict:
    return db[store.QUEUES].find_one({"_id": import_id})


def outcome_of(import_id: ObjectId, **counts) -> ImportOutcome:
    return ImportOutcome(str(import_id), str(ObjectId()), str(ObjectId()), "person", NOW, **counts)


@pytest.fixture
def pending(db) -> ObjectId:
    return add_request(db, add_account(db), mappings={"name": "name"})


@pytest.fixture
def held(db, pending) -> ObjectId:
    queue.claim(db, pending, "r1", NOW)
    return pending


def test_pending_requests_are_listed_newest_first(db):
    account_id = add_account(db)
    older = add_request(db, account_id, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    newer = add_request(db, account_id, created_at=datetime(2026, 2, 1, tzinfo=UTC))
    add_request(db, account_id, source="csv")
    queue.claim(db, add_request(db, account_id), "r1")

    listed = queue.pending_requests(db, {"_id": 1})

    assert [request["_id"] for request in listed] == [newer, older]


def test_a_claim_takes_the_request_and_returns_it_parsed(db, pending):
    db[store.QUEUES].update_one({"_id": pending}, {"$set": {"checkpoint": {}, "error": "old"}})

    claim = queue.claim(db, pending, "r1", NOW)

    assert (claim.request.id, claim.run_id, claim.claimed_at) == (pending, "r1", NOW)
    assert [mapping.crm_field for mapping in claim.request.mappings] == ["name"]
    assert (claim.request.attempts, claim.resume_from) == (1, None)
    request = request_of(db, pending)
    assert (request["status"], request["in_progress"], request["claimed_by_run"]) == (
        "pending",
        True,
        "r1",
    )
    assert request["attempts"] == 1
    assert "checkpoint" not in request and "error" not in request


def test_a_claim_retried_after_a_lost_reply_finds_its_own_first_try(db, pending):
    first = queue.claim(db, pending, "r1", NOW)
    again = queue.claim(db, pending, "r1")

    assert again == first
    assert request_of(db, pending)["attempts"] == 1


def test_of_two_racing_claims_one_wins_and_the_other_changes_nothing(db, mongo_uri, pending):
    """Run r2 claims the request between r1's decision to claim and r1's write."""

    def r2_claims_first(collection: str, method: str, args) -> None:
        if collection == store.QUEUES and method == "find_one_and_update":
            queue.claim(db, pending, "r2")

    with pytest.raises(NotClaimable, match="already in progress \\(claimed by run r2\\)"):
        queue.claim(FaultyDatabase(db, r2_claims_first), pending, "r1")

    request = request_of(db, pending)
    assert (request["claimed_by_run"], request["attempts"]) == ("r2", 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "completed", "in_progress": False}, "is 'completed', not pending"),
        ({"source": "csv"}, "is not a billing import (source 'csv')"),
        ({"in_progress": True}, "already in progress (claimed by run unknown)"),
    ],
)
def test_a_request_that_is_not_pending_is_not_claimed(db, pending, change, message):
    db[store.QUEUES].update_one({"_id": pending}, {"$set": change})
    before = request_of(db, pending)

    with pytest.raises(NotClaimable, match=message.replace("(", "\\(").replace(")", "\\)")):
        queue.claim(db, pending, "r1")

    assert request_of(db, pending) == before


def test_a_missing_request_is_not_claimable(db):
    missing = ObjectId()
    with pytest.raises(NotClaimable, match=f"Import request {missing} does not exist"):
        queue.claim(db, missing, "r1")


def test_an_invalid_request_is_claimed_then_failed_with_the_reason(db):
    import_id = add_request(db, add_account(db), import_type="leads")

    with pytest.raises(ClaimRejected) as rejected:
        queue.claim(db, import_id, "r1")

    request = request_of(db, import_id)
    assert (request["status"], request["in_progress"]) == ("failed", False)
    assert request["error"] == rejected.value.message
    assert rejected.value.message.startswith("Invalid import request: type: 'leads'")
    result = import_result(db, import_id)
    assert (result["status"], result["_id"]) == ("failed", rejected.value.result_id)
    assert request["result_id"] == result["_id"]


def test_a_checkpoint_is_saved_and_read_back_by_the_holding_run_only(db, held):
    assert queue.saved_checkpoint(db, held, "r1") is None
    checkpoint = Checkpoint("r1", 1_750_000_000, "cus_9", outcome_of(held, records_added=7))

    queue.save_checkpoint(db, held, checkpoint)

    assert queue.saved_checkpoint(db, held, "r1") == checkpoint
    saved = request_of(db, held)["checkpoint"]
    assert (saved["run_id"], saved["cursor"], saved["outcome"]["records_added"]) == (
        "r1",
        "cus_9",
        7,
    )
    before = request_of(db, held)
    with pytest.raises(ClaimLost):
        queue.save_checkpoint(db, held, Checkpoint("r2", 1, None, outcome_of(held)))
    with pytest.raises(ClaimLost):
        queue.saved_checkpoint(db, held, "r2")
    assert request_of(db, held) == before


def test_a_heartbeat_is_stamped_while_held_and_sees_a_cancel(db, held):
    assert queue.heartbeat(db, held, "r1") is ClaimState.HELD
    beat = request_of(db, held)["heartbeat_at"]
    db[store.QUEUES].update_one({"_id": held}, {"$set": {"status": "cancelled"}})

    assert queue.heartbeat(db, held, "r1") is ClaimState.CANCEL_REQUESTED
    assert request_of(db, held)["heartbeat_at"] >= beat
    assert queue.heartbeat(db, held, "r2") is ClaimState.LOST


def test_complete_records_the_result_and_closes_the_request_once(db, held):
    db[store.QUEUES].update_one({"_id": held}, {"$set": {"resume_from": {"cursor": "x"}}})
    outcome = outcome_of(held, records_added=3)
    outcome.finish(NOW)

    result_id, closed = queue.complete(db, held, "r1", outcome)
    again = queue.complete(db, held, "r1", outcome)

    assert closed and again == (result_id, True)
    request = request_of(db, held)
    assert (request["status"], request["in_progress"], request["result_id"]) == (
        "completed",
        False,
        result_id,
    )
    assert "resume_from" not in request
    assert import_result(db, held)["records_added"] == 3


@pytest.mark.parametrize(
    ("dry_run", "note"),
    [(False, queue.CANCELLED_TOO_LATE), (True, queue.DRY_RUN_CANCELLED_TOO_LATE)],
    ids=["import", "dry-run"],
)
def test_a_cancel_asked_after_the_last_write_completes_with_a_note_saying_so(
    db, held, dry_run, note
):
    db[store.QUEUES].update_one({"_id": held}, {"$set": {"dry_run": dry_run}})
    # The CRM cancels after the import's last batch boundary, before it records its result.
    db[store.QUEUES].update_one({"_id": held}, {"$set": {"status": "cancelled"}})
    outcome = outcome_of(held, records_added=3)
    outcome.finish(NOW)

    result_id, closed = queue.complete(db, held, "r1", outcome)
    assert queue.complete(db, held, "r1", outcome) == (result_id, True)

    request = request_of(db, held)
    assert closed and (request["status"], request["in_progress"]) == ("completed", False)
    assert request["note"] == note
    result = import_result(db, held)
    assert (result["records_added"], result["note"]) == (3, note)


def test_complete_by_a_run_that_lost_the_claim_leaves_the_request(db, held):
    before = request_of(db, held)
    _, closed = queue.complete(db, held, "r2", outcome_of(held))
    assert not closed
    assert request_of(db, held) == before


def test_complete_after_recovery_closed_the_request_writes_nothing(db, held):
    queue.fail(db, held, "r1", outcome_of(held), "no heartbeat; gave up after 3 attempts")
    before = request_of(db, held)

    # The run was alive after all and finishes its import.
    assert queue.complete(db, held, "r1", outcome_of(held, records_added=3)) == (None, False)

    assert request_of(db, held) == before
    assert [r["status"] for r in db[store.IMPORT_RESULTS].find({"import_id": held})] == ["failed"]


def test_complete_after_the_request_was_queued_again_writes_no_result(db, held):
    assert queue.requeue(db, held, "r1", "Run r1 died", NOW)

    assert queue.complete(db, held, "r1", outcome_of(held, records_added=3)) == (None, False)

    assert request_of(db, held)["status"] == "pending"
    assert db[store.IMPORT_RESULTS].count_documents({}) == 0


def test_requeue_leaves_a_request_the_crm_cancelled_for_recovery_to_close(db, held):
    db[store.QUEUES].update_one({"_id": held}, {"$set": {"status": "cancelled"}})

    assert not queue.requeue(db, held, "r1", "Run r1 died", NOW)

    assert request_of(db, held)["status"] == "cancelled"
    assert queue.held_request(db, held, "r1").cancel_requested
    assert queue.held_request(db, held, "r2") is None


@pytest.mark.parametrize(("close", "status"), [(queue.fail, "failed"), (queue.cancel, "cancelled")])
def test_fail_and_cancel_close_the_request_with_its_result(db, held, close, status):
    result_id = close(db, held, "r1", outcome_of(held, records_added=2), "why")

    request = request_of(db, held)
    assert (request["status"], request["in_progress"], request["error"]) == (status, False, "why")
    result = import_result(db, held)
    assert (result["_id"], result["status"], result["error"]) == (result_id, status, "why")
    assert (request["result_id"], result["records_added"]) == (result_id, 2)
    assert close(db, held, "r1", outcome_of(held), "again") is None, "closed once"


def test_a_close_by_another_run_writes_nothing(db, held):
    before = request_of(db, held)
    assert queue.fail(db, held, "r2", outcome_of(held), "not mine") is None
    assert request_of(db, held) == before
    assert db[store.IMPORT_RESULTS].count_documents({}) == 0
    with pytest.raises(ValueError):
        queue.close(db, held, "r1", outcome_of(held), status="completed", message="no")


def test_requeue_keeps_the_checkpoint_as_resume_from_for_the_next_claim(db, held):
    checkpoint = Checkpoint("r1", 1_750_000_000, "cus_9", outcome_of(held, records_added=5))
    queue.save_checkpoint(db, held, checkpoint)

    assert queue.requeue(db, held, "r1", "Run r1 died", NOW)

    request = request_of(db, held)
    assert (request["status"], request["in_progress"], request["last_error"]) == (
        "pending",
        False,
        "Run r1 died",
    )
    assert not {"claimed_by_run", "claimed_at", "heartbeat_at", "checkpoint"} & set(request)
    assert request["failed_attempts"] == [{"run_id": "r1", "error": "Run r1 died", "at": NOW}]
    assert request["resume_from"]["cursor"] == "cus_9"
    claim = queue.claim(db, held, "r2")
    assert claim.resume_from == checkpoint
    assert claim.request.attempts == 2


def test_requeue_by_a_run_that_lost_the_claim_changes_nothing(db, held):
    before = request_of(db, held)
    assert not queue.requeue(db, held, "r2", "not mine", NOW)
    assert request_of(db, held) == before


def test_held_requests_are_ours_only(db, held):
    legacy = add_request(db, add_account(db), in_progress=True)  # the Node.js queue manager's

    [only] = list(queue.held_requests(db))

    assert (only.import_id, only.run_id, only.attempts) == (held, "r1", 1)
    assert only.claimed_at == NOW and not only.cancel_requested
    assert queue.request_held_by(db, "r1").import_id == held
    assert queue.request_held_by(db, "r2") is None
    assert request_of(db, legacy)["in_progress"] is True


def test_others_working_on_an_account_include_a_second_claim_of_the_same_run(db):
    account_id = add_account(db)
    first, second = add_request(db, account_id), add_request(db, account_id)
    queue.claim(db, first, "batch", NOW)

    # A sync (holding no request) or a run of its own sees the batch's claim.
    assert queue.others_working_on(db, account_id, "sync-run") == [first]
    # Alone, the batch's import of the account sees nobody else.
    assert queue.others_working_on(db, account_id, "batch", first) == []

    queue.claim(db, second, "batch", NOW)
    assert queue.others_working_on(db, account_id, "batch", first) == [second]
    assert queue.others_working_on(db, account_id, "batch", second) == [first]
    assert queue.others_working_on(db, account_id, "batch") == []
