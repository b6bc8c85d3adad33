"""Fixtures of the sync tests: a Dagster instance and the Stripe sandbox."""

import pytest
from dagster import DagsterInstance


@pytest.fixture
def instance():
    return DagsterInstance.ephemeral()


@pytest.fixture
def sandbox(stripe_sandbox):
    return stripe_sandbox
