"""The import engine (importer.py) called directly, without Dagster: mongomock store, the Stripe
sandbox over HTTP with the real SDK."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import importer, queue, upsert
from stripe_crm_pipelines.billing_import.batches import FetchSettings
from stripe_crm_pipelines.billing_import.importer import (
    ClaimedImport,
    ImportCancelled,
    ImportFailed,
    claim_import,
    run_import,
)
from stripe_crm_pipelines.billing_import.queue import ClaimLost, NotClaimable
from stripe_crm_pipelines.resources import StripeResource
from tests.conftest import CONNECTED_ACCOUNT, SECRET_KEY, add_account, add_request, import_result
from tests.reliability import assert_counts_add_up

SEQUENTIAL = FetchSettings(concurrency=1)


def stripe_clients(sandbox, **options) -> importer.StripeClientFactory:
    return StripeResource(api_base=sandbox.url, initial_retry_delay_seconds=0.01, **options).client


def clients_calling(sandbox, before: int, action: Callable[[], None], **options):
    """Clients that call ``action`` before their request number ``before``."""
    factory = stripe_clients(sandbox, **options)

    def client(secret_key, stripe_account, *, stats=None, before_request=None):
        sent = iter(range(1, 1_000_000))

        def maybe_act() -> None:
            if next(sent) == before:
                action()

        return factory(secret_key, stripe_account, stats=stats, before_request=maybe_act)

    return client


def interrupt() -> None:
    raise KeyboardInterrupt


def request_of(db, import_id) -> dict:
    return db[store.QUEUES].find_one({"_id": import_id})


@pytest.fixture
def claimed_import(db, sandbox) -> ClaimedImport:
    sandbox.state.seed_customers(250, seed=41, account=CONNECTED_ACCOUNT)
    import_id = add_request(db, add_account(db), mappings={"name": "name"})
    return claim_import(db, import_id, "run-1")


def test_an_import_runs_to_its_outcome_and_checkpoints_every_batch(
    db, sandbox, claimed_import, caplog
):
    caplog.set_level(logging.INFO, logger=importer.LOG.name)

    outcome = run_import(db, claimed_import, stripe_clients(sandbox), settings=SEQUENTIAL)

    assert (outcome.customers_fetched, outcome.pages_fetched, outcome.stripe_requests) == (
        250,
        3,
        3,
    )
    assert outcome.records_added + outcome.duplicates == 250
    assert db[store.CONTACTS].count_documents({}) == outcome.records_added
    checkpoint = request_of(db, claimed_import.request.id)["checkpoint"]
    assert (checkpoint["run_id"], checkpoint["cursor"]) == ("run-1", None)
    assert checkpoint["outcome"]["pages_fetched"] == 3
    assert "Synced 250 customers over 3 page(s)" in caplog.text
    assert SECRET_KEY not in caplog.text
    queue.complete(db, claimed_import.request.id, "run-1", outcome)
    assert_counts_add_up(import_result(db, claimed_import.request.id), 250)


def test_the_claim_applies_the_callers_limit_and_refuses_a_second_claim(db, sandbox):
    import_id = add_request(db, add_account(db), max_customers=500)
    claimed = claim_import(db, import_id, "run-1", max_customers=120)
    assert claimed.max_customers == 120

    with pytest.raises(NotClaimable, match="already in progress"):
        claim_import(db, import_id, "run-2")


def test_a_rejected_key_fails_the_import_and_closes_the_request(db, sandbox):
    sandbox.state.seed_customers(5, seed=1, account=CONNECTED_ACCOUNT)
    revoked = "sk_" + "live_RevokedKeyOfTheImporterTests000"  # no key-shaped literal in the repo
    import_id = add_request(db, add_account(db, secret_key=revoked))
    claimed = claim_import(db, import_id, "run-1")

    with pytest.raises(ImportFailed) as failed:
        run_import(db, claimed, stripe_clients(sandbox), may_retry=True)

    assert not failed.value.transient
    assert "HTTP 401" in failed.value.message
    assert revoked not in failed.value.message
    request = request_of(db, import_id)
    assert (request["status"], request["error"]) == ("failed", failed.value.message)
    assert import_result(db, import_id)["_id"] == failed.value.result_id == request["result_id"]


def test_a_transient_error_leaves_the_request_claimed_and_the_next_try_resumes(
    db, sandbox, claimed_import
):
    def fail_next_page() -> None:
        sandbox.state.inject_fault(endpoint="GET /v1/customers", status=503)

    clients = clients_calling(sandbox, before=2, action=fail_next_page, max_retries=0)

    with pytest.raises(ImportFailed) as failed:
        run_import(db, claimed_import, clients, settings=SEQUENTIAL, may_retry=True)

    assert failed.value.transient
    assert failed.value.message.startswith("Stripe is unavailable")
    request = request_of(db, claimed_import.request.id)
    assert (request["status"], request["in_progress"]) == ("pending", True)
    assert request["checkpoint"]["outcome"]["pages_fetched"] == 1

    outcome = run_import(db, claimed_import, stripe_clients(sandbox), settings=SEQUENTIAL)

    assert (outcome.customers_fetched, outcome.pages_fetched) == (250, 3)
    assert outcome.records_updated == 0, "the page written before the error is not written again"


def test_a_transient_error_without_retries_left_fails_the_import(db, sandbox, claimed_import):
    sandbox.state.inject_fault(endpoint="GET /v1/customers", status=503, count=10)

    with pytest.raises(ImportFailed) as failed:
        run_import(db, claimed_import, stripe_clients(sandbox, max_retries=0), settings=SEQUENTIAL)

    assert not failed.value.transient
    assert failed.value.message.startswith("Stripe is unavailable")
    assert request_of(db, claimed_import.request.id)["status"] == "failed"


def test_a_cancel_request_stops_the_import_and_closes_it_cancelled(db, sandbox, claimed_import):
    import_id = claimed_import.request.id
    db[store.QUEUES].update_one({"_id": import_id}, {"$set": {"status": "cancelled"}})

    with pytest.raises(ImportCancelled) as cancelled:
        run_import(db, claimed_import, stripe_clients(sandbox))

    assert cancelled.value.message == "Cancelled on request after 0 page(s), 0 customers"
    assert request_of(db, import_id)["status"] == "cancelled"
    assert import_result(db, import_id)["status"] == "cancelled"
    assert db[store.CONTACTS].count_documents({}) == 0


def test_a_run_that_lost_its_claim_writes_nothing(db, sandbox, claimed_import):
    import_id = claimed_import.request.id
    queue.requeue(db, import_id, "run-1", "taken for dead", datetime.now(UTC))
    queue.claim(db, import_id, "run-2")
    before = request_of(db, import_id)

    with pytest.raises(ClaimLost):
        run_import(db, claimed_import, stripe_clients(sandbox))

    assert request_of(db, import_id) == before
    assert db[store.CONTACTS].count_documents({}) == 0
    assert sandbox.state.requests() == []


@pytest.mark.parametrize(("terminated", "status"), [(True, "cancelled"), (False, "pending")])
def test_an_interrupt_closes_the_import_only_when_the_run_was_terminated(
    db, sandbox, claimed_import, terminated, status
):
    clients = clients_calling(sandbox, before=3, action=interrupt)

    with pytest.raises(KeyboardInterrupt):
        run_import(
            db,
            claimed_import,
            clients,
            settings=SEQUENTIAL,
            termination_requested=lambda: terminated,
        )

    request = request_of(db, claimed_import.request.id)
    assert request["status"] == status
    if terminated:
        assert request["error"] == "Run terminated; import cancelled after 2 page(s), 200 customers"
        assert import_result(db, claimed_import.request.id)["customers_fetched"] == 200
    else:
        assert request["in_progress"] is True, "left claimed for recovery"
        assert db[store.IMPORT_RESULTS].count_documents({}) == 0


def test_concurrent_imports_restore_the_collector_once_the_last_one_ends():
    """A batch run has several imports at once; the collector's settings are the process's."""
    import gc

    from stripe_crm_pipelines.billing_import.importer import (
        GC_YOUNG_THRESHOLD,
        collection_set_aside,
    )

    before = gc.get_threshold()
    first, second = collection_set_aside(), collection_set_aside()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold()[0] == max(before[0], GC_YOUNG_THRESHOLD)  # the second still runs
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before


@pytest.fixture
def embedded(tmp_path, sandbox) -> tuple[Callable[[], object], object, ClaimedImport]:
    """A claimed import of 250 customers on the embedded store, opened as the resource opens it:
    ``(connect, db, claimed)``."""
    from stripe_crm_pipelines.resources import MongoResource

    mongo = MongoResource(uri=(tmp_path / "store").as_uri())
    db = mongo.database()
    store.ensure_indexes(db)
    sandbox.state.seed_customers(250, seed=43, account=CONNECTED_ACCOUNT)
    import_id = add_request(db, add_account(db), mappings={"name": "name"})
    return mongo.database, db, claim_import(db, import_id, "run-1")


def test_on_the_embedded_store_an_import_writes_on_the_callers_connection(
    embedded, sandbox, monkeypatch
):
    """A litemongo connection re-reads a whole collection after another connection wrote to it:
    batches written from a thread of their own would have every batch (and every import of a
    batch run) read all contacts again."""
    import litemongo

    connect, db, claimed = embedded
    import_id = claimed.request.id
    opened = []
    original = litemongo.connect
    monkeypatch.setattr(litemongo, "connect", lambda *a, **k: opened.append(a) or original(*a, **k))

    outcome = run_import(
        db,
        claimed,
        stripe_clients(sandbox),
        settings=FetchSettings(fan_out_after_seconds=0, batch_size=100, min_batch_size=100),
        connect=connect,
    )

    assert outcome.customers_fetched == 250
    assert outcome.records_added + outcome.duplicates == 250
    assert db[store.CONTACTS].count_documents({}) == outcome.records_added
    assert request_of(db, import_id)["checkpoint"]["cursor"] is None
    assert opened == []


def test_a_run_terminated_during_a_write_on_the_embedded_store_says_so(
    embedded, sandbox, monkeypatch
):
    """There a batch is written in the thread the terminate interrupts: the batch is not
    counted, though some of its contacts may be written, and the message says so."""
    connect, db, claimed = embedded
    written = []

    def write_then_terminated(*args, **kwargs):
        written.append(upsert.execute_plan(*args, **kwargs))
        if len(written) == 2:
            raise KeyboardInterrupt  # the terminate lands just after the bulk write
        return written[-1]

    monkeypatch.setattr(importer, "execute_plan", write_then_terminated)

    with pytest.raises(KeyboardInterrupt):
        run_import(
            db,
            claimed,
            stripe_clients(sandbox),
            settings=SEQUENTIAL,
            connect=connect,
            termination_requested=lambda: True,
        )

    request = request_of(db, claimed.request.id)
    assert request["status"] == "cancelled"
    assert request["error"] == (
        "Run terminated; import cancelled after 1 page(s), 100 customers, while the next 100 "
        "customers were being written: some of their contacts may have been written, each "
        "logged in contact_import_changes"
    )
    result = import_result(db, claimed.request.id)
    assert (result["status"], result["customers_fetched"]) == ("cancelled", 100)
    contacts = db[store.CONTACTS].count_documents({})
    assert contacts == result["records_added"] + written[1].added > result["records_added"]
    assert db[store.IMPORT_CHANGES].count_documents({"import_id": claimed.request.id}) == contacts


def test_a_run_terminated_during_a_write_on_mongodb_counts_the_batch(
    db, sandbox, claimed_import, monkeypatch
):
    """On MongoDB batches are written on a thread of their own, which the terminate (SIGINT to
    the run's process) does not interrupt: the import waits for the write and counts it, even
    when the terminate lands as the first write starts."""
    interrupted = threading.Event()
    written = []

    def on_interrupt(signum, frame):
        if not interrupted.is_set():  # the first of the signals below is the terminate
            interrupted.set()
            raise KeyboardInterrupt

    def terminated_while_writing(*args, **kwargs):
        if not written:
            # A signal that lands just before the op's thread blocks is only handled once that
            # thread wakes: send it again until it is handled.
            for _ in range(100):
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                if interrupted.wait(0.05):
                    break
            assert interrupted.is_set(), "the op's thread never took the interrupt"
        written.append(upsert.execute_plan(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(importer, "execute_plan", terminated_while_writing)
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_import(
                db,
                claimed_import,
                stripe_clients(sandbox),
                settings=SEQUENTIAL,
                termination_requested=lambda: True,
            )
    finally:
        signal.signal(signal.SIGINT, previous)

    request = request_of(db, claimed_import.request.id)
    assert request["error"] == "Run terminated; import cancelled after 1 page(s), 100 customers"
    result = import_result(db, claimed_import.request.id)
    assert result["records_added"] == written[0].added == db[store.CONTACTS].count_documents({})
