"""The live executor's copy scheduling (sim.live._CopyQueue) against a scripted GPU whose copies land only
when the test says so: the MoE block commits a copy it needs behind a busy engine instead of spinning,
and a slot's copies never overtake each other."""

from __future__ import annotations

from sim.controller import FetchRequest
from sim.live import LANDED, PENDING, STARTED, _CopyQueue, _Gate


class _Copy:
    def __init__(self) -> None:
        self.landed = False


class ScriptedDevice:
    """Two copy streams; a copy lands when the test calls ``land``, in per-stream order."""

    def __init__(self, engines: int = 2) -> None:
        self.copy = [object() for _ in range(engines)]
        self.issued: list[tuple[int, int]] = []  # (engine, slot) in issue order
        self.streams: list[list[_Copy]] = [[] for _ in range(engines)]

    def passed(self, marker: object) -> bool:
        return True if not isinstance(marker, _Copy) else marker.landed

    def issue_copy(self, engine: int, dst: int, src: int, timing: bool, gate: object) -> tuple[None, _Copy]:
        done = _Copy()
        self.issued.append((engine, dst))
        self.streams[engine].append(done)
        return None, done

    def land(self, engine: int) -> None:
        """The oldest copy still moving on ``engine`` lands."""
        next(c for c in self.streams[engine] if not c.landed).landed = True


class _NoTimeline:
    on = False


def _queue(dev: ScriptedDevice, landed: list[int]) -> _CopyQueue:
    slots = list(range(8))
    return _CopyQueue(dev, slots, slots, lambda r: landed.append(r.seq), _NoTimeline())


def _request(seq: int, slot: int, priority: int = 1) -> FetchRequest:
    return FetchRequest(seq, slot, 0, slot, slot, priority, priority == 0, 0)


def test_a_needed_copy_is_committed_behind_the_engine_that_frees_first_without_waiting() -> None:
    dev, landed = ScriptedDevice(), []
    queue = _queue(dev, landed)
    queue.submit([_request(0, 0), _request(1, 1), _request(2, 2)], _Gate(None))
    third = queue.by_seq[2]
    assert [t.state for t in (queue.by_seq[0], queue.by_seq[1], third)] == [STARTED, STARTED, PENDING]

    queue.commit(third)

    assert third.state == STARTED and third.engine == 0  # engine 0 took the oldest copy
    assert dev.issued == [(0, 0), (1, 1), (0, 2)]
    assert queue.early_commits == 1
    dev.land(0)
    queue.pump()
    assert landed == [0] and third.state == STARTED  # still behind on its stream
    dev.land(0)
    queue.pump()
    assert landed == [0, 2] and third.state == LANDED


def test_a_copy_into_a_slot_still_being_filled_is_committed_behind_that_copy() -> None:
    dev, landed = ScriptedDevice(), []
    queue = _queue(dev, landed)
    queue.submit([_request(0, 0), _request(1, 1)], _Gate(None))
    queue.submit([_request(2, 1, priority=0)], _Gate(None))  # the same slot as copy 1, on engine 1

    queue.commit(queue.by_seq[2])

    assert dev.issued[-1] == (1, 1)
    dev.land(0)
    queue.pump()
    assert queue.by_seq[2].state == STARTED


def test_a_pending_earlier_copy_into_the_same_slot_is_committed_first() -> None:
    dev, landed = ScriptedDevice(), []
    queue = _queue(dev, landed)
    queue.submit([_request(0, 0), _request(1, 1), _request(2, 5), _request(3, 5)], _Gate(None))
    later = queue.by_seq[3]

    queue.commit(later)

    assert [slot for _, slot in dev.issued] == [0, 1, 5, 5]
    assert dev.issued[2][0] == dev.issued[3][0]  # one stream: the slot's copies land in order
    dev.land(0)  # copy 0
    dev.land(0)  # copy 2, the slot's first
    queue.pump()
    assert landed == [0, 2] and later.state == STARTED
    dev.land(0)
    dev.land(1)
    queue.pump()
    assert sorted(landed) == [0, 1, 2, 3] and later.state == LANDED


def test_free_engines_still_take_pending_copies_best_first() -> None:
    dev, landed = ScriptedDevice(), []
    queue = _queue(dev, landed)
    queue.submit([_request(0, 0), _request(1, 1), _request(2, 2, priority=3), _request(3, 3)], _Gate(None))
    queue.promote([queue.by_seq[2].request])  # now a demand: it goes before copy 3

    dev.land(1)
    queue.pump()

    assert dev.issued[-1] == (1, 2)
    assert queue.by_seq[3].state == PENDING


def test_a_serial_link_puts_every_copy_engine_on_one_stream(monkeypatch) -> None:
    """Copies on one stream run in commit order, the order the executor expects them to land in."""
    from types import SimpleNamespace

    import torch

    from sim.live import _Device

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: object())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: "compute stream")
    gpu = SimpleNamespace(type="cuda")
    serial = _Device(gpu, 3, serial_link=True)
    assert len(serial.copy) == 3 and len({id(s) for s in serial.copy}) == 1
    overlapping = _Device(gpu, 3)
    assert len({id(s) for s in overlapping.copy}) == 3
