"""Switchable behaviour of the sandbox: settings, injected faults, rate limiting, the request log
and idempotency-key storage."""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from stripe_crm_pipelines.sandbox.errors import StripeApiError, error_for_status

FAULT_KINDS = ("status", "timeout", "reset")
FAULT_STATUSES = (400, 401, 402, 403, 404, 409, 429, 500, 502, 503)
MAX_LOGGED_REQUESTS = 200_000


def endpoint_matches(pattern: str, method: str, path: str) -> bool:
    """Whether ``method path`` matches an endpoint pattern.

    A pattern is ``"[METHOD ]PATH_GLOB"``: ``"GET /v1/customers"`` (exactly that list call),
    ``"POST /v1/invoices*"`` (invoice writes, finalize included), ``"/v1/customers/*"`` (any
    method), ``"*"`` (everything). ``METHOD`` may be ``*``.
    """
    pattern_method, _, pattern_path = pattern.rpartition(" ")
    if pattern_method not in ("", "*") and pattern_method.upper() != method:
        return False
    return fnmatch.fnmatchcase(path, pattern_path)


@dataclass
class SandboxSettings:
    """Runtime behaviour of a sandbox; every field can be changed while it runs.

    - ``latency_ms``: delay added to every API request.
    - ``endpoint_latency_ms``: ``{endpoint pattern: ms}``; the first matching pattern replaces
      ``latency_ms`` for that request (see :func:`endpoint_matches`).
    - ``rate_limit``: requests per second allowed per API key (token bucket); 0 turns it off.
    - ``rate_limit_burst``: bucket size; defaults to ``max(1, rate_limit)``.
    - ``search_index_delay``: seconds before a customer created through the API is returned
      by ``/v1/customers/search`` (list calls see it at once).
    - ``allow_live``: also accept ``sk_live_``/``rk_live_`` keys.
    - ``api_keys``: if set, only these keys are accepted.
    - ``fault_seed``: seed of the random draws of probabilistic faults.
    - ``reject_created``: refuse the ``created`` filter of list calls with HTTP 400
      "Unexpected created", as servers without it do (localstripe).
    """

    latency_ms: float = 0.0
    endpoint_latency_ms: dict[str, float] = field(default_factory=dict)
    rate_limit: float = 0.0
    rate_limit_burst: int | None = None
    search_index_delay: float = 0.0
    allow_live: bool = False
    api_keys: frozenset[str] | None = None
    fault_seed: int = 0
    reject_created: bool = False

    def replace(self, **changes: Any) -> SandboxSettings:
        """A copy with ``changes`` applied; unknown names or bad values raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown sandbox settings: {', '.join(sorted(unknown))}")
        if "api_keys" in changes and changes["api_keys"] is not None:
            changes["api_keys"] = frozenset(changes["api_keys"])
        if "endpoint_latency_ms" in changes:
            changes["endpoint_latency_ms"] = dict(changes["endpoint_latency_ms"] or {})
        updated = dataclasses.replace(self, **changes)
        numbers = {
            "latency_ms": updated.latency_ms,
            "rate_limit": updated.rate_limit,
            "search_index_delay": updated.search_index_delay,
            **{f"endpoint_latency_ms[{k}]": v for k, v in updated.endpoint_latency_ms.items()},
        }
        for name, value in numbers.items():
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
        if updated.rate_limit_burst is not None and updated.rate_limit_burst < 1:
            raise ValueError("rate_limit_burst must be at least 1")
        return updated

    def latency_seconds(self, method: str, path: str) -> float:
        """The delay to add to one request."""
        for pattern, milliseconds in self.endpoint_latency_ms.items():
            if endpoint_matches(pattern, method, path):
                return milliseconds / 1000
        return self.latency_ms / 1000

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        values = dataclasses.asdict(self)
        if self.api_keys is not None:
            values["api_keys"] = sorted(self.api_keys)
        return values


@dataclass
class Fault:
    """A failure to inject into matching API requests.

    - ``kind``: ``status`` (answer ``status`` with Stripe's error body; 429 carries
      ``Retry-After: retry_after``), ``timeout`` (wait ``delay`` seconds, then answer ``status``),
      or ``reset`` (close the connection without a response).
    - ``endpoint``: pattern of the requests it applies to (see :func:`endpoint_matches`).
    - ``count``: how many requests it hits before it is used up; ``None``: unlimited.
    - ``probability``: chance that a matching request is hit (draws use ``fault_seed``).
    - ``after_effect``: perform the request first (the write happens, and its response is stored
      for its idempotency key), then fail: ``status`` answers the error, ``timeout`` answers the
      real response late, ``reset`` drops the connection.
    """

    kind: str = "status"
    endpoint: str = "*"
    status: int = 500
    count: int | None = 1
    probability: float = 1.0
    retry_after: float | None = None
    delay: float = 30.0
    after_effect: bool = False
    message: str | None = None
    id: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}")
        if self.status not in FAULT_STATUSES:
            raise ValueError(f"fault status must be one of {FAULT_STATUSES}")
        if not 0 <= self.probability <= 1:
            raise ValueError("fault probability must be between 0 and 1")
        if self.count is not None and self.count < 1:
            raise ValueError("fault count must be positive or None (unlimited)")

    def error(self) -> StripeApiError:
        """The error this fault answers with."""
        message = self.message or ("Injected timeout fault." if self.kind == "timeout" else None)
        return error_for_status(self.status, message, self.retry_after)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fault."""
        return dataclasses.asdict(self)


