"""The client-side token bucket (rate_limit.py), on an injected clock: no test waits."""

from __future__ import annotations

import threading
import time

import pytest

from stripe_crm_pipelines.billing_import.rate_limit import (
    LIVE_REQUESTS_PER_SECOND,
    TEST_REQUESTS_PER_SECOND,
    TokenBucket,
    bucket_for_key,
    default_requests_per_second,
    request_priority,
)


class FakeClock:
    """A clock that only moves when the bucket waits on it (or a test advances it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.frozen = threading.Event()

    def __call__(self) -> float:
        return self.now

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        """The bucket's wait: time passes at once, unless frozen; callers that are not first
        in line wait to be notified, as they do for real."""
        if timeout is None or self.frozen.is_set():
            condition.wait(0.01)
            return
        self.sleeps.append(timeout)
        self.now += timeout

    def advance(self, seconds: float) -> None:
        self.now += seconds


def bucket(rate: float, capacity: float, clock: FakeClock) -> TokenBucket:
    return TokenBucket(rate, capacity, clock=clock, wait=clock.wait)


def test_a_full_bucket_lets_a_burst_through_without_waiting():
    clock = FakeClock()
    limiter = bucket(25, 5, clock)

    waits = [limiter.acquire() for _ in range(5)]

    assert waits == [0, 0, 0, 0, 0]
    assert clock.sleeps == []


def test_past_the_burst_each_caller_waits_for_its_own_slot_at_the_rate():
    clock = FakeClock()
    limiter = bucket(25, 5, clock)
    for _ in range(5):
        limiter.acquire()

    waits = [limiter.acquire() for _ in range(4)]

    assert waits == pytest.approx([0.04, 0.04, 0.04, 0.04])
    assert limiter.waited_seconds == pytest.approx(0.16)


def test_tokens_come_back_with_time_but_never_beyond_the_capacity():
    clock = FakeClock()
    limiter = bucket(10, 3, clock)
    for _ in range(3):
        limiter.acquire()

    clock.advance(0.2)  # two tokens back
    assert [limiter.acquire(), limiter.acquire()] == [0, 0]
    assert limiter.acquire() == pytest.approx(0.1)

    clock.advance(60)  # a long pause refills only up to the capacity
    assert [limiter.acquire() for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire() == pytest.approx(0.1)


def test_over_any_interval_the_rate_is_not_exceeded():
    clock = FakeClock()
    limiter = bucket(25, 5, clock)
    sent_at = []
    for _ in range(200):
        limiter.acquire()
        sent_at.append(clock.now)

    # 200 requests: 5 from the burst, then one per 1/25 s.
    assert sent_at[-1] - sent_at[0] == pytest.approx(195 / 25)
    for start in range(0, 150):
        in_one_second = [t for t in sent_at if sent_at[start] <= t < sent_at[start] + 1]
        assert len(in_one_second) <= 25 + 5


def test_concurrent_callers_share_the_bucket():
    clock = FakeClock()
    limiter = bucket(25, 1, clock)
    taken_at: list[float] = []

    def take() -> None:
        limiter.acquire()
        taken_at.append(clock.now)

    threads = [threading.Thread(target=take) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # 20 callers got 20 distinct tokens, 1/25 s apart.
    assert sorted(taken_at) == pytest.approx([1000 + index / 25 for index in range(20)])


def test_waiting_callers_are_served_by_priority_then_in_order():
    clock = FakeClock()
    limiter = bucket(10, 1, clock)
    limiter.acquire()  # the bucket is empty now
    clock.frozen.set()
    served: list[str] = []

    def take(name: str, priority: float) -> None:
        with request_priority(priority):
            limiter.acquire()
        served.append(name)

    threads = []
    for name, priority in [("late window", 5), ("later window", 9), ("head window", -3)]:
        thread = threading.Thread(target=take, args=(name, priority))
        thread.start()
        threads.append(thread)
        while len(limiter._waiting) < len(threads):
            time.sleep(0.001)
    clock.frozen.clear()
    for thread in threads:
        thread.join()

    assert served == ["head window", "late window", "later window"]
    assert clock.now == pytest.approx(1000.3)


def test_stripe_default_limits_by_kind_of_key():
    assert default_requests_per_second("sk_test_abc") == TEST_REQUESTS_PER_SECOND == 25
    assert default_requests_per_second("rk_test_abc") == 25
    assert default_requests_per_second("sk_live_abc") == LIVE_REQUESTS_PER_SECOND == 100
    assert default_requests_per_second("rk_live_abc") == 100


def test_one_bucket_per_key_and_rate_shared_across_clients():
    first = bucket_for_key("sk_test_shared_key_for_rate_limit_tests")
    again = bucket_for_key("sk_test_shared_key_for_rate_limit_tests")
    other_key = bucket_for_key("sk_test_another_key_for_rate_limit_tests")
    configured = bucket_for_key("sk_test_shared_key_for_rate_limit_tests", 5)

    assert first is again
    assert other_key is not first
    assert (first.rate, configured.rate) == (25, 5)
    assert "sk_test_shared_key" not in repr(vars(first))


def test_a_bucket_refuses_nonsense_settings():
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket(10, 0.5)
