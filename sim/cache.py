"""The GPU expert cache: slots, their occupants, pins, eviction and the counters the results report.

Keys are ints ``key = layer * num_experts + expert`` (``layer`` is the MoE-layer index ``j``); use
``cache.key(j, e)`` / ``cache.split(key)`` to convert. An entry is *present* from the moment a transfer is
reserved for it until it is evicted; present entries are either *arrived* (the copy finished) or *in flight*.

Timing-independence rule (why the simulator and the live executor take identical decisions):
every decision here depends only on *logical* decode positions ``pos = step * L + j``, never on whether a
copy has finished. Concretely:

- presence (hit-or-late versus miss) is decided by reservations, not by arrivals;
- an entry is *pinned* (never evicted) until the end of the layer it was fetched or used for
  (``pin_until``, a position); pins end when the controller reports that layer's end, a logical event,
  except that a prefetch pin ends at its layer's router if that router does not need the expert;
- eviction rules see inserts and uses at positions only, and break ties deterministically;
- slots are handed out deterministically (lowest free slot first, else the victim's slot).

Only ``arrived`` depends on the clock, and it only decides "hit" versus "late". An evicted entry whose copy
is still on the wire keeps its slot physically busy: the clock must not start the next copy into that slot
before the previous one completed (the simulator models this; the live executor waits on the copy's event).

Capacity: ``CacheConfig.slots`` counts slots on the GPU; ``per_layer`` splits them evenly over the MoE
layers (first layers get the remainder). ``slots=0`` means *no cache*: experts live in staging slots only
while a layer needs them (or while a prefetch for a coming layer holds them) and are dropped at layer end.
A partition must hold at least the experts one step needs at one layer (``reserve``). A prefetch pinned
beyond the partition's next router may only take a slot if that leaves ``reserve`` slots unpinned there,
so demand loads always find a slot; prefetches that cannot get a slot are dropped (and counted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sim.eviction import EVICTION_RULES, EvictionRule, make_eviction_rule
from sim.workload import NextUse


@dataclass(frozen=True)
class CacheConfig:
    """GPU expert slots: an absolute count or a fraction of all routed experts (exactly one of them).

    ``slots=0`` is the no-cache configuration. ``eviction`` is one of lru, lfu, fifo, belady.
    """

    slots: int | None = None
    fraction: float | None = None
    per_layer: bool = False
    eviction: str = "lru"

    def __post_init__(self) -> None:
        if (self.slots is None) == (self.fraction is None):
            raise ValueError("give exactly one of cache slots or cache fraction")
        if self.slots is not None and self.slots < 0:
            raise ValueError(f"cache slots must be >= 0, got {self.slots}")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"cache fraction must be in [0, 1], got {self.fraction}")
        if self.eviction not in EVICTION_RULES:
            raise ValueError(
                f"unknown eviction rule '{self.eviction}' (choose from {', '.join(EVICTION_RULES)})"
            )

    def total_slots(self, num_layers: int, num_experts: int) -> int:
        """Slots on the GPU for a model with ``num_layers`` MoE layers of ``num_experts`` experts."""
        if self.slots is not None:
            return min(self.slots, num_layers * num_experts)
        assert self.fraction is not None  # exactly one of the two is set (__post_init__)
        return round(self.fraction * num_layers * num_experts)

    def label(self) -> str:
        size = f"{self.slots} slots" if self.slots is not None else f"{self.fraction:g} of experts"
        return f"{size}{' per layer' if self.per_layer else ''}, {self.eviction}"


#: ``Entry.used_at`` of an entry no router has used (below every position, the first prefetch's included)
NEVER_USED: Final = -2


class CacheTooSmall(ValueError):
    """The configured slots cannot hold what one layer needs at once."""


class Entry:
    """One present expert. ``request`` is the transfer that loads it until the clock reports it finished."""

    __slots__ = (
        "arrived",
        "counted",
        "key",
        "loaded_at",
        "pin_until",
        "prefetched",
        "request",
        "slot",
        "used_at",
    )

    def __init__(self, key: int, slot: int) -> None:
        self.key = key
        self.slot = slot
        self.arrived = False
        self.pin_until = -1  # pinned by a prefetch until this position's layer ends
        self.counted = False  # pin_until is booked in its partition's far_pins
        self.used_at = NEVER_USED  # last router position that used it (pinned until that layer ends)
        self.loaded_at = -1  # position at which its transfer was reserved
        self.prefetched = False  # loaded by a prefetch (wasted if evicted before any use)
        self.request: object | None = None

    @property
    def wasted(self) -> bool:
        """Prefetched and not used since."""
        return self.prefetched and self.used_at < self.loaded_at


class _Partition:
    """A slot pool with its own eviction rule: the whole cache, or one layer's budget."""

    __slots__ = ("base", "capacity", "far_pins", "free", "next_slot", "reserve", "rule", "size")

    def __init__(self, base: int, capacity: int | None, reserve: int, rule: EvictionRule) -> None:
        self.base = base
        self.capacity = capacity  # None: unbounded staging (no-cache mode)
        self.reserve = reserve
        self.rule = rule
        self.size = 0
        self.free: list[int] = list(range(base + capacity - 1, base - 1, -1)) if capacity else []
        self.next_slot = base
        # pin target -> entries pinned until it, for pins beyond the partition's next router when taken
        self.far_pins: dict[int, int] = {}

    def take_free_slot(self) -> int | None:
        if self.free:
            return self.free.pop()
        if self.capacity is None:
            slot = self.next_slot
            self.next_slot += 1
            return slot
        return None


