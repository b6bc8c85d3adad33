"""The scheduler of a customer walk: ``created`` windows of the listing, walked at once.

Stripe lists customers newest first, 100 a page, each page found from the previous one's last id
(``starting_after``), so one walk is one request at a time: with 200 ms pages, 10,000 customers
take 20 s while the rate limit (25 requests/s on test keys) would allow 4 s. A
:class:`WindowedWalk` therefore splits the listing into windows of ``created`` seconds
(``created[gte]`` / ``created[lte]``) and walks several of them at once:

* The snapshot: every request carries ``created[lte]=created_lte``, the second the import
  started, so customers created while it runs are neither imported nor shift any page.
* It starts as one sequential walk, and fans out once that walk has listed for
  :attr:`WindowSettings.fan_out_after_seconds` (pages listed, at least two, times the fastest
  page, so retries and rate-limit waits do not count): two pages of 200 ms. Small accounts
  finish before, without a single extra request.
* Fanning out: the owner of the open-ended oldest window cuts it by the density its last page
  showed (the seconds 100 customers span) into chunks of about
  :attr:`WindowSettings.window_pages` pages, until every worker the rate can serve walks a
  window and one more window waits for the next worker done, the last chunk open-ended again;
  only a listed page shows that the listing goes on, so few requests are spent on seconds older
  than the oldest customer. At the first fan-out the chunks grow from :data:`RAMP_PAGES` pages
  instead, so the newest windows, which are handed over first, end first (:func:`cut_open`).
  Every window ends with a partial page, so windows are cut only as workers need them: while
  the open-ended window is walked, its owner cuts the next ones. Once the listing's end is
  known, an idle worker steals the older half of the bounded window with the most pages left
  (:func:`steal_older_half`), so the last windows end together; a page that was in flight
  when its window lost its older half keeps only the customers still in the window.
  Windows are disjoint ranges of whole seconds: customers created in the same second are never
  split across two windows, and the part of a second after a window's cursor stays with that
  window.
* Order: pages are handed over newest first, exactly in the order of one sequential walk (window
  after window, each in list order), however the windows were fetched. So the first customer
  with an email still wins over older ones, a checkpoint is one cursor, and ``max_customers``
  keeps the newest.
* Width: no more windows are walked at once than the rate limit can serve at the pace of the
  pages (:attr:`WindowSettings.requests_per_second`), plus one whose request waits for a token
  so that none is lost to jitter: 7 for 25 requests/s and 200 ms pages, up to
  :attr:`WindowSettings.concurrency` (16) for live keys. Windows beyond that would only wait
  for tokens, and every window costs a partial page. Worker threads start as the walk needs
  them: one for the sequential start, the rest when it fans out.
* Flow: when requests wait for the rate limiter, those of newer windows go first (see
  :func:`~stripe_crm_pipelines.billing_import.rate_limit.request_priority`), so the window being
  handed over is never starved by those behind it.
* Memory: a worker stops fetching when :attr:`WindowSettings.max_buffered_pages` pages wait to
  be handed over, unless its window is the one being handed over. Memory does not grow with the
  account.
* A deleted cursor: Stripe refuses ``starting_after`` naming a customer deleted since its page
  was listed. The window is then listed again from that customer's second (``created[lte]``, no
  cursor), without the customers of that second already listed; a walk resumed from a
  checkpoint knows that second too (``starting_after_created``). Without a snapshot, the
  refusal fails the walk.
* No snapshot: without ``created_lte``, or when the server refuses the ``created`` filter on the
  first page (see :func:`~stripe_crm_pipelines.billing_import.paging.refuses_created`), the walk
  is one sequential listing without any ``created`` filter. Customers created while it runs
  may then be listed or not, and may shift a page so that a customer is listed twice (the
  import matches it to the same contact).

The pure parts (the settings, a window, cutting and stealing) are plain functions and values;
:class:`WindowedWalk` adds the threads, which share one lock with the consumer.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import stripe

from stripe_crm_pipelines.billing_import.paging import (
    PAGE_SIZE,
    Customer,
    list_customers_page,
    refuses_created,
    refuses_cursor,
)
from stripe_crm_pipelines.billing_import.rate_limit import request_priority

DEFAULT_CONCURRENCY = 16
DEFAULT_BUFFERED_PAGES = 80
DEFAULT_FAN_OUT_AFTER_SECONDS = 0.2
DEFAULT_WINDOW_PAGES = 10
RAMP_PAGES = 2
"""Pages of the first window cut at the first fan-out; the next windows grow by as much."""
MIN_SPLIT_PAGES = 2
"""A bounded window is split only if at least this many pages are estimated to be left in it:
every window ends with a partial page, so a split costs about half a request, and saves a page
round (200 ms) only when each half has a page or more to list."""
STOP_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class WindowSettings:
    """How the windows are walked."""

    concurrency: int = DEFAULT_CONCURRENCY
    """Windows walked at once, at most; 1 walks the list sequentially and sends no
    ``created[gte]``."""
    requests_per_second: float | None = None
    """The rate limit the requests wait for. With it, the walk keeps only as many windows going
    as that rate can serve at the pace of its pages (``rate * page seconds``, rounded up, plus
    one; 7 for 25 requests/s and 200 ms pages): more would only wait for tokens, and each extra
    window costs a partial page."""
    fan_out_after_seconds: float = DEFAULT_FAN_OUT_AFTER_SECONDS
    """How long the walk stays sequential before it splits into windows."""
    window_pages: int = DEFAULT_WINDOW_PAGES
    """Pages per window cut from the open-ended oldest part of the listing."""
    max_buffered_pages: int | None = None
    """Pages fetched ahead of the consumer; default :data:`DEFAULT_BUFFERED_PAGES`."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.window_pages < 1:
            raise ValueError("window_pages must be at least 1")
        if self.fan_out_after_seconds < 0:
            raise ValueError("fan_out_after_seconds must not be negative")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise ValueError("requests_per_second must be positive")

    @property
    def buffered_pages_limit(self) -> int:
        if self.max_buffered_pages is not None:
            return max(1, self.max_buffered_pages)
        return DEFAULT_BUFFERED_PAGES


