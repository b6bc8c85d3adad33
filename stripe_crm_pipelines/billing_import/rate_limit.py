"""A client-side token bucket per Stripe key, so concurrent fetching stays under Stripe's limit.

Stripe allows about 25 requests per second with test keys and 100 with live keys, per key; a
client that goes over gets 429s, each of which costs a round trip and a ``Retry-After`` wait. The
import's fetch threads share one :class:`TokenBucket` per key and take a token before every HTTP
attempt (the ``before_request`` hook of
:meth:`stripe_crm_pipelines.resources.StripeResource.client`), retries included.

Buckets are found by a hash of the key: the key itself is never stored, logged or shown.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator

TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")
TEST_REQUESTS_PER_SECOND = 25.0
LIVE_REQUESTS_PER_SECOND = 100.0
BURST_SECONDS = 0.2
"""Bucket size in seconds of the rate: a small burst keeps the client below Stripe's own bucket
even when network jitter bunches requests up on the way there."""
_EPSILON = 1e-9
"""Refill arithmetic leaves a token a hair short of 1 after a wait of exactly the right time."""


def default_requests_per_second(secret_key: str) -> float:
    """Stripe's default limit for this kind of key: 25/s in test mode, 100/s live."""
    if secret_key.startswith(TEST_KEY_PREFIXES):
        return TEST_REQUESTS_PER_SECOND
    return LIVE_REQUESTS_PER_SECOND


class TokenBucket:
    """A thread-safe token bucket: ``rate`` tokens per second, at most ``capacity`` saved up.

    Callers waiting for a token are served by priority (see :func:`request_priority`), then in
    the order they asked. ``clock`` and ``wait`` (``wait(condition, timeout)``, by default
    ``condition.wait(timeout)``) are injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[threading.Condition, float | None], object] | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else max(1.0, rate * BURST_SECONDS))
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._clock = clock
        self._wait = wait or (lambda condition, timeout: condition.wait(timeout))
        self._tokens = self.capacity
        self._updated = clock()
        self._condition = threading.Condition()
        self._waiting: list[tuple[float, int]] = []
        self._tickets = itertools.count()
        self.waited_seconds = 0.0
        """Total time callers waited in :meth:`acquire`."""

    def acquire(self) -> float:
        """Take one token, waiting for it (and for callers before this one); returns the seconds
        waited."""
        ticket = (getattr(_priority, "value", 0.0), next(self._tickets))
        with self._condition:
            started = self._clock()
            heapq.heappush(self._waiting, ticket)
            try:
                while True:
                    now = self._clock()
                    self._tokens = min(
                        self.capacity, self._tokens + (now - self._updated) * self.rate
                    )
                    self._updated = now
                    if self._waiting[0] != ticket:
                        self._wait(self._condition, None)
                    elif self._tokens >= 1 - _EPSILON:
                        self._tokens = max(0.0, self._tokens - 1)
                        break
                    else:
                        self._wait(self._condition, (1 - self._tokens) / self.rate)
            finally:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._condition.notify_all()
            waited = self._clock() - started
            self.waited_seconds += waited
            return waited


_priority = threading.local()


@contextlib.contextmanager
def request_priority(priority: float) -> Iterator[None]:
    """Requests this thread makes inside the block wait for a token before those of a higher
    ``priority`` value (default 0). The import gives the customers it will write first the
    lowest value, so the writer is not kept waiting while later windows fetch."""
    previous = getattr(_priority, "value", 0.0)
    _priority.value = priority
    try:
        yield
    finally:
        _priority.value = previous


_buckets: dict[tuple[str, float, float | None], TokenBucket] = {}
_buckets_lock = threading.Lock()


def bucket_for_key(
    secret_key: str, requests_per_second: float | None = None, capacity: float | None = None
) -> TokenBucket:
    """The bucket every client of this key in this process shares (created on first use).

    ``requests_per_second`` defaults to :func:`default_requests_per_second`.
    """
    rate = requests_per_second or default_requests_per_second(secret_key)
    fingerprint = hashlib.sha256(secret_key.encode()).hexdigest()[:32]
    key = (fingerprint, rate, capacity)
    with _buckets_lock:
        bucket = _buckets.get(key)
        if bucket is None:
            bucket = _buckets[key] = TokenBucket(rate, capacity)
        return bucket