class FaultInjector:
    """The queue of active faults; the first matching fault whose draw hits is applied."""

    def __init__(self, seed: int) -> None:
        self._faults: list[Fault] = []
        self._ids = 0
        self._lock = threading.Lock()
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random draws from ``seed``."""
        self._rng = random.Random(seed)

    def add(self, fault: Fault) -> Fault:
        """Queue a fault; returns it with its id set."""
        with self._lock:
            self._ids += 1
            fault.id = self._ids
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def active(self) -> list[Fault]:
        """The faults not used up yet."""
        with self._lock:
            return list(self._faults)

    def draw(self, method: str, path: str) -> Fault | None:
        """The fault hitting this request, if any (its count is used)."""
        with self._lock:
            for fault in self._faults:
                if not endpoint_matches(fault.endpoint, method, path):
                    continue
                if fault.probability < 1 and self._rng.random() >= fault.probability:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                return fault
        return None


class RateLimiter:
    """Token buckets per API key."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, rate: float, burst: int | None) -> float | None:
        """Take a token for ``key``; returns ``None`` if allowed, else seconds to wait."""
        if rate <= 0:
            return None
        capacity = float(burst if burst is not None else max(1.0, rate))
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return None
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / rate

    def clear(self) -> None:
        """Forget every bucket."""
        with self._lock:
            self._buckets.clear()


class RequestLog:
    """Every API request the sandbox answered (newest last), with counts per endpoint."""

    def __init__(self) -> None:
        self._entries: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=MAX_LOGGED_REQUESTS
        )
        self._counts: collections.Counter[str] = collections.Counter()
        self._recorded = 0
        self._lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        """Append an entry (``method``, ``path``, ``status``, ...)."""
        with self._lock:
            self._recorded += 1
            entry["seq"] = self._recorded
            self._entries.append(entry)
            self._counts[f"{entry['method']} {entry['path']}"] += 1

    def entries(self, path: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Logged requests, oldest first, optionally only those to ``path`` / with ``method``."""
        with self._lock:
            return [
                entry
                for entry in self._entries
                if (path is None or entry["path"] == path)
                and (method is None or entry["method"] == method.upper())
            ]

    def counts(self) -> dict[str, int]:
        """Requests seen per ``"METHOD /path"``."""
        with self._lock:
            return dict(self._counts)

    def clear(self) -> None:
        """Forget every request."""
        with self._lock:
            self._entries.clear()
            self._counts.clear()


@dataclass
class StoredResponse:
    """The first response to a request made with an idempotency key."""

    fingerprint: tuple[str, str, str]
    status: int
    body: bytes


class IdempotencyStore:
    """Idempotency keys per account: the first response is replayed for the same request, a
    different request with the same key is refused (400), as is a concurrent one (409)."""

    _IN_PROGRESS = object()

    def __init__(self) -> None:
        self._responses: dict[tuple[str | None, str], Any] = {}
        self._lock = threading.Lock()

    def begin(
        self, account: str | None, key: str, fingerprint: tuple[str, str, str]
    ) -> StoredResponse | None:
        """The stored response to replay, or ``None`` after reserving the key for this request."""
        with self._lock:
            stored = self._responses.get((account, key))
            if stored is None:
                self._responses[(account, key)] = self._IN_PROGRESS
                return None
            if stored is self._IN_PROGRESS:
                raise StripeApiError(
                    409,
                    "There is currently another in-progress request using this Idempotent Key "
                    f"(that probably means you submitted twice, and the other request is still "
                    f"going through): {key}. Please try again later.",
                    error_type="idempotency_error",
                    code="idempotency_key_in_use",
                )
            if stored.fingerprint != fingerprint:
                raise StripeApiError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they "
                    f"were first used with. Try using a key other than '{key}' if you meant to "
                    "execute a different request.",
                    error_type="idempotency_error",
                )
            return stored

    def finish(self, account: str | None, key: str, response: StoredResponse | None) -> None:
        """Store the response to replay, or (``None``) release the key: the request had no
        effect, so a retry with the same key runs again."""
        with self._lock:
            if response is None:
                self._responses.pop((account, key), None)
            else:
                self._responses[(account, key)] = response

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self._responses.clear()