class ExpertCache:
    """Expert slots on the GPU. Plain Python, no clock: the controller drives it, in decode order."""

    def __init__(
        self,
        config: CacheConfig,
        num_layers: int,
        num_experts: int,
        reserve: Sequence[int],
        next_use: Callable[[], NextUse] | None = None,
        resident: bool = False,
    ) -> None:
        """``reserve[j]``: the most experts layer ``j`` needs in one step (demand loads must always fit).
        ``next_use`` is only needed for Belady. ``resident``: every expert on the GPU, loaded up front."""
        self.config = config
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.entries: dict[int, Entry] = {}
        self._pinned = self._make_pinned_test()
        self._any_far_pins = False
        self.released_through = -1  # pins with pin_until <= this position are over
        self.current_pos = -1
        self.routed_through = -1
        self.resident = resident
        self.no_cache = config.total_slots(num_layers, num_experts) == 0 and not resident
        self.evictions = 0
        self.wasted = 0
        self.peak_slots = 0
        self._next_use = next_use or _no_next_use
        total = num_layers * num_experts if resident else config.total_slots(num_layers, num_experts)
        self.partitions = self._build_partitions(total, list(reserve))
        self._partition_of_layer = (
            list(range(num_layers)) if len(self.partitions) == num_layers else [0] * num_layers
        )
        if resident:
            self._preload_all()

    # -- construction

    def _build_partitions(self, total: int, reserve: list[int]) -> list[_Partition]:
        def rule() -> EvictionRule:
            return make_eviction_rule(self.config.eviction, self._next_use)

        if self.no_cache:
            return [_Partition(0, None, max(reserve, default=0), rule())]
        if not self.config.per_layer or self.resident:
            need = max(reserve, default=0)
            if total < need:
                raise CacheTooSmall(
                    f"a cache of {total} slots cannot hold the {need} experts one layer needs at once; "
                    f"use at least {need} slots (or 0 for no cache)"
                )
            return [_Partition(0, total, need, rule())]
        partitions = []
        base = 0
        for j in range(self.num_layers):
            capacity = total // self.num_layers + (1 if j < total % self.num_layers else 0)
            if capacity < reserve[j]:
                raise CacheTooSmall(
                    f"a per-layer budget of {capacity} slots cannot hold the {reserve[j]} experts layer {j} "
                    f"needs at once; use at least {reserve[j] * self.num_layers} slots in total"
                )
            partitions.append(_Partition(base, capacity, reserve[j], rule()))
            base += capacity
        return partitions

    def _preload_all(self) -> None:
        for key in range(self.num_layers * self.num_experts):
            entry = Entry(key, key)
            entry.arrived = True
            self.entries[key] = entry
        partition = self.partitions[0]
        for key in self.entries:
            partition.rule.insert(key, -1)
        partition.free.clear()
        partition.size = len(self.entries)
        self.peak_slots = len(self.entries)

    # -- keys

    def key(self, layer: int, expert: int) -> int:
        return layer * self.num_experts + expert

    def split(self, key: int) -> tuple[int, int]:
        return divmod(key, self.num_experts)

    @property
    def num_slots(self) -> int:
        """Slots the cache may occupy (for no-cache mode: the peak number of staging slots used so far)."""
        if self.no_cache:
            return self.peak_slots
        return sum(p.capacity or 0 for p in self.partitions)

    # -- queries (read-only; policies may call these)

    def get(self, key: int) -> Entry | None:
        return self.entries.get(key)

    def contains(self, key: int) -> bool:
        """Present: arrived or in flight."""
        return key in self.entries

    def is_pinned(self, key: int) -> bool:
        return self._pinned(key)

    def _make_pinned_test(self) -> Callable[[int], bool]:
        """Pinned: used by a layer that has not ended, or prefetched for a layer that has not ended and
        whose router has not run yet (a prefetch its router did not need is free again after the router)."""
        entries, cache = self.entries, self

        def pinned(key: int) -> bool:
            entry = entries[key]
            released = cache.released_through
            if entry.used_at > released:
                return True
            until = entry.pin_until
            return until > released and until != cache.routed_through

        return pinned

    def occupancy(self) -> int:
        return len(self.entries)

    # -- mutations (the controller calls these in decode order)

    def advance(self, pos: int) -> None:
        """The decode reached position ``pos`` (a layer started)."""
        self.current_pos = pos

    def routed(self, pos: int) -> None:
        """The router of position ``pos`` ran (its demand loads are allocated)."""
        self.routed_through = pos

    def allocate(self, key: int, pin_until: int, prefetch: bool) -> Entry | None:
        """Reserve a slot for absent ``key`` and pin it until ``pin_until``; evict if needed.

        Returns None only for a prefetch that finds no evictable slot (or would eat the demand reserve).
        A demand load that finds none raises CacheTooSmall (it cannot happen with a valid reserve).
        """
        layer = key // self.num_experts
        part = self.partitions[self._partition_of_layer[layer]]
        near = pin_until <= self.routed_through + 1  # pinned at most until the next router
        if prefetch and not near and part.capacity is not None:
            next_router = self._next_router(layer)
            if pin_until > next_router:
                later = sum(n for target, n in part.far_pins.items() if target > next_router)
                if later + 1 > part.capacity - part.reserve:
                    return None
        entries = self.entries
        pos = self.current_pos
        if part.free or part.capacity is None:  # a free slot (or a new staging slot): the partition grows
            if part.free:
                entry = Entry(key, part.free.pop())
            else:
                entry = Entry(key, part.next_slot)
                part.next_slot += 1
            part.size += 1
            part.rule.insert(key, pos)
            entries[key] = entry
            if len(entries) > self.peak_slots:
                self.peak_slots = len(entries)
        else:  # evict: the partition's size stays the same
            victim = part.rule.replace(key, pos, self._pinned)
            if victim is None:
                if prefetch:
                    return None
                raise CacheTooSmall(f"no unpinned slot left for a demand load of layer {layer}")
            entry = entries.pop(victim)  # the victim's entry object and slot are reused for ``key``
            entries[key] = entry
            self.evictions += 1
            if entry.prefetched and entry.used_at < entry.loaded_at:
                self.wasted += 1
            entry.key = key
            entry.arrived = False
            entry.request = None
            if entry.counted:  # a prefetch its router did not need may still hold a (stale) booking
                self._uncount(entry)
            entry.pin_until = -1
            entry.used_at = NEVER_USED
        entry.prefetched = prefetch
        entry.loaded_at = pos
        if near or part.capacity is None:
            entry.pin_until = pin_until
        else:
            self._pin(entry, part, pin_until, layer)
        return entry

    def route(self, layer: int, experts: Sequence[int], pos: int) -> tuple[list[Entry | None], bool]:
        """The router of ``layer`` at ``pos`` needs ``experts``: use every present one (which pins it
        until the layer ends). Returns their entries, None for absent ones, and whether every one is
        present and arrived (all hits). From now on, entries prefetched for ``pos`` that it did not use
        count as unpinned, so demand loads may evict them. (One loop: this runs at every router.)"""
        base = layer * self.num_experts
        entries = self.entries
        found: list[Entry | None] = []
        keys: list[int] = []
        ready = True
        for e in experts:
            key = base + e
            entry = entries.get(key)
            found.append(entry)
            if entry is None:
                ready = False
                continue
            entry.used_at = pos
            keys.append(key)
            if not entry.arrived:
                ready = False
        self.routed_through = pos
        self.partitions[self._partition_of_layer[layer]].rule.touch_all(keys, pos)
        return found, ready

    def use(self, entry: Entry, pos: int) -> None:
        """A layer uses ``entry`` at ``pos`` (it stays pinned until that layer ends)."""
        entry.used_at = pos
        self.partitions[self._partition_of_layer[entry.key // self.num_experts]].rule.touch(entry.key, pos)

    def protect(self, entry: Entry, pin_until: int) -> None:
        """Keep a present entry until ``pin_until`` (a prefetch named an expert that is already present)."""
        if pin_until > entry.pin_until:
            layer = entry.key // self.num_experts
            self._pin(entry, self.partitions[self._partition_of_layer[layer]], pin_until, layer)

    def release_through(self, pos: int) -> None:
        """Layer end: pins held until ``pos`` or earlier are over; no-cache mode drops unpinned entries."""
        self.released_through = pos
        if self._any_far_pins:
            self._any_far_pins = False
            for part in self.partitions:
                if part.far_pins:
                    for target in [t for t in part.far_pins if t <= pos]:
                        del part.far_pins[target]
                    self._any_far_pins = self._any_far_pins or bool(part.far_pins)
        if self.no_cache:
            part = self.partitions[0]
            dropped = [key for key, e in self.entries.items() if e.pin_until <= pos and e.used_at <= pos]
            for key in dropped:
                part.free.append(self._evict(key, part))
            part.free.sort(reverse=True)

    def finish(self) -> int:
        """Count prefetched entries still unused at the end as wasted; returns the total wasted."""
        self.wasted += sum(1 for e in self.entries.values() if e.wasted)
        for e in self.entries.values():
            e.prefetched = False
        return self.wasted

    # -- internals

    def _next_router(self, layer: int) -> int:
        """Position of the next router that will allocate demand loads in ``layer``'s partition."""
        following = self.routed_through + 1
        if len(self.partitions) == 1:
            return following
        return following + (layer - following) % self.num_layers

    def _pin(self, entry: Entry, part: _Partition, pin_until: int, layer: int) -> None:
        """Raise ``entry``'s pin to ``pin_until``; book it if it reaches beyond the next router."""
        if pin_until <= entry.pin_until:
            return
        if entry.counted:
            self._uncount(entry)
        entry.pin_until = pin_until
        if (
            part.capacity is not None
            and pin_until > self.routed_through + 1
            and pin_until > self._next_router(layer)
        ):
            part.far_pins[pin_until] = part.far_pins.get(pin_until, 0) + 1
            entry.counted = True
            self._any_far_pins = True

    def _uncount(self, entry: Entry) -> None:
        entry.counted = False
        if entry.pin_until <= self.released_through:
            return  # its booking was dropped when the pin ended
        part = self.partitions[self._partition_of_layer[entry.key // self.num_experts]]
        left = part.far_pins[entry.pin_until] - 1
        if left:
            part.far_pins[entry.pin_until] = left
        else:
            del part.far_pins[entry.pin_until]

    def _evict(self, key: int, part: _Partition) -> int:
        """Remove ``key``; returns its slot (not put on the free list)."""
        entry = self.entries.pop(key)
        part.rule.remove(key)
        part.size -= 1
        self.evictions += 1
        if entry.wasted:
            self.wasted += 1
        return entry.slot


def _no_next_use() -> NextUse:
    raise ValueError("Belady eviction needs the workload's future (pass next_use)")
