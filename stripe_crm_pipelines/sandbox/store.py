"""In-memory storage: per-account collections, ordered for Stripe's list pagination."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from stripe_crm_pipelines.sandbox.data import CustomerRecord
from stripe_crm_pipelines.sandbox.errors import invalid

T = TypeVar("T")
# (created, seq, id): the position of an object in its collection.
Entry = tuple[int, int, str]


class Collection(Generic[T]):
    """Objects of one kind in one account, by id and sorted by ``(created, seq)``.

    Lists walk the sorted entries from a binary-searched position, so a page costs
    O(log n + page size) however deep the cursor is.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.objects: dict[str, T] = {}
        self._entries: dict[str, Entry] = {}
        self._order: list[Entry] = []

    def __len__(self) -> int:
        return len(self.objects)

    def get(self, object_id: str) -> T | None:
        """The object with this id, or ``None``."""
        return self.objects.get(object_id)

    def add(self, object_id: str, created: int, seq: int, obj: T) -> None:
        """Store ``obj``, replacing an object with the same id."""
        if object_id in self.objects:
            self.remove(object_id)
        entry = (created, seq, object_id)
        self.objects[object_id] = obj
        self._entries[object_id] = entry
        bisect.insort(self._order, entry)

    def add_many(self, items: list[tuple[Entry, T]]) -> None:
        """Store many objects at once (one sort instead of an insertion each)."""
        replaced = {entry[2] for entry, _ in items if entry[2] in self.objects}
        if replaced:
            self._order = [entry for entry in self._order if entry[2] not in replaced]
        for entry, obj in items:
            self.objects[entry[2]] = obj
            self._entries[entry[2]] = entry
        self._order.extend(entry for entry, _ in items)
        self._order.sort()

    def remove(self, object_id: str) -> T:
        """Remove and return the object with this id (which must exist)."""
        entry = self._entries.pop(object_id)
        del self._order[bisect.bisect_left(self._order, entry)]
        return self.objects.pop(object_id)

    def replace(self, object_id: str, obj: T) -> None:
        """Store ``obj`` under the id of an object already stored, keeping its position."""
        if object_id not in self.objects:
            raise KeyError(object_id)
        self.objects[object_id] = obj

    def drop_created_before(self, created: int) -> None:
        """Remove every object created before ``created`` (epoch seconds)."""
        cut = bisect.bisect_left(self._order, (created,))
        for _, _, object_id in self._order[:cut]:
            del self.objects[object_id]
            del self._entries[object_id]
        del self._order[:cut]

    def newest(self) -> T | None:
        """The object last in the order, or ``None`` if there is none."""
        return self.objects[self._order[-1][2]] if self._order else None

    def page(
        self,
        limit: int,
        *,
        starting_after: str | None = None,
        ending_before: str | None = None,
        created_gte: int | None = None,
        created_lte: int | None = None,
        match: Callable[[T], bool] | None = None,
    ) -> tuple[list[T], bool]:
        """One page of a Stripe list, newest first: ``(objects, has_more)``.

        ``starting_after`` pages towards older objects, ``ending_before`` towards newer ones
        (the page is still returned newest first). ``match`` filters objects. A cursor that is
        not (or no longer) in the collection is refused as Stripe does: 400
        ``resource_missing`` naming the parameter.
        """
        order = self._order
        low = 0 if created_gte is None else bisect.bisect_left(order, (created_gte,))
        high = len(order) if created_lte is None else bisect.bisect_left(order, (created_lte + 1,))
        if ending_before is not None and starting_after is None:
            low = max(low, bisect.bisect_right(order, self._cursor(ending_before, "ending_before")))
            indexes: range = range(low, high)
        else:
            if starting_after is not None:
                cursor = self._cursor(starting_after, "starting_after")
                high = min(high, bisect.bisect_left(order, cursor))
            indexes = range(high - 1, low - 1, -1)
        found: list[T] = []
        for index in indexes:
            obj = self.objects[order[index][2]]
            if match is None or match(obj):
                found.append(obj)
                if len(found) > limit:
                    break
        has_more = len(found) > limit
        found = found[:limit]
        if ending_before is not None and starting_after is None:
            found.reverse()
        return found, has_more

    def newest_first(self, before: tuple[int, int] | None = None) -> Iterator[T]:
        """Objects from newest to oldest, starting below position ``before`` if given."""
        order = self._order
        high = len(order) if before is None else bisect.bisect_left(order, before)
        for index in range(high - 1, -1, -1):
            yield self.objects[order[index][2]]

    def _cursor(self, object_id: str, param: str) -> Entry:
        entry = self._entries.get(object_id)
        if entry is None:
            raise invalid(f"No such {self.kind}: '{object_id}'", param, "resource_missing")
        return entry


@dataclass
class AccountData:
    """Everything one Stripe account (the platform or a connected ``acct_...``) holds."""

    customers: Collection[CustomerRecord] = field(default_factory=lambda: Collection("customer"))
    deleted_customers: set[str] = field(default_factory=set)
    events: Collection[dict[str, Any]] = field(default_factory=lambda: Collection("event"))
    products: Collection[dict[str, Any]] = field(default_factory=lambda: Collection("product"))
    prices: Collection[dict[str, Any]] = field(default_factory=lambda: Collection("price"))
    invoices: Collection[dict[str, Any]] = field(default_factory=lambda: Collection("invoice"))
    invoice_items: Collection[dict[str, Any]] = field(
        default_factory=lambda: Collection("invoiceitem")
    )
