"""List a connected Stripe account's customers: sequentially, or as ``created`` windows at once.

Stripe lists customers newest first, 100 a page, each page found from the previous one's last id
(``starting_after``), so one walk is one request at a time: with 200 ms pages, 10,000 customers
take 20 s while the rate limit (25 requests/s on test keys) would allow 4 s. A
:class:`CustomerWalk` therefore splits the listing into windows of ``created`` seconds
(``created[gte]`` / ``created[lte]``) and walks several of them at once:

* The snapshot: every request carries ``created[lte]=created_lte``, the second the import
  started, so customers created while it runs are neither imported nor shift any page.
* It starts as one sequential walk, and fans out once that walk has listed for
  :attr:`FetchSettings.fan_out_after_seconds` (pages listed, at least two, times the fastest
  page, so retries and rate-limit waits do not count). Small accounts finish before, without a
  single extra request.
* Fanning out: the owner of the open-ended oldest window cuts it by the density its last page
  showed (the seconds 100 customers span) into a chunk of about
  :attr:`FetchSettings.window_pages` pages per idle worker, the last chunk open-ended again;
  only a listed page shows that the listing goes on, so no request is spent on seconds older
  than the oldest customer. At the first fan-out the chunks grow from :data:`RAMP_PAGES` pages
  instead, so the newest windows, which are handed over first, end first. An idle worker also
  steals the older half of the bounded window with the most pages left. Windows are disjoint
  ranges of whole seconds: customers created in the same second are never split across two
  windows, and the part of a second after a window's cursor stays with that window.
* Order: pages are handed over newest first, exactly in the order of one sequential walk (window
  after window, each in list order), however the windows were fetched. So the first customer
  with an email still wins over older ones, a checkpoint is one cursor, and ``max_customers``
  keeps the newest.
* Width: no more windows are walked at once than the rate limit can serve at the pace of the
  pages (:attr:`FetchSettings.requests_per_second`): 6 for 25 requests/s and 200 ms pages, up
  to :attr:`FetchSettings.concurrency` (16) for live keys. Windows beyond that would only wait
  for tokens, and every window costs a partial page.
* Flow: when requests wait for the rate limiter, those of newer windows go first (see
  :func:`~stripe_crm_pipelines.billing_import.rate_limit.request_priority`), so the window being
  handed over is never starved by those behind it and writing keeps pace with fetching; a
  write batch is handed over early, at half its size, rather than have the writer wait.
* Memory: a worker stops fetching when :attr:`FetchSettings.max_buffered_pages` pages wait to be
  handed over, unless its window is the one being handed over. Memory does not grow with the
  account.

Pages are read with ``raw_request`` and ``json.loads``: plain dicts, as the mapping needs them,
without the SDK's objects (about 0.4 ms a customer). It is still the SDK's requestor, with the
client's retries, ``Stripe-Account`` header and ``before_request`` hook (the rate limiter).

:class:`CustomerBatches` groups the pages into write batches for the import.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import stripe

from stripe_crm_pipelines.billing_import.rate_limit import request_priority

PAGE_SIZE = 100
DEFAULT_CONCURRENCY = 16
DEFAULT_BUFFERED_PAGES = 80
DEFAULT_FAN_OUT_AFTER_SECONDS = 0.5
DEFAULT_BATCH_SIZE = 2000
DEFAULT_WINDOW_PAGES = 10
RAMP_PAGES = 2
"""Pages of the first window cut at the first fan-out; the next windows grow by as much."""
MIN_SPLIT_PAGES = 3
"""A bounded window is split only if at least this many pages are estimated to be left in it:
every window ends with a partial page, so a split costs about half a request."""
STOP_TIMEOUT_SECONDS = 5.0

Customer = dict[str, Any]


@dataclass(frozen=True)
class FetchSettings:
    """How the customers are listed."""

    concurrency: int = DEFAULT_CONCURRENCY
    """Windows walked at once, at most; 1 walks the list sequentially and sends no
    ``created[gte]``."""
    requests_per_second: float | None = None
    """The rate limit the requests wait for. With it, the walk keeps only as many windows going
    as that rate can serve at the pace of its pages (``rate * page seconds + 1``; 6 for 25
    requests/s and 200 ms pages): more would only wait for tokens, and each extra window costs
    a partial page."""
    fan_out_after_seconds: float = DEFAULT_FAN_OUT_AFTER_SECONDS
    """How long the walk stays sequential before it splits into windows."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Customers per write batch once the walk has fanned out (before, a batch is one page)."""
    min_batch_size: int | None = None
    """A batch of at least this many customers is handed over early when the next page is not
    fetched yet, so the writer works instead of waiting and the last batch is small; default
    half of ``batch_size`` (``batch_size`` turns this off)."""
    window_pages: int = DEFAULT_WINDOW_PAGES
    """Pages per window cut from the open-ended oldest part of the listing."""
    max_buffered_pages: int | None = None
    """Pages fetched ahead of the writer; default :data:`DEFAULT_BUFFERED_PAGES`."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.batch_size < 1 or self.window_pages < 1:
            raise ValueError("batch_size and window_pages must be at least 1")
        if self.min_batch_size is not None and not 1 <= self.min_batch_size <= self.batch_size:
            raise ValueError("min_batch_size must be between 1 and batch_size")
        if self.fan_out_after_seconds < 0:
            raise ValueError("fan_out_after_seconds must not be negative")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise ValueError("requests_per_second must be positive")

    @property
    def early_batch_size(self) -> int:
        if self.min_batch_size is not None:
            return self.min_batch_size
        return max(1, self.batch_size // 2)

    @property
    def buffered_pages_limit(self) -> int:
        if self.max_buffered_pages is not None:
            return max(1, self.max_buffered_pages)
        return DEFAULT_BUFFERED_PAGES


@dataclass(frozen=True)
class CustomerBatch:
    """Customers to write together, newest first, and where the listing stands after them."""

    number: int
    customers: list[Customer]
    pages: int
    """Stripe pages fetched for this batch (empty pages of empty windows included)."""
    cursor: str | None
    """The last customer's id: the walk resumes after it (``starting_after``)."""
    has_more: bool
    """Whether the snapshot holds customers after this batch (whatever ``max_customers`` says)."""


