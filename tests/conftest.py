"""Shared fixtures: an in-process store per test, the Stripe sandbox (tests/sandbox_plugin.py)."""

import uuid

import pytest

from stripe_crm_pipelines import store

pytest_plugins = ["tests.sandbox_plugin", "tests.devstack"]


@pytest.fixture
def mongo_uri() -> str:
    """A fresh in-process mongomock store, private to the test."""
    return f"mongomock://test-{uuid.uuid4().hex}"


@pytest.fixture
def db(mongo_uri):
    database = store.connect(mongo_uri)
    store.ensure_indexes(database)
    return database