class Page(NamedTuple):
    """A page as handed over to the consumer."""

    customers: list[Customer]
    window_has_more: bool
    """Whether the window this page came from lists more customers after it."""
    fanned_out: bool
    """Whether the walk had split into windows when the page was handed over."""


@dataclass(eq=False)
class Window:
    """Customers created in ``[lo, hi]`` (whole seconds) listed after ``cursor``."""

    lo: int | None
    """Oldest second of the window; None: no lower bound."""
    hi: int | None
    """Newest second; None only for a walk without a snapshot."""
    cursor: str | None = None
    span: int | None = None
    """Seconds one page of this window covered, once a page told (for cutting it)."""
    position: int | None = None
    """``created`` of the cursor customer: the rest of the window is ``[lo, position]``."""
    claimed: bool = False
    listed: bool = False
    pages: deque[tuple[list[Customer], bool]] = field(default_factory=deque)
    listed_at_position: set[str] = field(default_factory=set)
    """Ids listed so far of the customers created in second ``position``."""
    skip: frozenset[str] = frozenset()
    """Ids not to hand over again: those of second ``hi`` listed before the window had to be
    listed again from its top (its cursor customer was deleted)."""

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

    def record_page(self, customers: list[Customer], has_more: bool) -> None:
        """Keep a fetched page for the consumer (without the ids in ``skip``) and move the
        cursor past it."""
        handed = [c for c in customers if c["id"] not in self.skip] if self.skip else customers
        self.pages.append((handed, has_more))
        if has_more:
            position = customers[-1]["created"]
            if position != self.position:
                self.listed_at_position = set()
            self.listed_at_position.update(c["id"] for c in customers if c["created"] == position)
            self.cursor = customers[-1]["id"]
            self.position = position
            self.span = max(1, customers[0]["created"] - customers[-1]["created"])
        else:
            self.listed = True

    def list_again_from_position(self) -> None:
        """Its cursor customer is gone (deleted in Stripe meanwhile): list the rest of the
        window, ``[lo, position]``, from its top without a cursor, skipping the customers of
        second ``position`` already listed."""
        assert self.position is not None
        self.hi = self.position
        self.cursor = None
        self.skip = frozenset(self.listed_at_position)


