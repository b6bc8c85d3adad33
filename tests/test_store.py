"""The store: every MONGODB_URI form, indexes, and the embedded store shared by processes."""

from __future__ import annotations

import multiprocessing

import pytest
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.database import Database

from stripe_crm_pipelines import store

CLAIMERS = 4
REQUESTS = 200


def test_mongomock_uri_shares_data_within_a_process(mongo_uri):
    store.connect(mongo_uri)["things"].insert_one({"name": "a"})
    assert store.connect(mongo_uri)["things"].count_documents({}) == 1
    assert store.connect(mongo_uri + "-other")["things"].count_documents({}) == 0


def test_database_name_comes_from_mongodb_database(monkeypatch, mongo_uri):
    monkeypatch.setenv("MONGODB_DATABASE", "other_crm")
    assert store.connect(mongo_uri).name == "other_crm"
    monkeypatch.delenv("MONGODB_DATABASE")
    assert store.connect(mongo_uri).name == "crm"


def test_uri_defaults_to_mongodb_uri(monkeypatch, mongo_uri):
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    store.connect()["things"].insert_one({"name": "a"})
    assert store.connect(mongo_uri)["things"].count_documents({}) == 1


def test_default_is_the_embedded_store(monkeypatch):
    monkeypatch.delenv("MONGODB_URI", raising=False)
    assert store.resolve_uri() == store.DEFAULT_STORE_DIR.as_uri()


def test_mongodb_uri_opens_pymongo_without_connecting():
    database = store.connect("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100")
    assert isinstance(database, Database)
    assert database.name == "crm"


@pytest.mark.parametrize(
    ("uri", "message"),
    [("redis://localhost", "not supported"), ("file://relative/dir", "must be absolute")],
)
def test_unsupported_uris_are_refused(uri, message):
    with pytest.raises(store.StoreConfigError, match=message):
        store.connect(uri)


def test_ensure_indexes_is_idempotent(db):
    store.ensure_indexes(db)
    names = set(db[store.CONTACTS].index_information())
    assert {"by_account_type_email", "by_stripe_customer", "by_email_key"} <= names
    assert "pending_by_source" in db[store.QUEUES].index_information()


def test_contact_uniqueness_is_partial_on_mongodb_only(db):
    # Unique indexes on mongomock scan the collection per write, so they stay off there.
    assert not store.supports_partial_indexes(db)
    account = ObjectId()
    db[store.CONTACTS].insert_one({"parent_account": account, "type": "person"})
    db[store.CONTACTS].insert_one({"parent_account": account, "type": "person"})
    assert store.supports_partial_indexes(
        store.connect("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100")
    )


def test_embedded_store_persists_across_connections(tmp_path):
    uri = (tmp_path / "store").as_uri()
    store.connect(uri)["things"].insert_one({"name": "kept"})
    store._clients.clear()
    assert store.connect(uri)["things"].find_one({}, {"_id": 0}) == {"name": "kept"}


def _claim_all(uri: str, worker: int) -> None:
    database = store.connect(uri)
    while database[store.QUEUES].find_one_and_update(
        {"status": "pending", "in_progress": False},
        {"$set": {"in_progress": True}, "$push": {"claimed_by": worker}},
        return_document=ReturnDocument.AFTER,
    ):
        pass


def _insert_contacts(uri: str, account: str) -> None:
    database = store.connect(uri)
    for index in range(50):
        database[store.CONTACTS].update_one(
            {"parent_account": ObjectId(account), "type": "person", "email_key": f"p{index}@x"},
            {"$setOnInsert": {"source": "stripe"}},
            upsert=True,
        )


def test_embedded_store_claims_are_atomic_across_processes(tmp_path):
    uri = (tmp_path / "store").as_uri()
    store.connect(uri)[store.QUEUES].insert_many(
        [{"status": "pending", "in_progress": False, "n": n} for n in range(REQUESTS)]
    )
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_claim_all, args=(uri, w)) for w in range(CLAIMERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0

    requests = list(store.connect(uri)[store.QUEUES].find({}))
    assert len(requests) == REQUESTS
    assert all(len(request["claimed_by"]) == 1 for request in requests)


def test_embedded_store_upserts_converge_across_processes(tmp_path):
    uri = (tmp_path / "store").as_uri()
    database = store.connect(uri)
    store.ensure_indexes(database)
    account = str(ObjectId())
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_insert_contacts, args=(uri, account)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert database[store.CONTACTS].count_documents({"parent_account": ObjectId(account)}) == 50