def list_customers_page(
    client: stripe.StripeClient,
    *,
    limit: int = PAGE_SIZE,
    created_gte: int | None = None,
    created_lte: int | None = None,
    starting_after: str | None = None,
) -> tuple[list[Customer], bool]:
    """One ``GET /v1/customers``: the customers as plain dicts, newest first, and ``has_more``."""
    params: dict[str, Any] = {"limit": limit}
    if starting_after is not None:
        params["starting_after"] = starting_after
    created: dict[str, int] = {}
    if created_gte is not None:
        created["gte"] = created_gte
    if created_lte is not None:
        created["lte"] = created_lte
    if created:
        params["created"] = created
    listing = json.loads(client.raw_request("get", "/v1/customers", **params).body)
    customers = listing["data"]
    return customers, bool(listing.get("has_more")) and bool(customers)


@dataclass(eq=False)
class _Window:
    """Customers created in ``[lo, hi]`` (whole seconds) listed after ``cursor``."""

    lo: int | None
    """Oldest second of the window; None: no lower bound."""
    hi: int
    cursor: str | None = None
    span: int | None = None
    """Seconds one page of this window covered, once a page told (for cutting it)."""
    position: int | None = None
    """``created`` of the cursor customer: the rest of the window is ``[lo, position]``."""
    claimed: bool = False
    listed: bool = False
    pages: deque[tuple[list[Customer], bool]] = field(default_factory=deque)

    def estimated_pages_left(self) -> float:
        """Pages left by the density of the window's last page. The open-ended window has no
        end; a bounded window is not cut before its own first page told its density."""
        if self.span is None:
            return 0.0
        if self.lo is None:
            return float("inf")
        if self.position is None:
            return 0.0
        return (self.position - self.lo + 1) / self.span


