"""deploy/dagster.yaml, the production instance: PostgreSQL storage, run queue limits, monitoring.

The schema checks run everywhere. The rest runs against the real PostgreSQL on 127.0.0.1:5432
(skipped when nothing accepts connections there): a fresh database per test, an instance built
from deploy/dagster.yaml, the real ``billing_import_sensor`` evaluated on that instance, its run
request executed against the Stripe sandbox, and the run read back from PostgreSQL through a
second instance, with its tags, status, counts and the account's asset event.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from pathlib import Path

import psycopg2
import pytest
import yaml
from bson import ObjectId
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    build_sensor_context,
)
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_postgres import DagsterPostgresStorage
from psycopg2 import sql

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import import tags
from stripe_crm_pipelines.billing_import.job import billing_contact_import
from stripe_crm_pipelines.billing_import.sensor import billing_import_sensor
from stripe_crm_pipelines.resources import MongoResource, StripeResource
from stripe_crm_pipelines.resources.import_batching import ImportBatchingResource

PROJECT = Path(__file__).resolve().parents[1]
DEPLOY_INSTANCE = PROJECT / "deploy" / "dagster.yaml"
HELM_VALUES = PROJECT / "deploy" / "helm" / "values.yaml"
LOCAL_INSTANCE = PROJECT / "dagster.yaml"

PG_HOST = os.environ.get("STRIPE_CRM_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("STRIPE_CRM_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("STRIPE_CRM_TEST_PG_USER", "postgres")
PG_PASSWORD = os.environ.get("STRIPE_CRM_TEST_PG_PASSWORD", "")
PG_ADMIN_DB = os.environ.get("STRIPE_CRM_TEST_PG_ADMIN_DB", "postgres")

STRIPE_ACCOUNT = "acct_1PostgresInstance"
SECRET_KEY = "sk_test_postgres_instance"
CUSTOMERS = 120
PER_ACCOUNT_LIMIT = {
    "key": tags.STRIPE_ACCOUNT,
    "value": {"applyLimitPerUniqueValue": True},
    "limit": 1,
}


def _pg_env(database: str) -> dict[str, str]:
    return {
        "DAGSTER_PG_HOST": PG_HOST,
        "DAGSTER_PG_PORT": str(PG_PORT),
        "DAGSTER_PG_USERNAME": PG_USER,
        "DAGSTER_PG_PASSWORD": PG_PASSWORD,
        "DAGSTER_PG_DB": database,
    }


# --- the yaml, without a database ----------------------------------------------------------------


def test_instance_yaml_matches_dagsters_schema(tmp_path, monkeypatch):
    for name, value in _pg_env("stripe_crm_schema_check").items():
        monkeypatch.setenv(name, value)
    shutil.copyfile(DEPLOY_INSTANCE, tmp_path / "dagster.yaml")

    config, custom_instance_class = dagster_instance_config(str(tmp_path))

    assert custom_instance_class is None
    storage = config["storage"]["postgres"]
    assert process_config(DagsterPostgresStorage.config_type(), storage).success
    assert storage["postgres_db"]["hostname"] == {"env": "DAGSTER_PG_HOST"}
    assert storage["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert storage["postgres_db"]["scheme"] == "postgresql+psycopg2"
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    assert process_config(QueuedRunCoordinator.config_type(), coordinator["config"]).success
    assert coordinator["config"]["max_concurrent_runs"] > 1
    assert coordinator["config"]["tag_concurrency_limits"] == [PER_ACCOUNT_LIMIT]
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["max_resume_run_attempts"] == 0, "DefaultRunLauncher cannot resume runs"
    assert monitoring["start_timeout_seconds"] > 0
    assert monitoring["cancel_timeout_seconds"] > 0
    assert config["telemetry"] == {"enabled": False}


def test_every_instance_limits_imports_to_one_per_stripe_account():
    """The dev instance, the production instance and the Helm values agree on the limit."""
    local = yaml.safe_load(LOCAL_INSTANCE.read_text())
    deploy = yaml.safe_load(DEPLOY_INSTANCE.read_text())
    helm = yaml.safe_load(HELM_VALUES.read_text())

    assert local["run_coordinator"]["config"]["tag_concurrency_limits"] == [PER_ACCOUNT_LIMIT]
    assert deploy["run_coordinator"]["config"]["tag_concurrency_limits"] == [PER_ACCOUNT_LIMIT]
    daemon = helm["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert queued["tagConcurrencyLimits"] == [PER_ACCOUNT_LIMIT]
    assert queued["maxConcurrentRuns"] == deploy["run_coordinator"]["config"]["max_concurrent_runs"]
    assert helm["runLauncher"]["type"] == "K8sRunLauncher"
    assert daemon["runMonitoring"]["enabled"] is True
    assert daemon["runMonitoring"]["startTimeoutSeconds"] > 0
    assert helm["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    deployment = helm["dagster-user-deployments"]["deployments"][0]
    assert deployment["codeServerArgs"] == ["-m", "stripe_crm_pipelines.definitions"]
    assert {"name": "stripe-crm-pipelines-env"} in deployment["envSecrets"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}


# --- against PostgreSQL --------------------------------------------------------------------------


def _admin_connection():
    connection = psycopg2.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        password=PG_PASSWORD,
        dbname=PG_ADMIN_DB,
        connect_timeout=3,
    )
    connection.autocommit = True
    return connection


@pytest.fixture
def pg_database():
    """A fresh, empty database on the local PostgreSQL, dropped afterwards."""
    try:
        admin = _admin_connection()
    except psycopg2.OperationalError as error:
        pytest.skip(
            f"PostgreSQL at {PG_HOST}:{PG_PORT} (user {PG_USER}) does not accept connections: "
            f"{' '.join(str(error).split())}"
        )
    name = f"stripe_crm_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()


@pytest.fixture
def instance_dir(pg_database, tmp_path, monkeypatch) -> Path:
    """DAGSTER_HOME holding deploy/dagster.yaml, its DAGSTER_PG_* set for ``pg_database``."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(DEPLOY_INSTANCE, home / "dagster.yaml")
    for name, value in _pg_env(pg_database).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _seed_import_request(db) -> dict:
    account_id, user_id, import_id = ObjectId(), ObjectId(), ObjectId()
    db[store.ACCOUNTS].insert_one({"_id": account_id, "name": "Postgres Instance Test"})
    db[store.STRIPE_KEYS].insert_one(
        {
            "account_id": account_id,
            "connected_apps": ["billing"],
            "token": {"access_token": SECRET_KEY, "stripe_user_id": STRIPE_ACCOUNT},
        }
    )
    db[store.QUEUES].insert_one(
        {
            "_id": import_id,
            "status": "pending",
            "source": "billing-contacts",
            "in_progress": False,
            "type": "contacts",
            "account_id": account_id,
            "user_id": user_id,
            "parent_account": account_id,
            "client_id": ObjectId(),
            "mappings": {"name": "name", "address-city": "address.city"},
            "new_contact": True,
            "createdAt": dt.datetime.now(dt.UTC),
        }
    )
    return {"account_id": account_id, "user_id": user_id, "import_id": import_id}


