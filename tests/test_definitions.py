"""``definitions.py``: every job resolves, and each environment binds its settings with ``EnvVar``.

The resource set is chosen when the module loads, from the environment of the loading process,
so each environment is loaded in a subprocess of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from dagster import EnvVar, build_resources

from stripe_crm_pipelines.definitions import bound_if_set, defs
from stripe_crm_pipelines.resources.shortener import ShortenerResource

SECRETS = {
    "MONGODB_URI": "mongodb://crm-user" + ":mongo-password" + "@db.example:27017/",
    "APP_SECRET": "app-secret-value",
}

# What the UI shows of each resource's configuration: the code location's repository snapshot.
SHOW_RESOURCES = """
import json
from dagster._core.remote_representation.external_data import RepositorySnap
from stripe_crm_pipelines.definitions import defs, environment
snap = RepositorySnap.from_def(defs.get_repository_def())
print(json.dumps({
    "environment": environment(),
    "resources": {r.name: {k: repr(v) for k, v in r.configured_values.items()}
                  for r in snap.resources},
}))
"""


def shown_resources(**variables: str) -> dict:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name
        not in (
            "STRIPE_CRM_ENV",
            "MONGODB_URI",
            "MONGODB_DATABASE",
            "STRIPE_API_BASE",
            "SHORTENER_URL",
            "API_BASE_URL",
            "APP_SECRET",
        )
    }
    completed = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SHOW_RESOURCES],
        env={**environment, **variables},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_every_job_resolves():
    for job_name in ("billing_contact_import", "create_payment_link"):
        assert defs.get_job_def(job_name).name == job_name


def test_settings_are_bound_only_when_their_variable_is_set(monkeypatch):
    monkeypatch.setenv("SHORTENER_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("API_BASE_URL", raising=False)
    assert bound_if_set(base_url="SHORTENER_URL", other="API_BASE_URL") == {
        "base_url": EnvVar("SHORTENER_URL")
    }


def test_a_bound_setting_is_read_when_the_resource_starts(monkeypatch):
    monkeypatch.setenv("SHORTENER_URL", "http://127.0.0.1:9/")
    resource = ShortenerResource(**bound_if_set(base_url="SHORTENER_URL"))
    with build_resources({"shortener": resource}) as resources:
        assert resources.shortener.resolved_base_url() == "http://127.0.0.1:9"


def test_production_shows_variable_names_never_secret_values():
    shown = shown_resources(STRIPE_CRM_ENV="production", API_BASE_URL="http://crm", **SECRETS)

    assert shown["environment"] == "production"
    resources = shown["resources"]
    assert "MONGODB_URI" in resources["mongo"]["uri"]
    assert "APP_SECRET" in resources["crm_api"]["app_secret"]
    assert "API_BASE_URL" in resources["crm_api"]["base_url"]
    assert "api.stripe.com" in resources["stripe"]["api_base"]
    text = json.dumps(resources)
    for secret in (*SECRETS.values(), "mongo-password"):
        assert secret not in text


def test_local_is_the_default_and_needs_no_variable():
    shown = shown_resources()
    assert shown["environment"] == "local"
    assert shown["resources"]["mongo"]["uri"] == repr("null")
    assert shown["resources"]["crm_api"]["app_secret"] == repr("null")


def test_an_unknown_environment_is_refused():
    completed = subprocess.run(
        [sys.executable, "-c", "import stripe_crm_pipelines.definitions"],
        env={**os.environ, "STRIPE_CRM_ENV": "staging"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode != 0
    assert "STRIPE_CRM_ENV='staging' is not one of local, production" in completed.stderr


@pytest.mark.parametrize("environment", ["local", "production"])
def test_both_environments_have_the_same_resource_keys(environment):
    shown = shown_resources(STRIPE_CRM_ENV=environment, **SECRETS)
    assert set(shown["resources"]) == {"mongo", "stripe", "shortener", "crm_api", "import_batching"}


def test_payment_links_run_their_ops_in_the_runs_process():
    """A subprocess per op cost seconds per link; the ops take well under a second."""
    assert defs.get_job_def("create_payment_link").executor_def.name == "in_process"