def cut_open(window: Window, count: int, window_pages: int, *, ramp: bool) -> list[Window]:
    """Cut ``count`` windows off the open-ended ``window`` (which just listed a page), by that
    page's density; they follow ``window``, newest first, the last one open-ended again.

    ``window`` keeps about ``window_pages`` pages and each new window gets as many. With
    ``ramp`` (``window`` is the one being handed over, as at the first fan-out) the chunks grow
    instead: :data:`RAMP_PAGES` pages for ``window``, twice that for the next one, and so on up
    to ``window_pages``. A window is walked one page at a time, so the consumer could otherwise
    only follow the first window's pace until all of them end together; with growing chunks
    each window is done about when the consumer reaches it. Nothing is cut (``[]``) when the
    newest chunk would reach second 0."""
    if count <= 0 or window.span is None or window.position is None:
        return []
    span = window.span

    def chunk(number: int) -> int:
        pages = min(window_pages, RAMP_PAGES * (number + 1)) if ramp else window_pages
        return span * pages

    boundary = window.position - chunk(0) + 1
    if boundary <= 0:
        return []
    window.lo = boundary
    cut: list[Window] = []
    hi = boundary - 1
    for number in range(count):
        lo = hi - chunk(number + 1) + 1
        last = number == count - 1 or lo <= 0
        cut.append(Window(None if last else lo, hi, span=span))
        if last:
            break
        hi = lo - 1
    return cut


def steal_older_half(windows: list[Window]) -> tuple[Window, Window] | None:
    """Split the bounded window with the most pages left: ``(victim, older half)``. The victim
    keeps ``[boundary, hi]`` and its cursor, which lies inside second ``position``; None if no
    window has :data:`MIN_SPLIT_PAGES` left. (The open-ended window is cut by its owner.)"""
    bounded = [w for w in windows if w.lo is not None and w.position is not None]
    if not bounded:
        return None
    victim = max(bounded, key=Window.estimated_pages_left)
    if victim.estimated_pages_left() < MIN_SPLIT_PAGES:
        return None
    assert victim.lo is not None and victim.position is not None
    boundary = victim.lo + (victim.position - victim.lo + 1) // 2
    if boundary <= victim.lo:
        return None
    older = Window(victim.lo, boundary - 1, span=victim.span)
    victim.lo = boundary
    return victim, older


@dataclass
class _Pace:
    """How fast the sequential start of the walk lists pages, and whether it fanned out."""

    settings: WindowSettings
    pages: int = 0
    fastest_page_seconds: float = float("inf")
    fanned_out: bool = False

    def record(self, page_seconds: float) -> None:
        """Count a sequential page; fan out once the walk has listed for
        ``fan_out_after_seconds`` at its fastest pace."""
        self.pages += 1
        self.fastest_page_seconds = min(self.fastest_page_seconds, page_seconds)
        # One page alone does not tell its pace: it may have waited out a retry.
        after = self.settings.fan_out_after_seconds
        if after == 0 or (self.pages > 1 and self.pages * self.fastest_page_seconds >= after):
            self.fanned_out = True

    def window_limit(self) -> int:
        """Windows walked at once: what the rate limit can serve at the pace of the pages seen,
        rounded up, plus one whose request waits for a token (so no token goes unused between
        two pages), up to ``concurrency``."""
        rate = self.settings.requests_per_second
        if rate is None or self.fastest_page_seconds == float("inf"):
            return self.settings.concurrency
        needed = math.ceil(rate * self.fastest_page_seconds) + 1
        return max(1, min(self.settings.concurrency, needed))