def test_instance_info_reports_postgres_storage(instance_dir):
    with DagsterInstance.get() as instance:
        info = instance.info_dict()

    assert info["run_storage"] == "PostgresRunStorage"
    assert info["event_log_storage"] == "PostgresEventLogStorage"
    assert info["schedule_storage"] == "PostgresScheduleStorage"
    with DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_resume_run_attempts == 0
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert [dict(limit) for limit in limits] == [PER_ACCOUNT_LIMIT]


def test_sensor_driven_import_is_recorded_in_postgres(instance_dir, db, mongo_uri, stripe_sandbox):
    stripe_sandbox.state.seed_customers(CUSTOMERS, seed=7, account=STRIPE_ACCOUNT)
    seeded = _seed_import_request(db)
    mongo = MongoResource(uri=mongo_uri)
    import_id = str(seeded["import_id"])
    account_id = str(seeded["account_id"])

    with DagsterInstance.get() as instance:
        context = build_sensor_context(
            instance=instance,
            resources={"mongo": mongo, "import_batching": ImportBatchingResource(max_requests=0)},
        )
        run_requests = billing_import_sensor(context)
        assert len(run_requests) == 1
        request = run_requests[0]
        assert request.tags[tags.STRIPE_ACCOUNT] == STRIPE_ACCOUNT
        result = billing_contact_import.execute_in_process(
            run_config=request.run_config,
            tags=request.tags,
            instance=instance,
            resources={"mongo": mongo, "stripe": StripeResource(api_base=stripe_sandbox.url)},
        )
        assert result.success
        run_id = result.run_id

    # A second instance from the same yaml: everything below comes out of PostgreSQL.
    with DagsterInstance.get() as instance:
        records = instance.get_run_records(RunsFilter(tags={tags.IMPORT_ID: import_id}))
        assert [record.dagster_run.run_id for record in records] == [run_id]
        run = records[0].dagster_run
        assert run.job_name == "billing_contact_import"
        assert run.status == DagsterRunStatus.SUCCESS
        assert {key: run.tags[key] for key in request.tags} == {
            tags.IMPORT_ID: import_id,
            tags.ACCOUNT_ID: account_id,
            tags.IMPORT_TYPE: "contacts",
            tags.USER_ID: str(seeded["user_id"]),
            tags.STRIPE_ACCOUNT: STRIPE_ACCOUNT,
        }
        assert SECRET_KEY not in str(run.tags)
        assert [r.dagster_run.run_id for r in instance.get_run_records(
            RunsFilter(tags={tags.ACCOUNT_ID: account_id, tags.IMPORT_TYPE: "contacts"})
        )] == [run_id]  # fmt: skip

        materializations = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("crm_contacts"), asset_partitions=[account_id]),
            limit=10,
        ).records
        assert [record.run_id for record in materializations] == [run_id]
        asset_counts = {
            key: entry.value
            for key, entry in materializations[0].asset_materialization.metadata.items()
        }

        outputs = instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT)
        sync_output = next(event for event in outputs if event.step_key == "sync_customers")
        run_page_counts = {
            key: entry.value
            for key, entry in sync_output.dagster_event.step_output_data.metadata.items()
        }

    stored = db[store.IMPORT_RESULTS].find_one({"import_id": seeded["import_id"]})
    assert stored["status"] == "completed"
    assert stored["run_id"] == run_id
    assert stored["customers_fetched"] == CUSTOMERS
    assert stored["records_added"] > 0
    for name in ("records_added", "records_updated", "records_skipped", "customers_fetched"):
        assert asset_counts[name] == stored[name], name
        assert run_page_counts[name] == stored[name], name
    assert asset_counts["import_id"] == import_id
    assert SECRET_KEY not in str(run_page_counts)
