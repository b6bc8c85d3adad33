"""The state of one sandbox and the life of an API request through it: latency, key checks,
rate limiting, injected faults, idempotency keys, the endpoint itself, and the request log."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import secrets
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stripe_crm_pipelines.sandbox.api import PLATFORM_LABEL, RequestContext, StripeApi
from stripe_crm_pipelines.sandbox.controls import (
    Fault,
    FaultInjector,
    IdempotencyStore,
    RateLimiter,
    RequestLog,
    SandboxSettings,
    StoredResponse,
)
from stripe_crm_pipelines.sandbox.errors import StripeApiError, error_for_status, invalid
from stripe_crm_pipelines.sandbox.events import expire_events
from stripe_crm_pipelines.sandbox.wire import parse_form

_TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")
_LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")


@dataclass
class ApiRequest:
    """An HTTP request to a ``/v1`` endpoint, as received."""

    method: str
    path: str
    query: str
    body: str
    headers: Mapping[str, str]  # looked up by the exact names Stripe uses
    base_url: str


@dataclass
class ApiResponse:
    """What to answer: a JSON body with a status and headers, or (``reset``) nothing at all."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False


def mask_key(key: str) -> str:
    """An API key as Stripe prints it in errors: prefix, stars, last four characters."""
    parts = key.split("_", 2)
    prefix = f"{parts[0]}_{parts[1]}_" if len(parts) == 3 else ""
    return prefix + "*" * max(0, len(key) - len(prefix) - 4) + key[-4:]


