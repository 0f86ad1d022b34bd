"""Eviction rules for the expert cache: LRU, LFU, FIFO and Belady's offline optimum.

An eviction rule only orders the entries of one cache partition; the cache tells it what was inserted,
used and removed, and asks it for a victim among entries that are not pinned. Every input is a *logical*
event (a decode position ``pos = step * L + layer``), never a clock time or a copy completion, so the
simulator and the live executor evict exactly the same experts. Ties are broken by the smaller key, so
the choice is deterministic.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from sim.workload import NextUse

IsPinned = Callable[[int], bool]


class EvictionRule:
    """Base class: keeps the order of one partition's entries and names victims."""

    name = "base"

    def insert(self, key: int, pos: int) -> None:
        """``key`` entered the partition (loaded or reserved) at position ``pos``."""
        raise NotImplementedError

    def touch(self, key: int, pos: int) -> None:
        """A layer used ``key`` at position ``pos``."""
        raise NotImplementedError

    def touch_all(self, keys: Iterable[int], pos: int) -> None:
        """A layer used every key of ``keys`` at ``pos``, in that order."""
        for key in keys:
            self.touch(key, pos)

    def remove(self, key: int) -> None:
        """``key`` left the partition."""
        raise NotImplementedError

    def victim(self, is_pinned: IsPinned) -> int | None:
        """The entry to evict among unpinned ones, or None if every entry is pinned."""
        raise NotImplementedError

    def replace(self, key: int, pos: int, is_pinned: IsPinned) -> int | None:
        """Evict the victim and insert ``key`` at ``pos`` in its place; returns the victim (None, and no
        change, if every entry is pinned). One call per eviction: the cache does this for every copy."""
        victim = self.victim(is_pinned)
        if victim is not None:
            self.remove(victim)
            self.insert(key, pos)
        return victim


class LRU(EvictionRule):
    """Least recently used (insertion counts as a use)."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[int, None] = OrderedDict()

    def insert(self, key: int, pos: int) -> None:
        self._order[key] = None  # a new key goes to the most recent end

    def touch(self, key: int, pos: int) -> None:
        self._order.move_to_end(key)

    def touch_all(self, keys: Iterable[int], pos: int) -> None:
        deque(map(self._order.move_to_end, keys), 0)  # a loop in C: this runs at every router

    def remove(self, key: int) -> None:
        del self._order[key]

    def victim(self, is_pinned: IsPinned) -> int | None:
        for key in self._order:
            if not is_pinned(key):
                return key
        return None

    def replace(self, key: int, pos: int, is_pinned: IsPinned) -> int | None:
        order = self._order
        for victim in order:
            if not is_pinned(victim):
                del order[victim]
                order[key] = None
                return victim
        return None


class FIFO(LRU):
    """First in, first out: uses do not refresh an entry."""

    name = "fifo"

    def touch(self, key: int, pos: int) -> None:
        pass

    def touch_all(self, keys: Iterable[int], pos: int) -> None:
        pass


class _HeapRule(EvictionRule):
    """An eviction rule that evicts the smallest ``priority(key)``; a lazy heap with per-key versions."""

    def __init__(self) -> None:
        self._heap: list[tuple] = []
        self._current: dict[int, tuple] = {}

    def _set(self, key: int, item: tuple) -> None:
        self._current[key] = item
        heapq.heappush(self._heap, item)

    def remove(self, key: int) -> None:
        del self._current[key]

    def victim(self, is_pinned: IsPinned) -> int | None:
        heap, current = self._heap, self._current
        skipped = []
        found = None
        while heap:
            item = heap[0]
            key = item[-1]
            if current.get(key) is not item:
                heapq.heappop(heap)
                continue
            if is_pinned(key):
                skipped.append(heapq.heappop(heap))
                continue
            found = key
            break
        for item in skipped:
            heapq.heappush(heap, item)
        if len(heap) > 4 * len(current) + 64:
            self._heap = list(current.values())
            heapq.heapify(self._heap)
        return found


class LFU(_HeapRule):
    """Least frequently used since entering the cache; ties go to the least recently used."""

    name = "lfu"

    def __init__(self) -> None:
        super().__init__()
        self._uses: dict[int, int] = {}

    def insert(self, key: int, pos: int) -> None:
        self._uses[key] = 0
        self._set(key, (0, pos, key))

    def touch(self, key: int, pos: int) -> None:
        count = self._uses[key] + 1
        self._uses[key] = count
        self._set(key, (count, pos, key))

    def remove(self, key: int) -> None:
        super().remove(key)
        del self._uses[key]


class Belady(_HeapRule):
    """Belady's rule: evict the entry needed again furthest in the future (the offline optimum for demand
    paging); it reads the future of the trace, so it is a bound, not a deployable policy."""

    name = "belady"

    def __init__(self, next_use: NextUse) -> None:
        super().__init__()
        self._next_use = next_use

    def insert(self, key: int, pos: int) -> None:
        self._set(key, (-self._next_use.after(key, pos - 1), key))

    def touch(self, key: int, pos: int) -> None:
        self._set(key, (-self._next_use.after(key, pos), key))


EVICTION_RULES = ("lru", "lfu", "fifo", "belady")


def make_eviction_rule(name: str, next_use: Callable[[], NextUse]) -> EvictionRule:
    """Build the rule called ``name``; ``next_use`` is only called for Belady."""
    if name == "lru":
        return LRU()
    if name == "fifo":
        return FIFO()
    if name == "lfu":
        return LFU()
    if name == "belady":
        return Belady(next_use())
    raise ValueError(f"unknown eviction rule '{name}' (choose from {', '.join(EVICTION_RULES)})")
