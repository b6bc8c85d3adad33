"""A connected account's Stripe customers in write batches: the one way the import lists them.

::

    with customer_batches(client, created_lte=started, max_customers=50_000) as listing:
        for batch in listing:
            ...  # write batch.customers, checkpoint batch.cursor
        listing.snapshot  # False if the server refused the ``created`` filter

Fetching starts when the ``with`` block is entered, so pages arrive while the caller prepares,
and stops when the batches run out or the block ends. The pages come from a
:class:`~stripe_crm_pipelines.billing_import.windows.WindowedWalk` (see that module for the
windows and the snapshot). Before the walk fans out a batch is one page, so a small account is
written page by page as it arrives (a first page the fan-out follows joins the first batch after
it); after, a batch holds ``settings.batch_size`` customers, or
at least ``settings.min_batch_size`` when the next page is not fetched yet (fewer at the end):
the writer writes instead of waiting, and little is left to write after the last page. If
fetching fails, the customers already fetched come first (``has_more`` true), then the error is
raised.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import stripe

from stripe_crm_pipelines.billing_import.paging import Customer
from stripe_crm_pipelines.billing_import.windows import (
    DEFAULT_CONCURRENCY,
    DEFAULT_FAN_OUT_AFTER_SECONDS,
    Page,
    WindowedWalk,
    WindowSettings,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_FAN_OUT_AFTER_SECONDS",
    "CustomerBatch",
    "CustomerListing",
    "FetchSettings",
    "customer_batches",
]

DEFAULT_BATCH_SIZE = 2000


@dataclass(frozen=True)
class FetchSettings(WindowSettings):
    """How the customers are listed (see :class:`WindowSettings`) and grouped into batches."""

    batch_size: int = DEFAULT_BATCH_SIZE
    """Customers per write batch once the walk has fanned out (before, a batch is one page)."""
    min_batch_size: int | None = None
    """A batch of at least this many customers is handed over early when the next page is not
    fetched yet, so the writer works instead of waiting and the last batch is small; default
    half of ``batch_size`` (``batch_size`` turns this off)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.min_batch_size is not None and not 1 <= self.min_batch_size <= self.batch_size:
            raise ValueError("min_batch_size must be between 1 and batch_size")

    @property
    def early_batch_size(self) -> int:
        if self.min_batch_size is not None:
            return self.min_batch_size
        return max(1, self.batch_size // 2)


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
    """Whether the listing holds customers after this batch (whatever ``max_customers`` says)."""

    @property
    def cursor_created(self) -> int | None:
        """The ``created`` second of the last customer: a walk resumed after it lists again
        from that second if the customer was deleted meanwhile."""
        return self.customers[-1]["created"] if self.customers else None


class CustomerListing:
    """The batches of one walk (iterate once) and whether it lists under its snapshot."""

    def __init__(
        self, walk: WindowedWalk, settings: FetchSettings, max_customers: int | None
    ) -> None:
        self._walk = walk
        self._settings = settings
        self._max_customers = max_customers

    @property
    def snapshot(self) -> bool:
        """True while the walk lists under ``created[lte]``; False when it was given none, or
        after the server refused the ``created`` filter and the walk fell back to a sequential
        listing without it (customers created meanwhile may or may not be included)."""
        return self._walk.snapshot

    def __iter__(self) -> Iterator[CustomerBatch]:
        try:
            yield from _group(_LookAhead(self._walk), self._settings, self._max_customers)
        finally:
            self._walk.stop()


@contextmanager
def customer_batches(
    client: stripe.StripeClient,
    *,
    created_lte: int | None,
    starting_after: str | None = None,
    starting_after_created: int | None = None,
    max_customers: int | None = None,
    settings: FetchSettings | None = None,
) -> Iterator[CustomerListing]:
    """The customers after ``starting_after`` created up to ``created_lte`` (None: walk the
    list sequentially, without a snapshot), newest first, at most ``max_customers`` of them
    (counted from here), in write batches; the walk's threads stop when the block ends.
    ``starting_after_created``, the ``created`` second of ``starting_after``, lets the walk go
    on if that customer was deleted since."""
    settings = settings or FetchSettings()
    walk = WindowedWalk(
        client,
        created_lte=created_lte,
        starting_after=starting_after,
        starting_after_created=starting_after_created,
        max_customers=max_customers,
        settings=settings,
    )
    with walk:
        yield CustomerListing(walk, settings, max_customers)


def _group(
    ahead: _LookAhead, settings: FetchSettings, max_customers: int | None
) -> Iterator[CustomerBatch]:
    """The pages as batches: one a page until the walk fans out (a first page that the fan-out
    follows waits for it and joins the first batch after), then ``batch_size`` customers, or
    ``early_batch_size`` when the next page is not there yet."""
    remaining = max_customers
    number, customers, pages = 1, [], 0
    try:
        while (page := ahead.next()) is not None:
            pages += 1
            if remaining is not None and len(page.customers) >= remaining:
                customers.extend(page.customers[:remaining])
                has_more = (
                    len(page.customers) > remaining or page.window_has_more or ahead.any_left()
                )
                yield CustomerBatch(number, customers, pages, _last_id(customers), has_more)
                return
            customers.extend(page.customers)
            if remaining is not None:
                remaining -= len(page.customers)
            full = len(customers) >= settings.batch_size
            # Early while the writer would wait for the next page, and only where more is
            # known to follow: asking (``any_left``) would wait for that page too.
            early = (
                page.window_has_more
                and len(customers) >= settings.early_batch_size
                and not ahead.ready()
            )
            if not customers or (page.fanned_out and not (full or early)):
                continue
            if number == 1 and pages == 1 and page.window_has_more and ahead.fans_out_next():
                # The walk fans out with the second page: the first joins the batch it starts,
                # rather than costing a batch's round trips for 100 customers.
                continue
            has_more = page.window_has_more or ahead.any_left()
            if not has_more:
                # Only empty pages are left: count them here rather than in an empty batch.
                pages += ahead.drain()
            yield CustomerBatch(number, customers, pages, _last_id(customers), has_more)
            number, customers, pages = number + 1, [], 0
    except Exception:
        if customers:
            yield CustomerBatch(number, customers, pages, _last_id(customers), True)
        raise
    if customers or pages:
        yield CustomerBatch(number, customers, pages, _last_id(customers), False)


class _LookAhead:
    """The walk's pages, with a look ahead (past empty pages) to whether any customer is left."""

    def __init__(self, walk: WindowedWalk) -> None:
        self._pages = walk.pages()
        self._walk_ready = walk.page_ready
        self._held: deque[Page] = deque()

    def ready(self) -> bool:
        """Whether :meth:`next` would answer without waiting for a page to be fetched."""
        return bool(self._held) or self._walk_ready()

    def next(self) -> Page | None:
        if self._held:
            return self._held.popleft()
        return next(self._pages, None)

    def drain(self) -> int:
        """Read the rest of the walk (after :meth:`any_left` said no customer is left); the
        number of pages it had."""
        drained = len(self._held) + sum(1 for _ in self._pages)
        self._held.clear()
        return drained

    def fans_out_next(self) -> bool:
        """Whether the next page (waited for, and kept for :meth:`next`) comes from a walk that
        has fanned out."""
        if not self._held:
            page = next(self._pages, None)
            if page is None:
                return False
            self._held.append(page)
        return self._held[0].fanned_out

    def any_left(self) -> bool:
        """Whether another customer follows; the pages read to know are kept for :meth:`next`."""
        if any(page.customers for page in self._held):
            return True
        for page in self._pages:
            self._held.append(page)
            if page.customers:
                return True
        return False


def _last_id(customers: list[Customer]) -> str | None:
    return customers[-1]["id"] if customers else None