class WindowedWalk:
    """Lists the customers after ``starting_after`` with up to ``settings.concurrency`` worker
    threads, under the snapshot ``created_lte`` (None: sequentially, without a snapshot).

    Use in a ``with`` block and iterate :meth:`pages`; leaving the block stops the workers. A
    worker's exception (after the client's own retries) is raised by :meth:`pages`.
    """

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        created_lte: int | None,
        starting_after: str | None = None,
        starting_after_created: int | None = None,
        max_customers: int | None = None,
        settings: WindowSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._settings = settings or WindowSettings()
        self._clock = clock
        self._max_customers = max_customers
        self._snapshot = created_lte is not None
        self._pace = _Pace(self._settings)
        self._windows: list[Window] = [
            Window(None, created_lte, starting_after, position=starting_after_created)
        ]
        """Windows not yet handed over, newest first; ``[0]`` is being handed over."""
        self._lock = threading.Condition()
        self._buffered = 0
        """Pages fetched and not yet handed over."""
        self._listed_customers = 0
        self._walking = 0
        """Workers walking a window."""
        self._error: BaseException | None = None
        self._stopped = False
        self._threads: list[threading.Thread] = []

    @property
    def snapshot(self) -> bool:
        """Whether the walk lists under its snapshot; False without one, or once the server
        refused the ``created`` filter."""
        return self._snapshot

    def __enter__(self) -> WindowedWalk:
        with self._lock:
            self._start_workers(1)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stop fetching: the workers end after the request they are waiting for."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()

    # --- the consumer ----------------------------------------------------------------------

    def pages(self) -> Iterator[Page]:
        """Every page, in sequential list order."""
        while True:
            with self._lock:
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
                        self._lock.notify_all()
                        continue
                    self._lock.wait()
                self._lock.notify_all()
                fanned_out = self._pace.fanned_out
            yield Page(customers, has_more, fanned_out)

    def page_ready(self) -> bool:
        """Whether :meth:`pages` would hand over its next page (or end) without waiting."""
        with self._lock:
            if self._error is not None:
                return True
            for window in self._windows:
                if window.pages:
                    return True
                if not window.listed:
                    return False
            return True

    # --- the workers -----------------------------------------------------------------------

    def _start_workers(self, count: int) -> None:
        """Have ``count`` worker threads (called with the lock held): one walks the sequential
        start, the others start when the walk fans out, as many as windows may be walked."""
        while len(self._threads) < count and not self._stopped:
            thread = threading.Thread(
                target=self._work, name=f"stripe-customers-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        try:
            while (window := self._claim()) is not None:
                try:
                    self._walk(window)
                finally:
                    with self._lock:
                        self._walking -= 1
                        self._lock.notify_all()
        except BaseException as error:  # handed to the consumer, which raises it
            with self._lock:
                if self._error is None and not self._stopped:
                    self._error = error
                self._stopped = True
                self._lock.notify_all()

    def _claim(self) -> Window | None:
        """The window this worker walks next: an unclaimed one, else (once the listing's end is
        known) the older half of one being walked; None when every window is listed or the walk
        stopped."""
        with self._lock:
            while not self._stopped:
                open_windows = [window for window in self._windows if not window.listed]
                if not open_windows:
                    return None
                if self._walking >= self._pace.window_limit():
                    self._lock.wait()
                    continue
                window = next((w for w in open_windows if not w.claimed), None)
                # While the open-ended window is walked, its owner cuts new windows; once the
                # listing's end is known, idle workers split the windows left instead.
                if window is None and self._pace.fanned_out and open_windows[-1].lo is not None:
                    window = self._steal(open_windows)
                if window is not None:
                    window.claimed = True
                    self._walking += 1
                    return window
                self._lock.wait()
            return None

    def _steal(self, open_windows: list[Window]) -> Window | None:
        stolen = steal_older_half(open_windows)
        if stolen is None:
            return None
        victim, older = stolen
        self._windows.insert(self._windows.index(victim) + 1, older)
        return older

    def _walk(self, window: Window) -> None:
        """List ``window`` page by page until it ends or the walk stops."""
        while True:
            with self._lock:
                while (
                    not self._stopped
                    and window is not self._windows[0]
                    and self._buffered >= self._settings.buffered_pages_limit
                ):
                    self._lock.wait()
                if self._stopped:
                    return
                if self._limit_listed():
                    window.listed = True
                    self._lock.notify_all()
                    return
                lo, hi, cursor = window.lo, window.hi, window.cursor
                limit = self._page_limit()
            started = self._clock()
            try:
                # Newer windows are handed over first: they go first when requests wait.
                with request_priority(-(hi or 0)):
                    customers, has_more = list_customers_page(
                        self._client,
                        limit=limit,
                        created_gte=lo,
                        created_lte=hi,
                        starting_after=cursor,
                    )
            except stripe.InvalidRequestError as error:
                if self._drop_snapshot(window, error) or self._list_again(window, cursor, error):
                    continue
                raise
            seconds = self._clock() - started
            with self._lock:
                if window.lo is not None and window.lo != lo:
                    # A thief took the window's older part while this page was fetched: the
                    # customers older than the window's new start are the thief's to list.
                    kept = [c for c in customers if c["created"] >= window.lo]
                    if len(kept) < len(customers):
                        customers, has_more = kept, False
                window.record_page(customers, has_more)
                self._buffered += 1
                self._listed_customers += len(customers)
                if has_more:
                    self._maybe_fan_out(seconds)
                    if self._pace.fanned_out:
                        self._start_workers(self._pace.window_limit())
                    if self._pace.fanned_out and window.lo is None:
                        self._cut_open_window(window)
                self._lock.notify_all()
            if not has_more:
                return

    def _drop_snapshot(self, window: Window, error: stripe.InvalidRequestError) -> bool:
        """On the server refusing ``created`` before any page was listed, list the rest of
        ``window`` (then the whole listing) without it; whether the walk goes on."""
        with self._lock:
            if not (self._snapshot and refuses_created(error) and self._listed_customers == 0):
                return False
            self._snapshot = False
            window.hi = None
            return True

    def _list_again(
        self, window: Window, cursor: str | None, error: stripe.InvalidRequestError
    ) -> bool:
        """On the server no longer knowing the cursor customer (deleted in Stripe since its page
        was listed), list the rest of ``window`` again from that customer's second; whether the
        walk goes on. Without a snapshot, or not knowing that second, it cannot."""
        with self._lock:
            if not (
                cursor is not None
                and window.cursor == cursor
                and window.position is not None
                and self._snapshot
                and refuses_cursor(error)
            ):
                return False
            window.list_again_from_position()
            return True

    def _cut_open_window(self, window: Window) -> None:
        """Cut windows off the open-ended ``window`` (see :func:`cut_open`) until every worker
        the rate can serve walks one and one more is ready for the next worker done, ramping up
        when ``window`` is the one being handed over."""
        unclaimed = sum(1 for w in self._windows if not w.claimed and not w.listed)
        wanted = self._pace.window_limit() + 1 - self._walking - unclaimed
        cut = cut_open(window, wanted, self._settings.window_pages, ramp=window is self._windows[0])
        at = self._windows.index(window) + 1
        self._windows[at:at] = cut

    def _limit_listed(self) -> bool:
        """A sequential walk stops at ``max_customers``; windows are cut by the consumer."""
        return (
            not self._pace.fanned_out
            and self._max_customers is not None
            and self._listed_customers >= self._max_customers
        )

    def _page_limit(self) -> int:
        """Before fanning out the walk is sequential: it asks for no more than the limit."""
        if self._pace.fanned_out or self._max_customers is None:
            return PAGE_SIZE
        return max(1, min(PAGE_SIZE, self._max_customers - self._listed_customers))

    def _maybe_fan_out(self, page_seconds: float) -> None:
        if self._pace.fanned_out or self._settings.concurrency == 1 or not self._snapshot:
            return
        if self._max_customers is not None and self._listed_customers >= self._max_customers:
            return
        self._pace.record(page_seconds)
