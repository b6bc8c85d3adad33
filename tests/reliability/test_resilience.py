"""``stripe_crm_pipelines.resilience``: which MongoDB calls are retried, how patiently, and how a
bulk write that lost a race for a unique key is finished."""

from __future__ import annotations

import pytest
from bson import ObjectId
from pymongo import InsertOne, UpdateOne
from pymongo.errors import AutoReconnect, NetworkTimeout, OperationFailure

from stripe_crm_pipelines import resilience, store
from stripe_crm_pipelines.resilience import (
    MongoRetry,
    ResilientDatabase,
    merge_bulk_results,
)
from stripe_crm_pipelines.resources import MongoResource
from tests.conftest import enforce_unique_contacts


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(resilience, "sleep", waited.append)
    return waited


def failing(times: int, error=AutoReconnect, result="done"):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= times:
            raise error(f"failure {len(calls)}")
        return result

    return call, calls


def test_transient_errors_are_retried_with_exponential_backoff_and_jitter(sleeps):
    retry = MongoRetry(attempts=5, initial_delay=0.1, max_delay=0.3)
    call, calls = failing(4, NetworkTimeout)

    assert retry.run("contacts.find", call) == "done"

    assert len(calls) == 5
    for waited, ceiling in zip(sleeps, (0.1, 0.2, 0.3, 0.3), strict=True):
        assert ceiling / 2 <= waited <= ceiling


def test_retries_give_up_with_the_last_error(sleeps):
    call, calls = failing(10)
    with pytest.raises(AutoReconnect, match="failure 3"):
        MongoRetry(attempts=3).run("queues.update_one", call)
    assert len(calls) == 3


def test_other_errors_are_not_retried(sleeps):
    call, calls = failing(1, OperationFailure)
    with pytest.raises(OperationFailure):
        MongoRetry().run("queues.update_one", call)
    assert (len(calls), sleeps) == (1, [])


class Flaky:
    """A collection whose ``method`` fails ``times`` times before it works."""

    def __init__(self, collection, method: str, times: int):
        self._collection = collection
        self._method = method
        self.failures_left = times

    def __getattr__(self, name):
        attribute = getattr(self._collection, name)
        if name != self._method:
            return attribute

        def call(*args, **kwargs):
            if self.failures_left:
                self.failures_left -= 1
                raise AutoReconnect("injected")
            return attribute(*args, **kwargs)

        return call


@pytest.fixture
def contacts(db):
    db[store.CONTACTS].insert_many([{"n": n, "email_key": f"{n}@x"} for n in range(5)])
    return db[store.CONTACTS]


def resilient(collection, method: str, times: int):
    return resilience.ResilientCollection(Flaky(collection, method, times), MongoRetry())


def test_a_find_is_read_in_full_inside_the_retry(contacts, sleeps):
    found = resilient(contacts, "find", 2).find({"n": {"$gte": 1}}).sort("n", -1).limit(3)
    assert [document["n"] for document in found] == [4, 3, 2]
    assert len(sleeps) == 2


def test_updates_and_claims_are_retried(contacts, sleeps):
    updated = resilient(contacts, "find_one_and_update", 1).find_one_and_update(
        {"n": 1}, {"$set": {"claimed": True}}
    )
    assert updated["n"] == 1
    assert contacts.find_one({"n": 1})["claimed"] is True


def test_inserts_are_not_retried(contacts, sleeps):
    with pytest.raises(AutoReconnect):
        resilient(contacts, "insert_one", 1).insert_one({"n": 99})
    assert sleeps == []


def test_upserts_that_lost_a_race_are_retried_as_updates(db, sleeps):
    enforce_unique_contacts(db)
    contacts = db[store.CONTACTS]
    scope = {"parent_account": "a1", "type": "person"}
    contacts.insert_one({**scope, "email_key": "taken@x", "name": "the other import's"})
    operations = [
        UpdateOne({**scope, "email_key": "new@x"}, {"$set": {"name": "new"}}, upsert=True),
        UpdateOne({**scope, "email_key": "taken@x"}, {"$set": {"name": "mine"}}, upsert=True),
    ]
    tries = []

    class RacingMongoDB:
        """The first try is answered as MongoDB does when both upserts found nothing and the
        other import inserted ``taken@x`` in between: the insert fails with E11000."""

        def bulk_write(self, requests, **kwargs):
            tries.append(len(requests))
            if len(tries) == 1:
                requests = [InsertOne({**op._filter, **op._doc["$set"]}) for op in requests]
            return contacts.bulk_write(requests, **kwargs)

    result = resilience.ResilientCollection(RacingMongoDB(), MongoRetry()).bulk_write(
        operations, ordered=False
    )

    assert tries == [2, 1], "only the upsert that lost is written again"
    assert (result.upserted_count, result.matched_count) == (0, 1)
    assert result.bulk_api_result["nInserted"] == 1
    assert result.bulk_api_result["writeErrors"] == []
    assert contacts.count_documents({"email_key": "taken@x"}) == 1
    assert contacts.find_one({"email_key": "taken@x"})["name"] == "mine"


def test_merge_bulk_results_maps_retried_positions_back():
    first = {
        "nInserted": 0, "nUpserted": 2, "nMatched": 1, "nModified": 1, "nRemoved": 0,
        "upserted": [{"index": 0, "_id": "a"}, {"index": 3, "_id": "d"}],
        "writeErrors": [{"index": 1, "code": 11000}, {"index": 2, "code": 11000},
                        {"index": 4, "code": 121}],
    }  # fmt: skip
    retry = {
        "nInserted": 0, "nUpserted": 0, "nMatched": 1, "nModified": 1, "nRemoved": 0,
        "upserted": [], "writeErrors": [{"index": 1, "code": 11000}],
    }  # fmt: skip

    merged = merge_bulk_results(first, retry, [1, 2])

    assert (merged["nUpserted"], merged["nMatched"]) == (2, 2)
    assert [error["index"] for error in merged["writeErrors"]] == [2, 4]
    assert [entry["index"] for entry in merged["upserted"]] == [0, 3]


def test_the_resource_wraps_the_store_with_its_retry_settings(mongo_uri):
    database = MongoResource(uri=mongo_uri, retry_attempts=2).database()
    assert isinstance(database, ResilientDatabase)
    assert database.name == "crm"
    assert database[store.QUEUES].find_one({}) is None


class LostReply(Flaky):
    """``insert_many`` takes effect, then the reply is lost, ``times`` times."""

    def __getattr__(self, name):
        attribute = getattr(self._collection, name)
        if name != "insert_many":
            return attribute

        def call(*args, **kwargs):
            result = attribute(*args, **kwargs)
            if self.failures_left:
                self.failures_left -= 1
                raise AutoReconnect("reply lost")
            return result

        return call


def test_inserts_with_their_own_ids_are_retried_and_counted_once(db, sleeps):
    """The change log's entries carry their ids: a retry after a lost reply writes none twice."""
    log = db[store.IMPORT_CHANGES]
    entries = [{"_id": ObjectId(), "n": n} for n in range(3)]

    result = resilience.ResilientCollection(LostReply(log, "insert_many", 1), MongoRetry())
    inserted = result.insert_many(entries, ordered=False)

    assert inserted.inserted_ids == [entry["_id"] for entry in entries]
    assert sorted(document["n"] for document in log.find()) == [0, 1, 2]
    assert len(sleeps) == 1
    with pytest.raises(AutoReconnect):  # without ids of their own, not retried
        resilience.ResilientCollection(Flaky(log, "insert_many", 1), MongoRetry()).insert_many(
            [{"n": 3}], ordered=False
        )
