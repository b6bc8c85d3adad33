"""The store: every MONGODB_URI form, indexes, and the embedded store shared by processes."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from stripe_crm_pipelines import store
from stripe_crm_pipelines.resources import MongoResource

CLAIMERS = 4
REQUESTS = 200
UNREACHABLE_MONGODB = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100"


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
    database = store.connect(UNREACHABLE_MONGODB)
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
    assert store.supports_partial_indexes(store.connect(UNREACHABLE_MONGODB))


class FakeMongoServer:
    """The index state of a MongoDB server, answering the two calls that read and create indexes.

    There is no MongoDB server here. pymongo's ``MongoClient`` connects lazily, so the objects
    production uses (a real ``pymongo.database.Database`` inside the resource's wrappers) are
    built for real; only ``Collection.index_information`` and ``Collection.create_indexes``,
    the calls that would reach the network, are answered from this in-memory state, as a server
    would: the index documents by name, or ``OperationFailure`` "not authorized" (code 13) when
    the user may not create indexes.
    """

    def __init__(self, monkeypatch, *, may_create_indexes: bool = True):
        self.indexes: dict[str, dict[str, dict]] = {}
        self.may_create_indexes = may_create_indexes
        server = self

        def index_information(collection: Collection) -> dict[str, dict]:
            return dict(server.indexes.get(collection.name, {}))

        def create_indexes(collection: Collection, indexes, **kwargs) -> list[str]:
            if not server.may_create_indexes:
                raise OperationFailure("not authorized on crm to execute command", code=13)
            for index in indexes:
                document = dict(index.document)
                server.indexes.setdefault(collection.name, {})[document.pop("name")] = document
            return [index.document["name"] for index in indexes]

        monkeypatch.setattr(Collection, "index_information", index_information)
        monkeypatch.setattr(Collection, "create_indexes", create_indexes)


def test_the_resource_database_on_mongodb_gets_unique_contact_indexes(monkeypatch):
    """What the jobs call, ``MongoResource(...).database()``, is a wrapped pymongo database;
    its contact keys must be created ``unique`` (they were not while the check missed the
    wrapper)."""
    server = FakeMongoServer(monkeypatch)
    database = MongoResource(uri=UNREACHABLE_MONGODB).database()

    assert store.supports_partial_indexes(database)
    store.ensure_indexes(database)

    for name, field in (
        ("by_stripe_customer", "stripe_customer_id"),
        ("by_email_key", "email_key"),
    ):
        index = server.indexes[store.CONTACTS][name]
        assert index["unique"] is True
        assert index["partialFilterExpression"] == {field: {"$type": "string"}}


def test_contact_indexes_are_created_before_an_import_when_missing(monkeypatch):
    server = FakeMongoServer(monkeypatch)
    store.ensure_contact_indexes(MongoResource(uri=UNREACHABLE_MONGODB).database())
    assert {"by_stripe_customer", "by_email_key"} <= set(server.indexes[store.CONTACTS])
    assert "pending_by_source" in server.indexes[store.QUEUES]


def test_missing_contact_indexes_fail_with_the_command_to_run(monkeypatch):
    FakeMongoServer(monkeypatch, may_create_indexes=False)
    with pytest.raises(store.MissingIndexesError) as raised:
        store.ensure_contact_indexes(MongoResource(uri=UNREACHABLE_MONGODB).database())
    assert store.ENSURE_INDEXES_COMMAND in str(raised.value)
    assert "by_email_key" in str(raised.value)


def test_present_contact_indexes_are_only_read(monkeypatch):
    server = FakeMongoServer(monkeypatch)
    database = MongoResource(uri=UNREACHABLE_MONGODB).database()
    store.ensure_indexes(database)
    server.may_create_indexes = False
    store.ensure_contact_indexes(database)


def test_a_non_unique_contact_index_on_mongodb_is_not_taken_for_the_unique_one(monkeypatch):
    server = FakeMongoServer(monkeypatch)
    server.indexes[store.CONTACTS] = {
        "by_stripe_customer": {"key": {"stripe_customer_id": 1}},
        "by_email_key": {"key": {"email_key": 1}},
    }
    server.may_create_indexes = False
    with pytest.raises(store.MissingIndexesError, match="dropIndex"):
        store.ensure_contact_indexes(MongoResource(uri=UNREACHABLE_MONGODB).database())


def test_local_stores_have_no_contact_indexes_to_verify(mongo_uri):
    database = MongoResource(uri=mongo_uri).database()
    store.ensure_contact_indexes(database)
    assert set(database[store.CONTACTS].index_information()) <= {"_id_"}


def test_the_ensure_indexes_command_runs(tmp_path):
    """The command the error tells an operator to run works as written."""
    command = store.ENSURE_INDEXES_COMMAND.removeprefix("python -c ").strip('"')
    uri = (tmp_path / "store").as_uri()
    completed = subprocess.run(
        [sys.executable, "-c", command],
        env={**os.environ, "MONGODB_URI": uri},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "by_email_key" in store.connect(uri)[store.CONTACTS].index_information()


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


def test_only_the_embedded_store_asks_for_one_writer(tmp_path, mongo_uri):
    """Batch runs import one account at a time there (the resource's own wrapped database)."""
    embedded = MongoResource(uri=tmp_path.as_uri()).database()
    assert store.prefers_one_writer(embedded)
    assert not store.prefers_one_writer(MongoResource(uri=mongo_uri).database())
    assert not store.prefers_one_writer(store.connect("mongodb://127.0.0.1:1/?connect=false"))
