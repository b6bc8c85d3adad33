"""Stripe clients, one per connected account, with retries that honour ``Retry-After``."""

from __future__ import annotations

import functools
import random
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import stripe
from dagster import ConfigurableResource
from pydantic import Field

from stripe_crm_pipelines.errors import RETRYABLE_STRIPE_STATUSES

DEFAULT_API_BASE = "https://api.stripe.com"
MAX_RETRY_AFTER_SECONDS = 60.0
_API_KEY = re.compile(r"\b([sr]k_(?:live|test)_)[A-Za-z0-9_]+")


@dataclass
class RequestStats:
    """Counts of what a client sent, for run metadata. Shared by the threads of one client."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, requests: int = 0, retries: int = 0, throttled: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.throttled += throttled


class RetryingRequestsClient(stripe.RequestsClient):
    """``stripe.RequestsClient`` that retries 409, 429, 5xx and connection errors.

    The SDK's own retries skip a plain 429 and ignore ``Retry-After``; this client waits
    ``max(Retry-After, exponential backoff with jitter)`` between attempts. A POST without an
    idempotency key gets one before the first attempt, so a retried write never applies twice.
    """

    def __init__(
        self,
        *,
        timeout: float,
        max_retries: int,
        initial_delay: float = 0.5,
        max_delay: float = 8.0,
        stats: RequestStats | None = None,
        before_request=None,
    ):
        super().__init__(timeout=timeout)
        self.max_retries = max_retries
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.stats = stats or RequestStats()
        self._before_request = before_request

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data=None,
        *,
        _usage=None,  # accepted for the HTTPClient interface; RequestsClient takes none
    ):
        headers = dict(headers or {})
        if method.lower() == "post" and "Idempotency-Key" not in headers:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        attempt = 0
        while True:
            if self._before_request is not None:
                self._before_request()
            self.stats.add(requests=1)
            try:
                response = super().request(method, url, headers, post_data)
            except stripe.APIConnectionError as error:
                if not error.should_retry or attempt >= self.max_retries:
                    raise
                retry_after = None
            else:
                _, status, response_headers = response
                if status not in RETRYABLE_STRIPE_STATUSES or attempt >= self.max_retries:
                    return response
                if _header(response_headers, "Stripe-Should-Retry") == "false":
                    return response
                if status == 429:
                    self.stats.add(throttled=1)
                retry_after = _retry_after_seconds(response_headers)
            attempt += 1
            self.stats.add(retries=1)
            time.sleep(self.backoff_seconds(attempt, retry_after))

    def backoff_seconds(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, never shorter than the server's ``Retry-After``."""
        backoff = min(self.initial_delay * 2 ** (attempt - 1), self.max_delay)
        backoff *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            return max(backoff, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return backoff


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    value = _header(headers, "Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class StripeResource(ConfigurableResource):
    """Builds ``stripe.StripeClient``s for connected accounts.

    The secret key comes from the CRM's ``stripe_key`` collection at run time and is passed to
    :meth:`client`, never through config. ``definitions.py`` binds the API base to
    ``STRIPE_API_BASE`` when that is set.
    """

    api_base: str = Field(
        default=DEFAULT_API_BASE,
        description="Stripe API base URL (STRIPE_API_BASE; the local sandbox in development).",
    )
    timeout_seconds: float = Field(default=30.0, description="Per-request timeout in seconds.")
    max_retries: int = Field(
        default=5, description="Retries of a request after 409, 429, 5xx or a connection error."
    )
    initial_retry_delay_seconds: float = Field(
        default=0.5, description="First backoff delay; doubles per retry, with jitter."
    )

    def resolved_api_base(self) -> str:
        return self.api_base.rstrip("/")

    def setup_for_execution(self, context) -> None:
        # The first client of a process loads the SDK's service modules (about 0.1 s): do it
        # when the run starts, not between an import's claim and its first request.
        _load_sdk()

    def client(
        self,
        secret_key: str,
        stripe_account: str | None,
        *,
        stats: RequestStats | None = None,
        before_request=None,
    ) -> stripe.StripeClient:
        """A client whose every call carries ``Stripe-Account: stripe_account``."""
        http_client = RetryingRequestsClient(
            timeout=self.timeout_seconds,
            max_retries=self.max_retries,
            initial_delay=self.initial_retry_delay_seconds,
            stats=stats,
            before_request=before_request,
        )
        return stripe.StripeClient(
            api_key=secret_key,
            stripe_account=stripe_account,
            base_addresses={"api": self.resolved_api_base()},
            http_client=http_client,
            max_network_retries=0,
        )


def stripe_error_message(error: Any) -> str:
    """Stripe's own message for an SDK error, with anything shaped like an API key redacted."""
    if isinstance(error, stripe.StripeError):
        message = error.user_message or str(error)
        message = f"Stripe {type(error).__name__} (HTTP {error.http_status}): {message}"
    else:
        message = str(error)
    return redact_api_keys(message)


def redact_api_keys(text: str) -> str:
    """``text`` with every Stripe secret or restricted key replaced by its prefix and stars."""
    return _API_KEY.sub(lambda match: match.group(1) + "****", text)


@functools.cache
def _load_sdk() -> None:
    """Build (and drop) one client, so that the SDK's lazily imported modules are loaded."""
    stripe.StripeClient(api_key="sk_test_load", http_client=stripe.RequestsClient())
