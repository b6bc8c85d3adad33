"""The CRM API client: its token and how it reads answers."""

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest

from stripe_crm_pipelines.resources.crm_api import (
    ACCESS_TOKEN_SCOPE,
    CrmApiError,
    CrmApiResource,
    TokenSubject,
    mint_access_token,
)

SECRET = "crm-api-unit-test-secret-0123456789abcdef"
SUBJECT = TokenSubject(user_id="u1", account_id="a1", parent_account="p1", client_id="c1")


def test_token_has_the_import_claims_and_one_hour_expiry():
    now = datetime(2024, 1, 1, tzinfo=UTC)
    token = mint_access_token(SUBJECT, SECRET, now=now)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {
        "type": "access_token",
        "uid": "u1",
        "account_id": "a1",
        "parent_account": "p1",
        "client_id": "c1",
        "scope": ACCESS_TOKEN_SCOPE,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + 3600,
    }


@pytest.fixture
def answering():
    """A local endpoint answering each POST with the next ``(status, body)`` queued."""
    answers: list[tuple[int, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            status, body = answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()
    server.server_close()


def create(base_url: str) -> dict:
    return CrmApiResource(base_url=base_url, timeout_seconds=5).create_billing_customer(
        {"email": "a@example.com"}, SUBJECT, idempotency_key="run:customer"
    )


@pytest.mark.parametrize(
    "body", [{"id": "cus_1", "email": "a@example.com"}, {"data": {"id": "cus_1"}}]
)
def test_reads_the_customer_bare_or_in_a_data_envelope(answering, monkeypatch, body):
    monkeypatch.setenv("APP_SECRET", SECRET)
    url, answers = answering
    answers.append((200, json.dumps(body).encode()))
    assert create(url)["id"] == "cus_1"


@pytest.mark.parametrize(
    ("status", "body", "retryable", "text"),
    [
        (500, b'{"message": "boom"}', True, "HTTP 500: boom"),
        (400, b'{"error": {"message": "bad email"}}', False, "HTTP 400: bad email"),
        (200, b'{"data": {}}', False, "without a customer id"),
        (200, b"<html>", False, "non-JSON"),
    ],
)
def test_errors_say_what_went_wrong(answering, monkeypatch, status, body, retryable, text):
    monkeypatch.setenv("APP_SECRET", SECRET)
    url, answers = answering
    answers.append((status, body))
    with pytest.raises(CrmApiError) as raised:
        create(url)
    assert raised.value.retryable is retryable
    assert text in str(raised.value)


def test_missing_app_secret_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("APP_SECRET", raising=False)
    with pytest.raises(CrmApiError, match="APP_SECRET is not set"):
        create("http://127.0.0.1:9")


def test_api_base_url_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("API_BASE_URL", raising=False)
    assert not CrmApiResource().is_enabled()
    monkeypatch.setenv("API_BASE_URL", "http://crm.internal/")
    assert CrmApiResource().resolved_base_url() == "http://crm.internal"
