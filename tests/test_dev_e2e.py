"""`make dev` for real: dagster dev (webserver + daemon), the embedded store and the sandbox.

The sensor, not the test, launches the imports: the demo request and one inserted by the test
must both end completed, with contacts written and a successful run in run history.
"""

from __future__ import annotations

import datetime as dt

import pytest
from bson import ObjectId

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import tags
from stripe_crm_pipelines.local import demo
from tests.devstack import ACTIVE_RUN_STATUSES

pytestmark = pytest.mark.slow

IMPORT_DEADLINE_SECONDS = 120


def _finished_status(db, import_id: ObjectId) -> str | None:
    document = db[store.QUEUES].find_one({"_id": import_id})
    return document["status"] if document and document["status"] != "pending" else None


def test_sensor_driven_imports_complete_under_dagster_dev(dev_stack):
    db = dev_stack.db
    status = dev_stack.wait(
        lambda: _finished_status(db, demo.DEMO_IMPORT_ID),
        IMPORT_DEADLINE_SECONDS,
        "the demo import request",
    )
    assert status == "completed", dev_stack.log_tail()

    import_id = ObjectId()
    db[store.QUEUES].insert_one(
        {
            "_id": import_id,
            "status": "pending",
            "source": "billing-contacts",
            "in_progress": False,
            "type": "companies",
            "account_id": demo.DEMO_ACCOUNT_ID,
            "user_id": demo.DEMO_USER_ID,
            "parent_account": demo.DEMO_ACCOUNT_ID,
            "client_id": demo.DEMO_CLIENT_ID,
            "mappings": {"name": "name"},
            "new_contact": True,
            "createdAt": dt.datetime.now(dt.UTC),
        }
    )
    status = dev_stack.wait(
        lambda: _finished_status(db, import_id),
        IMPORT_DEADLINE_SECONDS,
        "the inserted import request",
    )
    assert status == "completed", dev_stack.log_tail()

    people = db[store.CONTACTS].count_documents(
        {"parent_account": demo.DEMO_ACCOUNT_ID, "type": "person", "source": "stripe"}
    )
    businesses = db[store.CONTACTS].count_documents(
        {"parent_account": demo.DEMO_ACCOUNT_ID, "type": "business", "source": "stripe"}
    )
    assert people > 0
    assert businesses > 0
    result = db[store.IMPORT_RESULTS].find_one({"import_id": import_id})
    assert result["status"] == "completed"
    assert result["records_added"] == businesses

    wanted = {str(demo.DEMO_IMPORT_ID), str(import_id)}

    def finished_runs() -> dict[str, dict] | None:
        # The request is marked completed by the run's last op, just before the run ends.
        by_import = {
            run["tags"][tags.IMPORT_ID]: run
            for run in dev_stack.runs("billing_contact_import")
            if tags.IMPORT_ID in run["tags"] and run["status"] not in ACTIVE_RUN_STATUSES
        }
        return by_import if wanted <= set(by_import) else None

    by_import = dev_stack.wait(finished_runs, 60, "both runs to finish")
    assert by_import[str(demo.DEMO_IMPORT_ID)]["status"] == "SUCCESS"
    run = by_import[str(import_id)]
    assert run["status"] == "SUCCESS"
    assert run["tags"][tags.ACCOUNT_ID] == str(demo.DEMO_ACCOUNT_ID)
    assert run["tags"][tags.IMPORT_TYPE] == "companies"
    assert demo.DEMO_SECRET_KEY not in str(by_import)