class SandboxState:
    """Data, settings, faults and logs of one sandbox, and the request pipeline over them.

    Use it directly (``SandboxServer(...).state``) to seed, inspect or configure a sandbox in
    the same process; :class:`SandboxControl` does the same over HTTP.
    """

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self.initial_settings = settings or SandboxSettings()
        self.settings = self.initial_settings
        self.lock = threading.RLock()
        self.api = StripeApi()
        self.faults = FaultInjector(self.settings.fault_seed)
        self.rate_limiter = RateLimiter()
        self.log = RequestLog()
        self.idempotency = IdempotencyStore()
        self.forbidden_keys: set[tuple[str, str | None]] = set()
        self.clock_offset = 0.0
        self.stopping = threading.Event()

    # --- control -------------------------------------------------------------------------------

    def now(self) -> float:
        """The sandbox's time (epoch seconds): the wall clock plus :attr:`clock_offset`. Objects
        and events are stamped with it, and event retention is measured against it."""
        return time.time() + self.clock_offset

    def advance_clock(self, seconds: float) -> float:
        """Move the sandbox's time forward by ``seconds`` (e.g. 31 days, to let events expire);
        returns the new time. Time never goes back, so events stay in order."""
        if not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError("the clock only moves forward: seconds must be a non-negative number")
        with self.lock:
            self.clock_offset += seconds
            return self.now()

    def configure(self, **changes: Any) -> SandboxSettings:
        """Change settings (names of :class:`SandboxSettings`); returns the new settings."""
        with self.lock:
            self.settings = self.settings.replace(**changes)
            if "fault_seed" in changes:
                self.faults.reseed(self.settings.fault_seed)
            return self.settings

    def inject_fault(self, **fault: Any) -> Fault:
        """Queue a fault (fields of :class:`Fault`), e.g. ``inject_fault(endpoint="GET
        /v1/customers", status=500, count=2)`` or ``inject_fault(kind="reset")``."""
        return self.faults.add(Fault(**fault))

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self.faults.clear()

    def forbid_key(self, api_key: str, account: str | None = None) -> None:
        """Answer 403 permission_error to ``api_key`` on ``account`` (``None``: every account)."""
        with self.lock:
            self.forbidden_keys.add((api_key, account))

    def clear_forbidden_keys(self) -> None:
        """Allow every key again."""
        with self.lock:
            self.forbidden_keys.clear()

    def requests(self, path: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """The request log, oldest first, optionally filtered by exact path and method."""
        return self.log.entries(path, method)

    def request_counts(self) -> dict[str, int]:
        """Requests seen per ``"METHOD /path"``."""
        return self.log.counts()

    def clear_requests(self) -> None:
        """Empty the request log."""
        self.log.clear()

    def seed_customers(self, count: int, seed: int = 42, account: str | None = None) -> list[str]:
        """Add ``count`` realistic customers to ``account`` (``None``: the platform);
        the same seed, count and account always give the same customers. Returns their ids,
        oldest first."""
        with self.lock:
            return self.api.seed_customers(count, seed, account)

    def add_customer(self, account: str | None = None, **fields: Any) -> dict[str, Any]:
        """Store a customer with exactly these fields (``id`` and ``created`` included, no
        validation); returns it as the API would."""
        with self.lock:
            return self.api.add_customer(account, fields, self.now())

    def customers(self, account: str | None = None) -> list[dict[str, Any]]:
        """Every customer of an account as the API returns them, newest first."""
        with self.lock:
            return [c.to_api() for c in self.api.account(account).customers.newest_first()]

    def events(self, account: str | None = None) -> list[dict[str, Any]]:
        """The events of an account that Stripe would still list, newest first (copies)."""
        with self.lock:
            events = self.api.account(account).events
            expire_events(events, self.now())
            return copy.deepcopy(list(events.newest_first()))

    def accounts(self) -> dict[str, dict[str, int]]:
        """Object counts per account (the platform is named ``platform``)."""
        with self.lock:
            return {
                account or PLATFORM_LABEL: {
                    "customers": len(data.customers),
                    "products": len(data.products),
                    "prices": len(data.prices),
                    "invoices": len(data.invoices),
                    "invoice_items": len(data.invoice_items),
                }
                for account, data in self.api.accounts.items()
            }

    def reset(self) -> None:
        """Forget all data, events, faults, logs, idempotency keys and forbidden keys; restore
        the settings the sandbox started with and the wall clock."""
        with self.lock:
            self.api = StripeApi()
            self.clock_offset = 0.0
            self.settings = self.initial_settings
            self.faults.clear()
            self.faults.reseed(self.settings.fault_seed)
            self.rate_limiter.clear()
            self.log.clear()
            self.idempotency.clear()
            self.forbidden_keys.clear()

    # --- the request pipeline ------------------------------------------------------------------

    def process(self, request: ApiRequest) -> ApiResponse:
        """Answer one API request (and log it)."""
        started = time.time()
        entry: dict[str, Any] = {
            "time": started,
            "method": request.method,
            "path": request.path,
            "query": {},
            "form": {},
            "stripe_account": request.headers.get("Stripe-Account"),
            "idempotency_key": request.headers.get("Idempotency-Key"),
            "request_id": f"req_{secrets.token_hex(7)}",
            "api_key": None,
            "fault": None,
            "replayed": False,
        }
        try:
            response = self._process(request, entry)
        except StripeApiError as error:
            response = ApiResponse(error.status, _json(error.body()), dict(error.headers))
        except Exception as error:  # a sandbox bug: answer like Stripe's 500 and show it
            traceback.print_exc()
            body = {"error": {"type": "api_error", "message": f"Sandbox error: {error!r}"}}
            response = ApiResponse(500, _json(body))
        response.headers["Request-Id"] = entry["request_id"]
        entry["status"] = None if response.reset else response.status
        entry["duration_ms"] = round((time.time() - started) * 1000, 3)
        self.log.record(entry)
        return response

    def _process(self, request: ApiRequest, entry: dict[str, Any]) -> ApiResponse:
        settings = self.settings
        self._sleep(settings.latency_seconds(request.method, request.path))
        entry["query"] = parse_form(request.query)
        entry["form"] = parse_form(request.body)
        account = request.headers.get("Stripe-Account") or None
        api_key = self._authenticate(request.headers.get("Authorization"), account, settings)
        entry["api_key"] = mask_key(api_key)
        if account is not None and not account.startswith("acct_"):
            raise invalid(f"Invalid Stripe-Account header: {account}", code="account_invalid")
        wait = self.rate_limiter.acquire(api_key, settings.rate_limit, settings.rate_limit_burst)
        if wait is not None:
            raise error_for_status(429, retry_after=wait)
        fault = self.faults.draw(request.method, request.path)
        if fault is not None:
            entry["fault"] = fault.kind
            if not fault.after_effect:
                if fault.kind == "reset":
                    return ApiResponse(reset=True)
                if fault.kind == "timeout":
                    self._sleep(fault.delay)
                raise fault.error()
        params = {**entry["query"], **entry["form"]}
        if settings.reject_created and request.method == "GET" and "created" in params:
            raise invalid("Unexpected created")
        idempotency_key = entry["idempotency_key"] if request.method == "POST" else None
        context = RequestContext(
            account,
            self.now(),
            request.base_url,
            settings.search_index_delay,
            entry["request_id"],
            idempotency_key,
        )
        response = self._run(request, params, context, idempotency_key)
        entry["replayed"] = response.headers.get("Idempotent-Replayed") == "true"
        if fault is not None:
            if fault.kind == "reset":
                return ApiResponse(reset=True)
            if fault.kind == "status":
                raise fault.error()
            self._sleep(fault.delay)
        return response

    def _run(
        self,
        request: ApiRequest,
        params: dict[str, Any],
        context: RequestContext,
        idempotency_key: str | None,
    ) -> ApiResponse:
        """Run the endpoint, replaying or storing the response of an idempotency key."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if idempotency_key is None:
            return self._execute(request, params, context, headers)
        fingerprint = (request.method, request.path, json.dumps(params, sort_keys=True))
        stored = self.idempotency.begin(context.account, idempotency_key, fingerprint)
        if stored is not None:
            headers["Idempotent-Replayed"] = "true"
            return ApiResponse(stored.status, stored.body, headers)
        response = None
        try:
            response = self._execute(request, params, context, headers)
        finally:
            saved = None
            if response is not None and response.status == 200:
                saved = StoredResponse(fingerprint, response.status, response.body)
            self.idempotency.finish(context.account, idempotency_key, saved)
        return response

    def _execute(
        self,
        request: ApiRequest,
        params: dict[str, Any],
        context: RequestContext,
        headers: dict[str, str],
    ) -> ApiResponse:
        try:
            with self.lock:
                body = _json(self.api.handle(request.method, request.path, params, context))
        except StripeApiError as error:
            return ApiResponse(error.status, _json(error.body()), {**headers, **error.headers})
        return ApiResponse(200, body, headers)

    def _authenticate(
        self, authorization: str | None, account: str | None, settings: SandboxSettings
    ) -> str:
        """The request's API key, if it may be used on ``account``; else a 401 or 403."""
        if not authorization:
            raise StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                "or we can help at https://support.stripe.com/.",
            )
        scheme, _, credentials = authorization.partition(" ")
        key = credentials.strip()
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(key).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                key = ""
        elif scheme.lower() != "bearer":
            key = ""
        prefixes = _TEST_KEY_PREFIXES + (_LIVE_KEY_PREFIXES if settings.allow_live else ())
        if not key.startswith(prefixes) or (
            settings.api_keys is not None and key not in settings.api_keys
        ):
            raise StripeApiError(401, f"Invalid API Key provided: {mask_key(key)}")
        with self.lock:
            forbidden = (key, account) in self.forbidden_keys or (key, None) in self.forbidden_keys
        if forbidden:
            raise StripeApiError(
                403,
                f"The provided key '{mask_key(key)}' does not have access to account "
                f"'{account or PLATFORM_LABEL}' (or that account does not exist). Application "
                "access may have been revoked.",
            )
        return key

    def _sleep(self, seconds: float) -> None:
        """Wait, unless the sandbox is stopping."""
        if seconds > 0:
            self.stopping.wait(seconds)


def _json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()
