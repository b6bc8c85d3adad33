"""``queue_billing_import``: the Launchpad form queues a request that the sensor then runs."""

from __future__ import annotations

from bson import ObjectId
from dagster import DagsterInstance

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import tags
from stripe_crm_pipelines.billing_import.ops import ImportRunConfig
from stripe_crm_pipelines.billing_import.queue_job import QueueImportConfig, queue_billing_import
from stripe_crm_pipelines.definitions import defs
from stripe_crm_pipelines.resources import MongoResource
from tests.billing_import.test_job import CONNECTED_ACCOUNT, add_account, run_failure_message
from tests.billing_import.test_sensor import evaluate

USER = "65b000000000000000000001"


def queue(mongo_uri: str, **config):
    return queue_billing_import.execute_in_process(
        run_config={"ops": {"queue_import_request": {"config": config}}},
        resources={"mongo": MongoResource(uri=mongo_uri)},
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def test_the_form_queues_a_request_the_sensor_runs_with_its_tags(db, mongo_uri):
    account_id = add_account(db)

    result = queue(
        mongo_uri,
        account_id=str(account_id),
        type="companies",
        mappings={"name": "name", "address-city": "address.city"},
        dry_run=True,
        user_id=USER,
    )

    assert result.success
    import_id = result.output_for_node("queue_import_request")
    request = db[store.QUEUES].find_one({"_id": ObjectId(import_id)})
    assert request["status"] == "pending"
    assert request["queued_by"] == "launchpad"
    assert request["dry_run"] is True
    assert request["mappings"] == {"name": "name", "address-city": "address.city"}
    [run] = evaluate(DagsterInstance.ephemeral(), mongo_uri).run_requests
    assert run.run_config == {"ops": {"claim_import_request": {"config": {"import_id": import_id}}}}
    import_tags = {key: value for key, value in run.tags.items() if key.startswith("stripe_crm/")}
    assert import_tags == {
        tags.IMPORT_ID: import_id,
        tags.ACCOUNT_ID: str(account_id),
        tags.IMPORT_TYPE: "companies",
        tags.USER_ID: USER,
        tags.STRIPE_ACCOUNT: CONNECTED_ACCOUNT,
    }


def test_an_invalid_request_fails_the_run_and_queues_nothing(db, mongo_uri):
    account_id = add_account(db)

    result = queue(
        mongo_uri,
        account_id=str(account_id),
        type="contacts",
        mappings={"adress-city": "address.city"},
        user_id=USER,
    )

    assert not result.success
    assert run_failure_message(result) == (
        "Not queued: mappings['adress-city']: Stripe key names no field of a Stripe customer "
        "('adress' is not one of its fields); did you mean 'address-city'?"
    )
    assert db[store.QUEUES].count_documents({}) == 0


def test_the_form_is_typed_and_described():
    job = defs.resolve_job_def("queue_billing_import")
    fields = QueueImportConfig.model_fields

    assert job.name == "queue_billing_import"
    assert set(fields) == {
        "account_id", "type", "mappings", "new_contact", "dry_run", "keep_in_sync",
        "deletion_policy", "max_customers", "user_id",
    }  # fmt: skip
    assert all(field.description for field in fields.values())


def test_the_import_jobs_id_field_says_where_an_id_comes_from():
    description = ImportRunConfig.model_fields["import_id"].description

    assert "queue_billing_import" in description
    assert "python -m stripe_crm_pipelines.imports queue" in description
