"""The CRM API client: its token and how it reads answers."""

import base64
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests

from stripe_crm_pipelines.resources.crm_api import (
    ACCESS_TOKEN_SCOPE,
    CrmApiError,
    CrmApiResource,
    TokenSubject,
    access_token_claims,
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


def create(base_url: str, app_secret: str | None = SECRET) -> dict:
    resource = CrmApiResource(base_url=base_url, app_secret=app_secret, timeout_seconds=5)
    return resource.create_billing_customer(
        {"email": "a@example.com"}, SUBJECT, idempotency_key="run:customer"
    )


@pytest.mark.parametrize(
    "body", [{"id": "cus_1", "email": "a@example.com"}, {"data": {"id": "cus_1"}}]
)
def test_reads_the_customer_bare_or_in_a_data_envelope(answering, body):
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
def test_errors_say_what_went_wrong(answering, status, body, retryable, text):
    url, answers = answering
    answers.append((status, body))
    with pytest.raises(CrmApiError) as raised:
        create(url)
    assert raised.value.retryable is retryable
    assert text in str(raised.value)


def test_missing_app_secret_is_a_clear_error():
    with pytest.raises(CrmApiError, match="APP_SECRET is not set"):
        create("http://127.0.0.1:9", app_secret=None)


def test_the_api_is_used_only_with_a_base_url():
    assert not CrmApiResource().is_enabled()
    assert CrmApiResource(base_url="http://crm.internal/").resolved_base_url() == (
        "http://crm.internal"
    )


# --- what a verifying CRM API accepts -----------------------------------------------------------


def verify(token: str) -> dict:
    """How the CRM API must check a token: HS256 only, signed with APP_SECRET, unexpired, with
    the import's claims."""
    claims = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        options={"require": ["exp", "iat", "uid", "account_id", "type", "scope"]},
    )
    if claims["type"] != "access_token" or claims["exp"] - claims["iat"] != 3600:
        raise jwt.InvalidTokenError("not a one-hour access token")
    return claims


@pytest.fixture
def verifying():
    """A local CRM API endpoint that answers 200 with the token's claims, or 401."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            try:
                if scheme != "Bearer":
                    raise jwt.InvalidTokenError("no bearer token")
                claims = verify(token)
            except jwt.InvalidTokenError as error:
                status, body = 401, {"error": {"message": f"invalid token: {error}"}}
            else:
                seen.append(claims)
                status, body = 200, {"id": "cus_verified"}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def post_with(url: str, token: str) -> int:
    return requests.post(
        f"{url}/v1/billing/customer",
        json={"email": "a@example.com"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    ).status_code


def test_the_resource_token_is_accepted_by_a_verifying_api(verifying):
    url, seen = verifying
    before = int(datetime.now(UTC).timestamp())

    assert create(url)["id"] == "cus_verified"

    [claims] = seen
    assert before - 5 <= claims["iat"] <= before + 5
    assert claims["exp"] == claims["iat"] + 3600
    assert (claims["uid"], claims["account_id"]) == ("u1", "a1")
    assert (claims["parent_account"], claims["client_id"]) == ("p1", "c1")


def test_the_token_header_pins_hs256_and_nothing_else():
    token = mint_access_token(SUBJECT, SECRET)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}


def unsigned(claims: dict) -> str:
    """A token with ``alg: none`` and no signature, as an attacker would send it."""

    def part(value: dict) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def forged_tokens() -> dict[str, str]:
    now = datetime.now(UTC)
    claims = access_token_claims(SUBJECT, now=now)
    expired = access_token_claims(SUBJECT, now=now - timedelta(hours=2))
    return {
        "alg none": unsigned(claims),
        "HS512 with the right secret": jwt.encode(claims, SECRET, algorithm="HS512"),
        "HS384 with the right secret": jwt.encode(claims, SECRET, algorithm="HS384"),
        "HS256 with another secret": jwt.encode(claims, "not-the-app-secret-0123456789abcdef"),
        "expired an hour ago": jwt.encode(expired, SECRET, algorithm="HS256"),
        "no expiry": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, SECRET),
        "a day long": jwt.encode({**claims, "exp": claims["iat"] + 86400}, SECRET),
        "tampered claims": _tampered(jwt.encode(claims, SECRET, algorithm="HS256")),
    }


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["account_id"] = "someone-else"
    raw = json.dumps(claims, separators=(",", ":")).encode()
    return f"{header}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}.{signature}"


@pytest.mark.parametrize("forgery", sorted(forged_tokens()))
def test_a_verifying_api_rejects_tokens_not_minted_as_the_import_mints_them(verifying, forgery):
    url, seen = verifying
    assert post_with(url, forged_tokens()[forgery]) == 401
    assert seen == []


def test_a_verifying_api_accepts_the_minted_token_and_only_it(verifying):
    url, seen = verifying
    assert post_with(url, mint_access_token(SUBJECT, SECRET)) == 200
    assert len(seen) == 1