class CustomerWalk:
    """Lists the snapshot's customers with up to ``settings.concurrency`` worker threads.

    Use as a context manager and iterate :meth:`pages`; leaving the context stops the workers.
    A worker's exception (after the client's own retries) is raised by :meth:`pages`.
    """

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        created_lte: int,
        starting_after: str | None = None,
        max_customers: int | None = None,
        settings: FetchSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._settings = settings or FetchSettings()
        self._clock = clock
        self._max_customers = max_customers
        self._windows: list[_Window] = [_Window(None, created_lte, starting_after)]
        """Windows not yet handed over, newest first; ``[0]`` is being handed over."""
        self._condition = threading.Condition()
        self._buffered = 0
        self._listed_customers = 0
        self._error: BaseException | None = None
        self._stopped = False
        self._fanned_out = False
        self._idle = 0
        """Workers waiting for a window while fewer than :meth:`_window_limit` walk one."""
        self._active = 0
        """Workers walking a window."""
        self._sequential_pages = 0
        self._fastest_page_seconds = float("inf")
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> CustomerWalk:
        for index in range(self._settings.concurrency):
            thread = threading.Thread(
                target=self._work, name=f"stripe-customers-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def pages(self) -> Iterator[tuple[list[Customer], bool, bool]]:
        """``(customers, has_more_in_window, fanned_out)`` per page, in sequential list order."""
        while True:
            with self._condition:
                while True:
                    head = self._windows[0] if self._windows else None
                    if head is not None and head.pages:
                        customers, has_more = head.pages.popleft()
                        self._buffered -= 1
                        break
                    if self._error is not None:
                        raise self._error
                    if head is None:
                        return
                    if head.listed:
                        self._windows.pop(0)
                        self._condition.notify_all()
                        continue
                    self._condition.wait()
                self._condition.notify_all()
                fanned_out = self._fanned_out
            yield customers, has_more, fanned_out

    def page_ready(self) -> bool:
        """Whether :meth:`pages` would hand over its next page (or end) without waiting."""
        with self._condition:
            if self._error is not None:
                return True
            for window in self._windows:
                if window.pages:
                    return True
                if not window.listed:
                    return False
            return True

    # --- workers ---------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while (window := self._claim()) is not None:
                try:
                    self._walk(window)
                finally:
                    with self._condition:
                        self._active -= 1
                        self._condition.notify_all()
        except BaseException as error:  # handed to the consumer, which raises it
            with self._condition:
                if self._error is None and not self._stopped:
                    self._error = error
                self._stopped = True
                self._condition.notify_all()

    def _claim(self) -> _Window | None:
        with self._condition:
            while not self._stopped:
                open_windows = [window for window in self._windows if not window.listed]
                if not open_windows:
                    return None
                if self._active >= self._window_limit():
                    self._condition.wait()
                    continue
                window = next((w for w in open_windows if not w.claimed), None)
                if window is None and self._fanned_out:
                    window = self._steal(open_windows)
                if window is not None:
                    window.claimed = True
                    self._active += 1
                    return window
                self._idle += 1
                self._condition.wait()
                self._idle -= 1
            return None

    def _window_limit(self) -> int:
        """Windows walked at once: what the rate limit can serve at the pace of the pages seen
        (plus one, so a window between two pages leaves no token unused), up to
        ``settings.concurrency``."""
        rate = self._settings.requests_per_second
        if rate is None or self._fastest_page_seconds == float("inf"):
            return self._settings.concurrency
        needed = round(rate * self._fastest_page_seconds) + 1
        return max(1, min(self._settings.concurrency, needed))

    def _steal(self, open_windows: list[_Window]) -> _Window | None:
        """Split off the older half of the bounded window with the most pages left; None if
        none has :data:`MIN_SPLIT_PAGES` left. (The open-ended window is cut by its owner.)"""
        bounded = [w for w in open_windows if w.lo is not None and w.position is not None]
        if not bounded:
            return None
        victim = max(bounded, key=_Window.estimated_pages_left)
        if victim.estimated_pages_left() < MIN_SPLIT_PAGES:
            return None
        assert victim.lo is not None and victim.position is not None
        boundary = victim.lo + (victim.position - victim.lo + 1) // 2
        if boundary <= victim.lo:
            return None
        # The owner keeps [boundary, hi] and its cursor, which lies inside second `position`.
        return self._split(victim, boundary, _Window(victim.lo, boundary - 1, span=victim.span))

    def _cut_open_window(self, window: _Window) -> None:
        """Give each idle worker a window of the open-ended oldest part, cut from ``window``
        (the open-ended one, which just listed a page) by that page's density: the owner keeps
        about :attr:`FetchSettings.window_pages` pages, each idle worker gets a chunk as long,
        the last one open-ended again. Only the owner cuts: only a listed page shows that the
        listing goes on, so no request is spent on seconds older than the oldest customer.

        When ``window`` is the one being handed over (as at the first fan-out), the chunks grow
        instead: :data:`RAMP_PAGES` pages for the owner, twice that for the next window, and so
        on up to ``window_pages``. A window is walked one page at a time, so the writer could
        otherwise only follow the first window's pace until all of them end together; with
        growing chunks each window is done about when the writer reaches it."""
        unclaimed = sum(1 for w in self._windows if not w.claimed and not w.listed)
        wanted = min(self._idle, self._window_limit() - self._active) - unclaimed
        if wanted <= 0 or window.span is None or window.position is None:
            return
        window_pages = self._settings.window_pages
        ramp = window is self._windows[0]

        def chunk(number: int) -> int:
            pages = min(window_pages, RAMP_PAGES * (number + 1)) if ramp else window_pages
            return window.span * pages

        boundary = window.position - chunk(0) + 1
        if boundary <= 0:
            return
        window.lo = boundary
        at = self._windows.index(window) + 1
        hi = boundary - 1
        for number in range(wanted):
            lo = hi - chunk(number + 1) + 1
            last = number == wanted - 1 or lo <= 0
            self._windows.insert(at + number, _Window(None if last else lo, hi, span=window.span))
            if last:
                return
            hi = lo - 1

    def _split(self, owner: _Window, boundary: int, older: _Window) -> _Window:
        """``owner`` keeps ``[boundary, hi]``; ``older`` comes right after it."""
        owner.lo = boundary
        self._windows.insert(self._windows.index(owner) + 1, older)
        return older

    def _walk(self, window: _Window) -> None:
        while True:
            with self._condition:
                while (
                    not self._stopped
                    and window is not self._windows[0]
                    and self._buffered >= self._settings.buffered_pages_limit
                ):
                    self._condition.wait()
                if self._stopped:
                    return
                if self._limit_listed():
                    window.listed = True
                    self._condition.notify_all()
                    return
                lo, hi, cursor = window.lo, window.hi, window.cursor
                limit = self._page_limit()
            started = self._clock()
            # Newer windows are written first: they go first when requests wait for the limit.
            with request_priority(-hi):
                customers, has_more = list_customers_page(
                    self._client,
                    limit=limit,
                    created_gte=lo,
                    created_lte=hi,
                    starting_after=cursor,
                )
            seconds = self._clock() - started
            with self._condition:
                window.pages.append((customers, has_more))
                self._buffered += 1
                self._listed_customers += len(customers)
                if has_more:
                    window.cursor = customers[-1]["id"]
                    window.position = customers[-1]["created"]
                    window.span = max(1, customers[0]["created"] - customers[-1]["created"])
                    self._maybe_fan_out(seconds)
                    if self._fanned_out and window.lo is None:
                        self._cut_open_window(window)
                else:
                    window.listed = True
                self._condition.notify_all()
            if not has_more:
                return

    def _limit_listed(self) -> bool:
        """A sequential walk stops at ``max_customers``; windows are cut by the consumer."""
        return (
            not self._fanned_out
            and self._max_customers is not None
            and self._listed_customers >= self._max_customers
        )

    def _page_limit(self) -> int:
        """Before fanning out the walk is sequential: it asks for no more than the limit."""
        if self._fanned_out or self._max_customers is None:
            return PAGE_SIZE
        return max(1, min(PAGE_SIZE, self._max_customers - self._listed_customers))

    def _maybe_fan_out(self, page_seconds: float) -> None:
        if self._fanned_out or self._settings.concurrency == 1:
            return
        if self._max_customers is not None and self._listed_customers >= self._max_customers:
            return
        self._sequential_pages += 1
        self._fastest_page_seconds = min(self._fastest_page_seconds, page_seconds)
        listing_seconds = self._sequential_pages * self._fastest_page_seconds
        # One page alone does not tell its pace: it may have waited out a retry.
        if self._settings.fan_out_after_seconds == 0 or (
            self._sequential_pages > 1 and listing_seconds >= self._settings.fan_out_after_seconds
        ):
            self._fanned_out = True


class CustomerBatches:
    """The snapshot's customers after ``starting_after``, newest first, in write batches.

    Fetching starts when this is made (so pages arrive while the caller prepares), and stops when
    the batches run out or the ``with`` block ends. Before the walk fans out a batch is one page,
    so a small account is written page by page as it arrives; after, a batch holds
    ``settings.batch_size`` customers, or at least ``settings.min_batch_size`` when the next page
    is not fetched yet (fewer at the end): the writer writes instead of waiting, and little is
    left to write after the last page. At most ``max_customers`` customers (counted from here).
    If fetching fails, the customers already fetched come first (``has_more`` true), then the
    error is raised.
    """

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        created_lte: int,
        starting_after: str | None = None,
        max_customers: int | None = None,
        settings: FetchSettings | None = None,
    ) -> None:
        self._settings = settings or FetchSettings()
        self._max_customers = max_customers
        self._walk = CustomerWalk(
            client,
            created_lte=created_lte,
            starting_after=starting_after,
            max_customers=max_customers,
            settings=self._settings,
        ).__enter__()
        self._batches = self._group(_LookAhead(self._walk.pages(), self._walk.page_ready))

    def __enter__(self) -> CustomerBatches:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[CustomerBatch]:
        return self._batches

    def close(self) -> None:
        """Stop fetching."""
        self._batches.close()
        self._walk.__exit__(None, None, None)

    def _group(self, ahead: _LookAhead) -> Iterator[CustomerBatch]:
        batch_size = self._settings.batch_size
        early_size = self._settings.early_batch_size
        remaining = self._max_customers
        number, customers, pages = 1, [], 0
        try:
            while (item := ahead.next()) is not None:
                page, window_has_more, fanned_out = item
                pages += 1
                if remaining is not None and len(page) >= remaining:
                    customers.extend(page[:remaining])
                    has_more = len(page) > remaining or window_has_more or ahead.any_left()
                    yield CustomerBatch(number, customers, pages, _last_id(customers), has_more)
                    return
                customers.extend(page)
                if remaining is not None:
                    remaining -= len(page)
                full = len(customers) >= batch_size
                # Early while the writer would wait for the next page, and only where more is
                # known to follow: asking (``any_left``) would wait for that page too.
                early = window_has_more and len(customers) >= early_size and not ahead.ready()
                if not customers or (fanned_out and not (full or early)):
                    continue
                has_more = window_has_more or ahead.any_left()
                if not has_more:
                    # Only empty pages are left: count them here rather than in an empty batch.
                    pages += ahead.drain()
                yield CustomerBatch(number, customers, pages, _last_id(customers), has_more)
                number, customers, pages = number + 1, [], 0
        except Exception:
            if customers:
                yield CustomerBatch(number, customers, pages, _last_id(customers), True)
            raise
        finally:
            self._walk.__exit__(None, None, None)
        if customers or pages:
            yield CustomerBatch(number, customers, pages, _last_id(customers), False)


