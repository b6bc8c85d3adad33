"""`python -m stripe_crm_pipelines.local.demo`: the demo data of make dev, seeded on demand."""

from __future__ import annotations

import socket
import subprocess
import sys

from stripe_crm_pipelines import store
from stripe_crm_pipelines.billing_import.mapping import parse_mappings
from stripe_crm_pipelines.billing_import.requests import parse_import_request
from stripe_crm_pipelines.local import demo


def test_help_says_what_it_does():
    shown = subprocess.run(
        [sys.executable, "-m", "stripe_crm_pipelines.local.demo", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert shown.returncode == 0
    assert "Write the demo data of make dev" in shown.stdout
    assert "--sandbox-url URL" in shown.stdout


def test_seeds_the_chosen_store_once(db, mongo_uri, monkeypatch, stripe_sandbox, capsys):
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    stripe_sandbox.state.seed_customers(20, account=demo.DEMO_STRIPE_ACCOUNT)

    assert demo.main(["--sandbox-url", stripe_sandbox.url]) == 0
    assert demo.main(["--sandbox-url", stripe_sandbox.url]) == 0

    out, err = capsys.readouterr()
    assert out.splitlines()[0] == (
        f"Demo data ready: account {demo.DEMO_ACCOUNT_ID}, import request {demo.DEMO_IMPORT_ID}, "
        f"payment-link contact {demo.DEMO_PAYMENT_CONTACT_ID}"
    )
    assert f"store: {mongo_uri} (from MONGODB_URI)" in err
    assert db[store.QUEUES].count_documents({}) == 1
    assert db[store.CONTACTS].count_documents({}) == demo.EXISTING_CONTACTS + 1
    request = parse_import_request(db[store.QUEUES].find_one({"_id": demo.DEMO_IMPORT_ID}))
    assert request.mappings == parse_mappings(demo.DEMO_MAPPINGS)


def test_no_sandbox_is_one_clear_line(mongo_uri, monkeypatch, capsys):
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    code = demo.main(["--sandbox-url", f"http://127.0.0.1:{closed_port}"])

    assert code == 1
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(f"error: no Stripe sandbox answers at http://127.0.0.1:{closed_port}")
    )


def test_an_unsupported_store_is_one_clear_line(monkeypatch, stripe_sandbox, capsys):
    monkeypatch.setenv("MONGODB_URI", "foo://x")

    assert demo.main(["--sandbox-url", stripe_sandbox.url]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: MONGODB_URI scheme 'foo' is not supported")
