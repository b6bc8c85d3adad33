"""The CRM's internal API (the "Router"), which creates Stripe customers for an account.

When a base URL is configured (``API_BASE_URL``), payment links create missing Stripe customers
through ``POST {API_BASE_URL}/v1/billing/customer`` instead of calling Stripe directly. Each call
carries a bearer JWT signed (HS256) with ``APP_SECRET``, with the claims the billing import mints:
type ``access_token``, ``uid``, ``account_id``, ``parent_account``, ``client_id``, the
contacts/files scope, and a one-hour expiry. ``definitions.py`` binds both settings with
``EnvVar``, so the UI shows the variables' names, never the secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import requests
from dagster import ConfigurableResource
from pydantic import Field

ACCESS_TOKEN_SCOPE = (
    "contacts communications contacts.external contacts.read contacts.create files files.create"
)
ACCESS_TOKEN_LIFETIME = timedelta(hours=1)
CUSTOMER_PATH = "/v1/billing/customer"


class CrmApiError(RuntimeError):
    """A call to the CRM API failed; ``retryable`` when trying again may succeed."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class TokenSubject:
    """Whom a token speaks for: the user, the account, its parent account and the OAuth client."""

    user_id: str
    account_id: str
    parent_account: str
    client_id: str


def access_token_claims(subject: TokenSubject, *, now: datetime) -> dict[str, Any]:
    issued_at = int(now.timestamp())
    return {
        "type": "access_token",
        "uid": subject.user_id,
        "account_id": subject.account_id,
        "parent_account": subject.parent_account,
        "client_id": subject.client_id,
        "scope": ACCESS_TOKEN_SCOPE,
        "iat": issued_at,
        "exp": issued_at + int(ACCESS_TOKEN_LIFETIME.total_seconds()),
    }


def mint_access_token(subject: TokenSubject, secret: str, *, now: datetime | None = None) -> str:
    """An HS256 JWT for ``subject``, valid for one hour from ``now``."""
    claims = access_token_claims(subject, now=now or datetime.now(UTC))
    return jwt.encode(claims, secret, algorithm="HS256")


class CrmApiResource(ConfigurableResource):
    """Client of the CRM's internal API; unused unless ``base_url`` (``API_BASE_URL``) is set."""

    base_url: str | None = Field(
        default=None,
        description="CRM API base URL (API_BASE_URL). When empty, Stripe customers are created "
        "directly with the account's key.",
    )
    app_secret: str | None = Field(
        default=None,
        description="Secret that signs the API's JWTs; bind it to the APP_SECRET environment "
        "variable, never a literal (the UI shows literals).",
    )
    timeout_seconds: float = Field(default=30.0, description="Timeout of each API call.")

    def resolved_base_url(self) -> str | None:
        return (self.base_url or "").rstrip("/") or None

    def is_enabled(self) -> bool:
        return self.resolved_base_url() is not None

    def create_billing_customer(
        self, params: dict[str, Any], subject: TokenSubject, *, idempotency_key: str
    ) -> dict[str, Any]:
        """Create a Stripe customer through the CRM API and return it (at least its ``id``)."""
        base_url = self.resolved_base_url()
        if base_url is None:
            raise CrmApiError("API_BASE_URL is not set; there is no CRM API to call")
        secret = self.app_secret
        if not secret:
            raise CrmApiError(
                "APP_SECRET is not set: it signs the JWT that customer creation through "
                f"API_BASE_URL ({base_url}) requires. Set APP_SECRET, or unset API_BASE_URL to "
                "create customers directly in Stripe."
            )
        url = f"{base_url}{CUSTOMER_PATH}"
        try:
            response = requests.post(
                url,
                json=params,
                headers={
                    "Authorization": f"Bearer {mint_access_token(subject, secret)}",
                    "Idempotency-Key": idempotency_key,
                },
                timeout=self.timeout_seconds,
            )
        except requests.RequestException as error:
            raise CrmApiError(
                f"POST {url} failed: {type(error).__name__}", retryable=True
            ) from error
        if response.status_code >= 400:
            raise CrmApiError(
                f"POST {url} answered HTTP {response.status_code}: {_error_text(response)}",
                retryable=response.status_code in (408, 409, 429) or response.status_code >= 500,
            )
        return _customer_from(response, url)


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        return str(body.get("message") or error or body)[:300]
    return str(body)[:300]


def _customer_from(response: requests.Response, url: str) -> dict[str, Any]:
    """The customer in the answer: the body itself, or its ``data`` envelope."""
    try:
        body = response.json()
    except ValueError as error:
        raise CrmApiError(f"POST {url} answered with non-JSON: {response.text[:200]!r}") from error
    customer = body.get("data", body) if isinstance(body, dict) else None
    if not isinstance(customer, dict) or not isinstance(customer.get("id"), str):
        raise CrmApiError(f"POST {url} answered without a customer id: {str(body)[:200]}")
    return customer