def iter_customer_batches(
    client: stripe.StripeClient,
    *,
    created_lte: int,
    starting_after: str | None = None,
    max_customers: int | None = None,
    settings: FetchSettings | None = None,
) -> Iterator[CustomerBatch]:
    """:class:`CustomerBatches` as a generator that fetches only once iterated."""
    with CustomerBatches(
        client,
        created_lte=created_lte,
        starting_after=starting_after,
        max_customers=max_customers,
        settings=settings,
    ) as batches:
        yield from batches


class _LookAhead:
    """The walk's pages, with a look ahead (past empty pages) to whether any customer is left."""

    def __init__(
        self,
        pages: Iterator[tuple[list[Customer], bool, bool]],
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._pages = pages
        self._ready = ready
        self._held: deque[tuple[list[Customer], bool, bool]] = deque()

    def ready(self) -> bool:
        """Whether :meth:`next` would answer without waiting for a page to be fetched."""
        return bool(self._held) or self._ready()

    def next(self) -> tuple[list[Customer], bool, bool] | None:
        if self._held:
            return self._held.popleft()
        return next(self._pages, None)

    def drain(self) -> int:
        """Read the rest of the walk (after :meth:`any_left` said no customer is left); the
        number of pages it had."""
        drained = len(self._held) + sum(1 for _ in self._pages)
        self._held.clear()
        return drained

    def any_left(self) -> bool:
        """Whether another customer follows; the pages read to know are kept for :meth:`next`."""
        if any(page for page, _, _ in self._held):
            return True
        for item in self._pages:
            self._held.append(item)
            if item[0]:
                return True
        return False


def _last_id(customers: list[Customer]) -> str | None:
    return customers[-1]["id"] if customers else None
