"""The live clock: offloaded MoE decode on a real GPU, driven by the simulator's own decision objects.

``run_live`` replays a trace token by token with real tensors of a real model's shape: attention weights,
KV caches, norms, routers, shared experts and dense MLPs resident on the GPU; routed experts in pinned host
memory; a fixed number of GPU expert slots; host-to-device copies on one copy stream (on ``engines``
streams where the link lets copies overlap, see ``_Device``); compute on one stream with the kernels of
``sim.kernels``, each op (norm, attention, router, shared experts, a routed expert from its slot, a dense
MLP) replayed from its own CUDA graph as serving engines decode, so a layer costs the host a few
launches, not dozens (the eager executor of sessions 2-4 was host-bound at batch 1, and the lent VMs'
host speed moved by up to 2x); the residual adds are single eager kernels.
Which expert is fetched, into which slot, and what is a hit or a miss is decided by the very
``DecodeController`` (cache, eviction, policy) that the SimPy engine drives: this module only decides
*when*, as the real hardware dictates. Routing and predictions come from the trace; the predictor and
router kernels still run for their cost.

Host-side scheduling mirrors the simulator's link model (sim.link):

- every transfer the controller returns is *gated* by a CUDA event at its logical issue point (layer
  start, prediction ready, router, layer end): its copy stream waits for that event on the GPU, so a
  host running ahead of the GPU never starts a copy early, and no host polling delays it either;
- at most ``engines`` copies are committed (in flight or queued on the copy stream); started copies run
  to completion;
  waiting ones are started in ``(priority, seq)`` order, demand loads first, and a late prefetch needed
  by the router is promoted to demand priority; a copy into a slot whose previous copy has not landed
  waits outside the queue, as in the simulator;
- the MoE block runs shared experts, then hits in router order, then the other experts in the order
  their copies land (started copies in start order, then waiting ones in queue order);
- when the MoE block needs a copy that still waits for an engine, the host does not spin until one
  frees: it commits the copy behind the engine that frees first (the copy stream's order then starts it
  the moment that engine's last copy lands, as the simulator's link would) and goes on launching work;
  a copy into a slot whose previous copy is still in flight is committed behind that copy;
- the host polls copy completions (``transfer_finished``) between kernel launches and while it waits,
  stays at most one MoE layer ahead of the GPU, and waits for the GPU at each step's end (the next
  token's input is the previous one's output, which a real decoder samples on the host).

A copy into a slot needs no wait for the slot's last reader: the controller evicts only entries whose
layer has ended, and every gate is recorded on the compute stream after that layer's experts.

Per-step latency is measured with CUDA events on the compute stream (back to back: a step's latency is
the time from the previous step's end); the optional timeline records compute and copy intervals of the
first steps with extra events. Before each step's end-of-step wait the host takes a 40-us probe of its
own speed (``sim.host_speed.step_probe_s``), kept per token in ``SimResult.host_probe_s``: the lent VMs'
cores change speed inside runs, and the validation separates those steps. On ``device="cpu"`` the same
code runs synchronously (no streams, every copy lands when issued): a test vehicle whose hit/miss
decisions must equal the simulator's.

Simplifications (they change timing a little and are documented in the validation README): no embedding,
LM head or sampling (``step_overhead_s`` = 0 as in the simulator's default); a step of several tokens runs
attention at the mean context and each expert on the first ``n`` rows (no gather/scatter kernels), and
ops over fewer rows than the batch run eagerly; attention reads the context rounded up to a power of
two, masked (``sim.kernels.attention_length``: one graph per length).
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sim.cache import CacheConfig
from sim.config import RunConfig, SimOptions, trace_fingerprint
from sim.controller import HIT, LATE, DecodeController, FetchRequest, run_decisions
from sim.costs import CostModel
from sim.hardware import HardwareProfile
from sim.host_speed import step_probe_s
from sim.policies import LAYER_START, ROUTER, Policy, PolicySpec, make_policy
from sim.results import SimResult
from sim.simulation import check_compatible, measured_tokens, timing_estimates
from sim.workload import Workload
from traces.fileio import InputError
from traces.schema import ModelShape
from traces.trace import Trace

if TYPE_CHECKING:
    import torch

GIB = 1 << 30
#: GPU memory kept free for activations, cuBLAS workspaces and the allocator's slack
GPU_MARGIN_BYTES = GIB
#: host memory left to the rest of the machine when pinning expert buffers
HOST_MARGIN_BYTES = 4 * GIB


@dataclass(frozen=True)
class LiveOptions:
    """Knobs of the live executor that the simulator does not have.

    ``device``: "auto" (cuda if available), "cuda", "cuda:N" or "cpu" (synchronous test vehicle);
    ``host_budget_bytes``: pinned host memory for routed experts; beyond it, (layer, expert) pairs share
    host buffers modulo the buffer count (copies stay real copies of ``bytes_per_expert`` bytes);
    ``warmup_steps``: steps decoded once before the measured run (GPU warm-up; decisions then restart);
    ``seed``: random weights;
    ``timeline_compute``: with a timeline (``SimOptions.timeline_steps``), record the compute intervals
    too; False records the copies alone: the events around every op made the host 4-14% slower and
    changed the decode they recorded (session 8), two events per copy hardly do.
    """

    device: str = "auto"
    host_budget_bytes: int = 8 * GIB
    warmup_steps: int = 2
    seed: int = 0
    timeline_compute: bool = True


# ---------------------------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one live run needs, computed before anything is allocated."""

    slots: int
    slot_bytes: int
    resident_bytes: int
    host_buffers: int

    @property
    def gpu_bytes(self) -> int:
        return self.slots * self.slot_bytes + self.resident_bytes + GPU_MARGIN_BYTES

    @property
    def pinned_bytes(self) -> int:
        return self.host_buffers * self.slot_bytes


def resident_bytes(shape: ModelShape, batch: int, max_context: int, predictor: bool) -> int:
    """GPU bytes of everything but the routed-expert slots: attention, KV caches, norms, routers, shared
    experts, dense MLPs and (if used) one predictor MLP per MoE layer."""
    from_kernels = _attention_elements(shape, batch, max_context)
    h, e = shape.hidden_size, shape.num_experts
    per_moe = h * e + 3 * h * shape.shared_intermediate_size * (shape.num_shared_experts > 0)
    if predictor:
        per_moe += h * 2048 + 2048 * e + 6 * 2048 + e
    per_dense = 3 * h * shape.dense_intermediate_size
    elements = (
        shape.num_layers * from_kernels + shape.num_moe_layers * per_moe + len(shape.dense_layers) * per_dense
    )
    return elements * shape.dtype_bytes


def _attention_elements(shape: ModelShape, batch: int, max_context: int) -> int:
    heads = shape.num_attention_heads or max(1, shape.hidden_size // 128)
    kv_heads = shape.num_key_value_heads or heads
    head_dim = shape.head_dim or shape.hidden_size // heads
    h = shape.hidden_size
    weights = (heads + 2 * kv_heads) * head_dim * h + h * heads * head_dim + 2 * h
    return weights + 2 * batch * kv_heads * max_context * head_dim


def plan_memory(
    shape: ModelShape,
    slots: int,
    transfers: bool,
    batch: int,
    max_context: int,
    predictor: bool,
    host_budget_bytes: int,
) -> MemoryPlan:
    """How many slots and host buffers a run gets and what they weigh (``transfers``: any copy at all)."""
    all_experts = shape.num_moe_layers * shape.num_experts
    host = min(all_experts, max(1, host_budget_bytes // shape.bytes_per_expert)) if transfers else 0
    return MemoryPlan(
        slots, shape.bytes_per_expert, resident_bytes(shape, batch, max_context, predictor), host
    )


def check_memory(plan: MemoryPlan, shape: ModelShape, free_gpu_bytes: int, free_host_bytes: int) -> None:
    """Refuse, with one line, a run that would not fit (before allocating anything)."""
    if plan.gpu_bytes > free_gpu_bytes:
        raise InputError(
            shape.name,
            f"live run needs {plan.gpu_bytes / GIB:.1f} GiB of GPU memory ({plan.slots} expert slots x "
            f"{plan.slot_bytes / 2**20:.1f} MiB + {plan.resident_bytes / GIB:.1f} GiB resident weights and "
            f"KV cache + {GPU_MARGIN_BYTES / GIB:.0f} GiB margin) but only {free_gpu_bytes / GIB:.1f} GiB "
            "are free",
        )
    if plan.pinned_bytes + HOST_MARGIN_BYTES > free_host_bytes:
        raise InputError(
            shape.name,
            f"live run needs {plan.pinned_bytes / GIB:.1f} GiB of pinned host memory ({plan.host_buffers} "
            f"expert buffers) plus {HOST_MARGIN_BYTES / GIB:.0f} GiB margin but only "
            f"{free_host_bytes / GIB:.1f} GiB are available (lower --host-budget)",
        )


def available_host_bytes() -> int:
    """MemAvailable from /proc/meminfo (or a large number where it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


# ---------------------------------------------------------------------------------------------- device


class _Device:
    """Streams and events on a GPU; on the CPU a synchronous stand-in (markers are host timestamps).

    ``copy[e]`` is the CUDA stream of copy engine ``e``. On a serial link (copies never overlap) every
    engine shares one stream, so copies run in the order they are committed, which is the order the
    executor expects them to land in: on the H200, copies committed alternately to two streams did not
    run in commit order (one stream's queue ran on, later prefetches included, while the other's earlier
    demands waited), so the GPU waited for an expert whose copy came last while others had landed
    (session 6, cross-layer Qwen3: 1.4 ms idle in the first layer)."""

    def __init__(self, torch_device: torch.device, engines: int, serial_link: bool = False) -> None:
        import torch

        self.torch = torch
        self.device = torch_device
        self.cuda = torch_device.type == "cuda"
        if self.cuda:
            self.compute = torch.cuda.current_stream(torch_device)
            self.side = torch.cuda.Stream(device=torch_device)
            streams = [torch.cuda.Stream(device=torch_device) for _ in range(1 if serial_link else engines)]
            self.copy = [streams[e % len(streams)] for e in range(engines)]
        else:
            self.compute = self.side = None
            self.copy = [None] * engines

    def marker(self, stream: Any = None, timing: bool = False) -> Any:
        """An event recorded now on ``stream`` (default: compute); timing events only where elapsed
        times are read (they cost more)."""
        if not self.cuda:
            return time.perf_counter()
        event = self.torch.cuda.Event(enable_timing=timing)
        event.record(stream or self.compute)
        return event

    def passed(self, marker: Any) -> bool:
        return True if not self.cuda else marker.query()

    def wait(self, stream: Any, marker: Any) -> None:
        if self.cuda:
            stream.wait_event(marker)

    def use(self, stream: Any) -> None:
        """Make ``stream`` current (cheaper than the torch.cuda.stream context manager)."""
        if self.cuda:
            self.torch.cuda.set_stream(stream)

    def issue_copy(
        self, engine: int, dst: Any, src: Any, timing: bool = False, gate: Any = None
    ) -> tuple[Any, Any]:
        """Copy ``src`` (pinned host) into ``dst`` (a GPU slot) on copy engine ``engine``, not before the
        GPU passed ``gate``; returns the (start, done) markers (start is None unless ``timing``).
        Calibration times exactly this path."""
        if not self.cuda:
            start = time.perf_counter()
            dst.copy_(src)
            return start, time.perf_counter()
        stream = self.copy[engine]
        if gate is not None:
            stream.wait_event(gate)
        self.torch.cuda.set_stream(stream)
        start = self.marker(stream, True) if timing else None
        dst.copy_(src, non_blocking=True)
        done = self.marker(stream, timing)
        self.torch.cuda.set_stream(self.compute)
        return start, done

    def elapsed_s(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start

    def synchronize(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)


# ---------------------------------------------------------------------------------------------- copies

PENDING, STARTED, LANDED = range(3)


class _Gate:
    """A logical issue point's CUDA event; remembers once it has passed."""

    __slots__ = ("done", "marker")

    def __init__(self, marker: Any) -> None:
        self.marker = marker
        self.done = False


class _Transfer:
    __slots__ = (
        "done",
        "engine",
        "gate",
        "order",
        "previous",
        "priority",
        "request",
        "seq",
        "start",
        "state",
    )

    def __init__(self, request: FetchRequest, gate: _Gate, previous: _Transfer | None) -> None:
        self.request = request
        self.priority = request.priority
        self.seq = request.seq
        self.gate = gate
        self.previous = previous  # the last transfer into the same slot, until it has landed
        self.state = PENDING
        self.engine = -1
        self.order = -1  # commit order (the queue's transfer count when it was committed)
        self.start: Any = None
        self.done: Any = None


class _CopyQueue:
    """Host-side copy scheduling that mirrors sim.link (see the module docstring).

    Each engine (copy stream) holds a FIFO of committed copies: normally at most one, more when the MoE
    block commits a needed copy ahead of a free engine (``commit``); an engine is free when its FIFO is
    empty.
    """

    def __init__(
        self,
        dev: _Device,
        slots: list[torch.Tensor],
        host: list[torch.Tensor],
        on_landed: Callable[[FetchRequest], None],
        timeline: _LiveTimeline,
    ) -> None:
        self.dev = dev
        self.slots = slots
        self.host = host
        self.on_landed = on_landed
        self.timeline = timeline
        self.engines: list[deque[_Transfer]] = [deque() for _ in dev.copy]
        self.pending: list[tuple[int, int, _Transfer]] = []
        self.by_seq: dict[int, _Transfer] = {}
        self.last_in_slot: dict[int, _Transfer] = {}
        self.started: list[_Transfer] = []  # in commit order, until landed
        self.transfers = 0
        #: copies committed behind a busy engine by ``commit``
        self.early_commits = 0
        #: host seconds spent spinning for the GPU to catch up (the one-layer-ahead rule)
        self.gpu_wait_s = 0.0
        #: host seconds spent committing copies to copy streams (``_start``), of them while spinning, and
        #: handling landed copies (the simulator's ``copy.issue_s`` stands for these costs)
        self.issue_s = 0.0
        self.issue_in_wait_s = 0.0
        self.landing_s = 0.0
        self._spinning = False

    def submit(self, requests: list[FetchRequest], gate: _Gate) -> None:
        for request in requests:
            previous = self.last_in_slot.get(request.slot)
            transfer = _Transfer(request, gate, previous if previous and previous.state != LANDED else None)
            self.last_in_slot[request.slot] = transfer
            self.by_seq[request.seq] = transfer
            heapq.heappush(self.pending, (transfer.priority, transfer.seq, transfer))
            if transfer.previous is not None and transfer.priority < transfer.previous.priority:
                self.promote_transfer(transfer.previous, transfer.priority)
        self.pump()

    def promote(self, requests: list[FetchRequest]) -> None:
        """Late prefetches the router needs now go at demand priority."""
        for request in requests:
            transfer = self.by_seq.get(request.seq)
            if transfer is not None:
                self.promote_transfer(transfer, 0)

    def promote_transfer(self, transfer: _Transfer, priority: int) -> None:
        while transfer is not None and transfer.state == PENDING and priority < transfer.priority:
            transfer.priority = priority
            heapq.heappush(self.pending, (priority, transfer.seq, transfer))
            transfer = transfer.previous

    def pump(self) -> None:
        """Collect landed copies, then start waiting ones on free engines (best first, if eligible)."""
        passed = self.dev.passed
        free = False
        for fifo in self.engines:
            while fifo and passed(fifo[0].done):
                started = time.perf_counter()
                transfer = fifo.popleft()
                transfer.state = LANDED
                self.started.remove(transfer)
                self.by_seq.pop(transfer.seq, None)
                self.on_landed(transfer.request)
                self.landing_s += time.perf_counter() - started
            free = free or not fifo
        if not self.pending or not free:
            return
        skipped = []
        pending = self.pending
        while pending:
            engine = self._free_engine()
            if engine < 0:
                break
            priority, _, transfer = heapq.heappop(pending)
            if transfer.state != PENDING or priority != transfer.priority:
                continue  # stale heap entry
            if not self._eligible(transfer):
                skipped.append((priority, transfer.seq, transfer))
                continue
            self._start(transfer, engine)
        for item in skipped:
            heapq.heappush(pending, item)

    def _free_engine(self) -> int:
        for engine, fifo in enumerate(self.engines):
            if not fifo:
                return engine
        return -1

    def _eligible(self, transfer: _Transfer) -> bool:
        """A copy may take an engine once the previous copy into its slot has landed (its gate is
        enforced on the GPU: the copy stream waits for the gate's event)."""
        previous = transfer.previous
        if previous is not None:
            if previous.state != LANDED:
                return False
            transfer.previous = None
        return True

    def commit(self, transfer: _Transfer) -> None:
        """Put a copy the MoE block needs now on a copy stream without waiting for a free engine: behind
        the previous copy into its slot if that one is still in flight (stream order keeps the slot's
        copies in order), else behind the engine expected to free first (fewest committed copies, then
        the oldest last commit: on a serial link copies move in commit order)."""
        if transfer.state != PENDING:
            return
        self.pump()
        if transfer.state != PENDING:
            return
        previous = transfer.previous
        if previous is not None and previous.state == PENDING:
            self.commit(previous)
        if previous is not None and previous.state == STARTED:
            engine = previous.engine
        else:
            engine = min(
                range(len(self.engines)),
                key=lambda e: (len(self.engines[e]), self.engines[e][-1].order if self.engines[e] else -1),
            )
        transfer.previous = None
        if self.engines[engine]:
            self.early_commits += 1
        self._start(transfer, engine)

    def _start(self, transfer: _Transfer, engine: int) -> None:
        started = time.perf_counter()
        request = transfer.request
        transfer.start, transfer.done = self.dev.issue_copy(
            engine,
            self.slots[request.slot],
            self.host[request.key % len(self.host)],
            self.timeline.on,
            transfer.gate.marker,
        )
        transfer.state = STARTED
        transfer.engine = engine
        transfer.order = self.transfers
        self.engines[engine].append(transfer)
        self.started.append(transfer)
        self.transfers += 1
        if self.timeline.on:
            self.timeline.copy(transfer)
        took = time.perf_counter() - started
        self.issue_s += took
        if self._spinning:
            self.issue_in_wait_s += took

    def wait_until(self, marker: Any) -> None:
        """Spin (polling) until the GPU passed ``marker`` (counted in ``gpu_wait_s``)."""
        dev = self.dev
        if dev.passed(marker):
            return
        started = time.perf_counter()
        self._spinning = True
        while not dev.passed(marker):
            self.pump()
        self._spinning = False
        self.gpu_wait_s += time.perf_counter() - started

    def drain(self) -> None:
        while self.pending or any(self.engines):
            self.pump()

    def landing_order(self, requests: list[FetchRequest]) -> list[int]:
        """Indices of ``requests`` in the order their copies will land."""
        started = {t.seq: i for i, t in enumerate(self.started)}

        def rank(i: int) -> tuple[int, int, int]:
            transfer = self.by_seq.get(requests[i].seq)
            if transfer is None:
                return (-1, 0, 0)  # landed meanwhile
            if transfer.state == STARTED:
                return (0, started[transfer.seq], 0)
            return (1, transfer.priority, transfer.seq)

        return sorted(range(len(requests)), key=rank)


# ---------------------------------------------------------------------------------------------- timeline


class _LiveTimeline:
    """Compute and copy intervals of the first steps, as markers resolved to seconds at the end
    (``compute``: False records the copies alone)."""

    def __init__(self, dev: _Device, steps: int, limit: int, compute: bool = True) -> None:
        self.dev = dev
        self.steps = steps
        self.limit = limit
        self.compute = compute
        self.on = steps > 0
        self.origin: Any = None
        self.marks: list[tuple[str, str, Any, Any, int, int]] = []
        self.copies: list[_Transfer] = []

    @property
    def compute_on(self) -> bool:
        """Whether the ops of the current step are recorded (events around each)."""
        return self.on and self.compute

    def op(self, lane: str, kind: str, start: Any, end: Any, layer: int = -1, expert: int = -1) -> None:
        if self.compute_on and len(self.marks) + len(self.copies) < self.limit:
            self.marks.append((lane, kind, start, end, layer, expert))

    def copy(self, transfer: _Transfer) -> None:
        if len(self.marks) + len(self.copies) < self.limit:
            self.copies.append(transfer)

    def intervals(self) -> list[tuple[str, str, float, float, int, int]] | None:
        if self.steps <= 0:
            return None
        el = self.dev.elapsed_s
        out = [
            (lane, kind, el(self.origin, a), el(self.origin, b), j, e)
            for lane, kind, a, b, j, e in self.marks
        ]
        for t in self.copies:
            r = t.request
            kind = "demand" if r.demand else ("prefetch" if t.priority else "late prefetch")
            out.append(
                (
                    f"copy{t.engine}",
                    kind,
                    el(self.origin, t.start),
                    el(self.origin, t.done),
                    r.layer,
                    r.expert,
                )
            )
        return sorted(out, key=lambda i: (i[2], i[0]))


# ---------------------------------------------------------------------------------------------- the model


class _Op:
    """One decode op over the model's in-place tensors, ``fn(rows)`` on their first ``rows`` rows:
    replayed from its CUDA graph when a step fills the batch, called eagerly for fewer rows."""

    __slots__ = ("batch", "fn", "replay")

    def __init__(self, fn: Callable[[int], Any], batch: int, graphs: Any) -> None:
        self.fn = fn
        self.batch = batch
        self.replay = graphs.capture(lambda: fn(batch))

    def __call__(self, rows: int) -> None:
        if rows == self.batch:
            self.replay()
        else:
            self.fn(rows)


class LiveModel:
    """One model shape's GPU-side state: weights, KV caches, expert slots and pinned host experts, and
    its decode ops (``_Op``: one CUDA graph each) over tensors that stay in place: the hidden state
    ``x``, its normalised copies ``xn`` (attention input) and ``hn`` (MoE input), the attention output
    and the MoE block's sum ``out``.

    Built once per shape with the most slots any run will need; runs use a prefix of the slots.
    """

    def __init__(
        self,
        shape: ModelShape,
        slots: int,
        host_buffers: int,
        batch: int,
        max_context: int,
        predictor: bool,
        engines: int,
        device: torch.device,
        seed: int = 0,
        serial_link: bool = False,
    ) -> None:
        import torch

        from sim import kernels

        self.shape = shape
        self.torch = torch
        self.dev = _Device(device, engines, serial_link)
        self.batch = batch
        self.max_context = max_context
        dt = kernels.torch_dtype(shape)
        gen = torch.Generator(device=device).manual_seed(seed)
        h = shape.hidden_size
        moe = set(shape.moe_layers)

        def rand(*size: int) -> torch.Tensor:
            return (torch.randn(*size, generator=gen, device=device) * h**-0.5).to(dt)

        self.attention = [
            kernels.new_attention(shape, batch, max_context, device, gen) for _ in range(shape.num_layers)
        ]
        self.gates = [rand(shape.num_experts, h) for _ in shape.moe_layers]
        self.shared = (
            [rand(kernels.expert_elements(h, shape.shared_intermediate_size)) for _ in shape.moe_layers]
            if shape.num_shared_experts
            else []
        )
        self.dense = {
            d: rand(
                kernels.expert_elements(h, shape.dense_intermediate_size or shape.expert_intermediate_size)
            )
            for d in range(shape.num_layers)
            if d not in moe
        }
        elements = kernels.expert_elements(h, shape.expert_intermediate_size)
        self.slots = torch.empty(max(slots, 1), elements, dtype=dt, device=device)
        for chunk in self.slots.split(max(1, GIB // (elements * 2))):
            chunk.uniform_(-(h**-0.5), h**-0.5, generator=gen)
        self.host = torch.empty(max(host_buffers, 1), elements, dtype=dt, pin_memory=self.dev.cuda)
        for i in range(self.host.shape[0]):
            self.host[i].copy_(self.slots[i % self.slots.shape[0]])
        # one view per slot and host buffer, made once: indexing per copy costs host time
        self.slot_views = list(self.slots.unbind(0))
        self.host_views = list(self.host.unbind(0))
        self.x, self.xn, self.hn, self.attn_out, self.out = (rand(batch, h) for _ in range(5))
        self.at = kernels.Positions(max_context, device)
        with torch.inference_mode():
            self._capture_ops(kernels, predictor)
        self.dev.synchronize()

    def _capture_ops(self, kernels: Any, predictor: bool) -> None:
        """The decode ops, captured: per layer its norms and one attention per attention length, per MoE
        layer its router and shared experts, per dense layer its MLP, per slot its routed expert; on
        the side stream (own pool: it runs beside the compute stream) the predictors."""
        shape, batch = self.shape, self.batch
        h, inter = shape.hidden_size, shape.expert_intermediate_size
        x, xn, hn, attn_out, out, at = self.x, self.xn, self.hn, self.attn_out, self.out, self.at
        graphs = kernels.GraphPool(self.dev.device)
        side = kernels.GraphPool(self.dev.device)

        def op(fn: Callable[[int], Any], pool: Any = graphs) -> _Op:
            return _Op(fn, batch, pool)

        lengths = kernels.attention_lengths(self.max_context)
        self.input_norm, self.post_norm, self.attend = [], [], []
        for layer in self.attention:
            self.input_norm.append(op(lambda n, w=layer.input_norm: kernels.norm_into(xn[:n], x[:n], w)))
            self.post_norm.append(op(lambda n, w=layer.post_norm: kernels.norm_into(hn[:n], x[:n], w)))
            self.attend.append(
                {
                    length: op(
                        lambda n, a=layer, m=length: attn_out[:n].copy_(
                            kernels.attention(xn[:n], a, shape, at, m)
                        )
                    )
                    for length in lengths
                }
            )
        self.route = [
            op(lambda n, g=gate: kernels.router_scores(hn[:n], g, shape.top_k)) for gate in self.gates
        ]
        # the cross-layer "gate" predictor: the next layer's router on the side stream
        self.gate_predict = [
            op(lambda n, g=gate: kernels.router_scores(hn[:n], g, shape.top_k), side) for gate in self.gates
        ]
        shared_inter = shape.shared_intermediate_size
        self.shared_experts = [
            op(lambda n, w=w: out[:n].copy_(kernels.swiglu(hn[:n], w, h, shared_inter))) for w in self.shared
        ]
        dense_inter = shape.dense_intermediate_size or inter
        self.dense_mlp = {
            d: op(lambda n, w=w: kernels.expert_into(x[:n], hn[:n], w, h, dense_inter, 1.0))
            for d, w in self.dense.items()
        }
        self.expert = [
            op(lambda n, w=w: kernels.expert_into(out[:n], hn[:n], w, h, inter, 1.0)) for w in self.slot_views
        ]
        predictors = (
            [kernels.new_predictor(shape, self.dev.device) for _ in shape.moe_layers] if predictor else []
        )
        # over the attention input in place (a deployed predictor reads the hidden state where it lies)
        self.predict = [op(lambda n, p=p: p(xn[:n]), side) for p in predictors]


def open_model(
    shape: ModelShape,
    slots: int,
    transfers: bool,
    batch: int,
    max_context: int,
    predictor: bool,
    engines: int,
    live: LiveOptions,
    serial_link: bool = False,
) -> LiveModel:
    """Plan memory, refuse with one line if it does not fit, then build the LiveModel (``engines`` copy
    engines, on one copy stream if ``serial_link``: the profile's ``copy.serial``)."""
    from traces.collect import resolve_device  # the one --device rule of every command (imports torch)

    device = resolve_device(live.device)
    plan = plan_memory(shape, slots, transfers, batch, max_context, predictor, live.host_budget_bytes)
    check_memory(plan, shape, free_gpu_bytes(device), available_host_bytes())
    return LiveModel(
        shape,
        plan.slots,
        plan.host_buffers,
        batch,
        max_context,
        predictor,
        engines,
        device,
        live.seed,
        serial_link,
    )


def free_gpu_bytes(device: torch.device) -> int:
    """Memory of ``device`` a new allocation can have: the driver's free memory plus what torch's caching
    allocator holds unused (a model just dropped leaves its memory there: session 8's calibration then
    ran a repeated Mixtral measurement truncated); a practically unlimited amount on the CPU."""
    import torch

    if device.type != "cuda":
        return 1 << 50
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(torch.cuda.mem_get_info(device)[0]) + cached


# ---------------------------------------------------------------------------------------------- the run


def prepare(
    trace: Trace, shape: ModelShape, policy: PolicySpec, cache: CacheConfig, options: SimOptions
) -> tuple[Workload, Policy, int]:
    """Workload, policy object and the number of slots the run uses (a clockless dry run of the
    decisions: in no-cache mode the staging slots in use at once)."""
    check_compatible(trace, shape)
    if options.predictor_device == "cpu":
        raise InputError(policy.label(), "the live executor runs predictors on the GPU only")
    if options.predictor_s not in (None, 0.0):
        raise InputError(
            policy.label(), "the live executor runs the real predictor: predictor_s may only be 0 (none runs)"
        )
    if options.host_memory != "pinned":
        raise InputError(policy.label(), "the live executor copies from pinned host memory only")
    policy_obj = make_policy(policy, trace.top_k)
    workload = Workload(trace, options.batching(), policy_obj.sources)
    dry = DecodeController(workload, make_policy(policy, trace.top_k), cache)
    run_decisions(dry)
    slots = shape.num_moe_layers * shape.num_experts if policy_obj.resident else dry.cache.num_slots
    return workload, policy_obj, slots


def run_live(
    model: LiveModel,
    trace: Trace,
    hardware: HardwareProfile,
    cache: CacheConfig,
    policy: PolicySpec,
    options: SimOptions | None = None,
    live: LiveOptions | None = None,
    before_decode: Callable[[], None] | None = None,
) -> SimResult:
    """Decode ``trace`` on ``model`` with one cache and policy; returns a SimResult with clock="live".

    The result's config equals the simulator's for the same inputs (same key), so the two line up.
    ``before_decode``, if given, is called right before the measured decode's first step (after the
    warm-up and the set-up): work to put beside the decode, such as calibration's chain of copies.
    """
    options = options or SimOptions()
    live = live or LiveOptions()
    started = time.perf_counter()
    shape = model.shape
    workload, policy_obj, slots = prepare(trace, shape, policy, cache, options)
    decode_mask = measured_tokens(workload, options)  # refuses a warm-up that leaves nothing to measure
    if slots > model.slots.shape[0]:
        raise InputError(shape.name, f"run needs {slots} slots but the live model has {model.slots.shape[0]}")
    costs = CostModel(shape, hardware, options.compute_scale)
    estimates = timing_estimates(policy_obj, costs, options)
    torch = model.torch
    with torch.inference_mode(), _no_garbage_collection():
        if live.warmup_steps:
            warm = DecodeController(workload, make_policy(policy, trace.top_k), cache, estimates)
            _Decode(model, warm, options, 0, live.warmup_steps).run()
        controller = DecodeController(workload, policy_obj, cache, estimates)
        decode = _Decode(
            model, controller, options, options.timeline_steps, workload.num_steps, live.timeline_compute
        )
        if before_decode is not None:
            before_decode()
        loop_started = time.perf_counter()
        step_latency, stall = decode.run()
        host_loop_s = time.perf_counter() - loop_started
    counters = controller.finish()
    step_of_token = workload.step_of_token
    total = float(step_latency.sum())
    copy = hardware.copy
    return SimResult(
        config=RunConfig(trace_fingerprint(trace), shape, hardware, cache, policy, options),
        clock="live",
        token_latency_s=step_latency[step_of_token] if len(step_of_token) else np.zeros(0),
        decode_token=decode_mask,
        step_latency_s=step_latency,
        stall_s=stall,
        hits=np.asarray(counters.hits, dtype=np.int64),
        late=np.asarray(counters.late, dtype=np.int64),
        misses=np.asarray(counters.misses, dtype=np.int64),
        total_s=total,
        compute_s=total - float(stall.sum()),
        bytes_moved=float(decode.queue.transfers * shape.bytes_per_expert),
        link_busy_s=float("nan"),
        link_capacity_bps=copy.shared_capacity_bps(shape.bytes_per_expert, True),
        counters={
            "demand_loads": counters.demand_loads,
            "prefetches_issued": counters.prefetches_issued,
            "prefetches_present": counters.prefetches_present,
            "prefetches_dropped": counters.prefetches_dropped,
            "wasted": counters.wasted,
            "evictions": counters.evictions,
            "transfers": counters.transfers,
            "cache_slots": controller.cache.num_slots,
            "slots_used": counters.slots_used,
            "live_transfers": decode.queue.transfers,
            "copies_committed_early": decode.queue.early_commits,
            # where the host thread's time went over the whole measured decode (warm-up steps included),
            # in microseconds: spinning for the GPU to catch up (the one-layer-ahead rule) and the loop in
            # all (the rest is the host's own work and the drain)
            "host_wait_gpu_us": round(decode.queue.gpu_wait_s * 1e6),
            "host_loop_us": round(host_loop_s * 1e6),
            # of the host's time, committing copies to copy streams (of it, while spinning for the GPU)
            # and handling landed copies
            "host_issue_us": round(decode.queue.issue_s * 1e6),
            "host_issue_in_wait_us": round(decode.queue.issue_in_wait_s * 1e6),
            "host_landing_us": round(decode.queue.landing_s * 1e6),
        },
        timeline=decode.timeline.intervals(),
        wall_s=time.perf_counter() - started,
        host_probe_s=np.asarray(decode.host_probe_s)[step_of_token] if len(step_of_token) else np.zeros(0),
    )


@contextlib.contextmanager
def _no_garbage_collection() -> Iterator[None]:
    """Collect once, then keep Python's cyclic garbage collector off while decoding: the loop is
    host-bound, and a collection pass over the controller's objects lands in some step's latency as a
    spike that no simulator models (serving engines freeze the collector for the same reason)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Decode:
    """One pass of the decode loop over steps ``[0, num_steps)`` with one controller."""

    def __init__(
        self,
        model: LiveModel,
        controller: DecodeController,
        options: SimOptions,
        timeline_steps: int,
        num_steps: int,
        timeline_compute: bool = True,
    ) -> None:
        self.model = model
        #: whether the predictor kernel runs (not for a free predictor), and on the side stream
        self.runs_predictor = options.predictor_s != 0.0
        self.predictor_beside = options.predictor_device == "gpu-side"
        self.controller = controller
        self.num_steps = min(num_steps, controller.workload.num_steps)
        self.dev = model.dev
        self.timeline = _LiveTimeline(
            self.dev, timeline_steps, options.max_timeline_intervals, timeline_compute
        )
        self.queue = _CopyQueue(
            self.dev, model.slot_views, model.host_views, controller.transfer_finished, self.timeline
        )
        # per MoE layer: compute-stream markers around each wait for a copy (recorded with the timeline)
        self.waits: list[list[tuple[Any, Any]]] = [[] for _ in range(model.shape.num_moe_layers)]
        #: per step: the host core's speed right before it (sim.host_speed.step_probe_s)
        self.host_probe_s: list[float] = []

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        """Decode; returns per-step latency and per-MoE-layer copy-wait stall (seconds; NaN where the
        timeline was off, since measuring waits costs events)."""
        from sim import kernels

        model, controller, dev, queue = self.model, self.controller, self.dev, self.queue
        torch = model.torch
        shape = model.shape
        policy = controller.policy
        issue_point = policy.issue_point
        mlp = policy.predictor_kind == "mlp"
        gate_pred = policy.predictor_kind == "gate"
        moe_index = {d: j for j, d in enumerate(shape.moe_layers)}
        num_moe = shape.num_moe_layers
        submit, pump, timeline = queue.submit, queue.pump, self.timeline
        marker = dev.marker
        x, attn_out, out = model.x, model.attn_out, model.out
        gen = torch.Generator(device=dev.device).manual_seed(1)
        x.copy_(torch.randn(x.shape, generator=gen, device=dev.device) * 0.1)
        boundaries = [marker(timing=True)]
        timeline.origin = boundaries[0]
        router_marks: list[Any] = []
        probes = self.host_probe_s
        for s in range(self.num_steps):
            if timeline.on and s >= timeline.steps:
                timeline.on = False
            tl = timeline.compute_on  # events around the ops (the copies': timeline.on)
            probes.append(step_probe_s())  # the host core's speed level (mostly behind the GPU's tail)
            queue.wait_until(boundaries[-1])  # the next token needs the previous one (as sampling would)
            requests = controller.begin_step(s)
            if requests:
                submit(requests, _Gate(boundaries[-1]))
            step = controller.step
            n = step.num_tokens
            context = max(1, min(model.max_context, step.context_total // n))
            model.at.set(context)
            length = kernels.attention_length(context, model.max_context)
            for d in range(shape.num_layers):
                j = moe_index.get(d)
                if j is None:
                    t0 = marker(timing=True) if tl else None
                    model.input_norm[d](n)
                    model.attend[d][length](n)
                    x[:n].add_(attn_out[:n])
                    model.post_norm[d](n)
                    model.dense_mlp[d](n)
                    if tl:
                        timeline.op("compute", "dense layer", t0, marker(timing=True))
                    pump()
                    continue
                if len(router_marks) >= 2:
                    queue.wait_until(router_marks[-2])  # stay at most one MoE layer ahead of the GPU
                t0 = marker(timing=True) if tl else None
                model.input_norm[d](n)
                ls = _Gate(marker(timing=tl)) if tl or issue_point == LAYER_START else None
                requests = controller.layer_start(j)
                if requests:
                    ls = ls or _Gate(marker())
                    submit(requests, ls)
                if tl:
                    timeline.op("compute", "norm", t0, ls.marker, j)
                if issue_point == LAYER_START:
                    pred = self._predict(model.predict[j], n, ls, j) if mlp else ls
                    requests = controller.prediction_ready(j)
                    if requests:
                        submit(requests, pred)
                model.attend[d][length](n)
                x[:n].add_(attn_out[:n])
                t1 = marker(timing=True) if tl else None
                pump()
                model.post_norm[d](n)
                model.route[j](n)
                rt = _Gate(marker(timing=tl))
                router_marks.append(rt.marker)
                if tl:
                    timeline.op("compute", "attention", ls.marker, t1, j)
                    timeline.op("compute", "router", t1, rt.marker, j)
                decision = controller.router(j)
                if decision.late:
                    queue.promote(decision.late)
                if decision.demands:
                    submit(decision.demands, rt)
                if decision.prefetches:
                    submit(decision.prefetches, rt)
                if issue_point == ROUTER and j + 1 < num_moe:
                    pred = self._predict(model.gate_predict[j + 1], n, rt, j + 1) if gate_pred else rt
                    requests = controller.prediction_ready(j + 1)
                    if requests:
                        submit(requests, pred)
                if model.shared_experts:
                    t0 = marker(timing=True) if tl else None
                    model.shared_experts[j](n)
                    if tl:
                        timeline.op("compute", "shared experts", t0, marker(timing=True), j)
                else:
                    out[:n].zero_()
                status = decision.status
                for i, st in enumerate(status):
                    if st == HIT:
                        self._expert(decision, i, j)
                if len(decision.demands) + len(decision.late):
                    self._waiting_experts(decision, j)
                x[:n].add_(out[:n])
                requests = controller.layer_end(j)
                if requests:
                    submit(requests, _Gate(marker()))
            controller.end_step()
            boundaries.append(marker(timing=True))
        queue.drain()
        dev.synchronize()
        el = dev.elapsed_s
        steps = np.array([el(a, b) for a, b in itertools.pairwise(boundaries)], dtype=np.float64)
        measured = self.timeline.steps >= self.num_steps and self.timeline.compute
        stall = np.array(
            [sum(el(a, b) for a, b in w) if measured else float("nan") for w in self.waits], dtype=np.float64
        )
        return steps, stall

    def _predict(self, predictor: _Op, n: int, after: _Gate, j: int) -> _Gate:
        """Launch ``predictor`` (for MoE layer ``j``) once the compute stream passed ``after``, in line on
        the compute stream or beside it on the side stream (``SimOptions.predictor_device``), or not at
        all (``predictor_s`` = 0); returns the gate its predicted copies wait for."""
        if not self.runs_predictor:
            return after
        dev, tl = self.dev, self.timeline.compute_on
        side = self.predictor_beside
        stream = dev.side if side else dev.compute
        if side:
            dev.wait(stream, after.marker)
            dev.use(stream)
        predictor(n)
        done = _Gate(dev.marker(stream, timing=tl))
        if side:
            dev.use(dev.compute)
        if tl:
            self.timeline.op("predictor", "predict", after.marker, done.marker, j)
        return done

    def _waiting_experts(self, decision: Any, j: int) -> None:
        """Experts whose copies have not landed, in landing order, each behind a wait for its copy."""
        queue, dev, tl = self.queue, self.dev, self.timeline.compute_on
        waiting = [i for i, st in enumerate(decision.status) if st != HIT]
        requests = _requests_of(decision, waiting)
        for w in queue.landing_order(requests):
            i = waiting[w]
            transfer = queue.by_seq.get(requests[w].seq)
            if transfer is not None:
                queue.commit(transfer)
                if transfer.state != LANDED:
                    before = dev.marker(timing=True) if tl else None
                    dev.wait(dev.compute, transfer.done)
                    if tl:
                        self.waits[j].append((before, dev.marker(timing=True)))
            self._expert(decision, i, j)

    def _expert(self, decision: Any, i: int, j: int) -> None:
        """Routed expert ``i`` of the decision, from its slot, on the rows of the tokens it serves."""
        dev, timeline = self.dev, self.timeline
        t0 = dev.marker(timing=True) if timeline.compute_on else None
        self.model.expert[decision.slots[i]](decision.tokens[i])
        if timeline.compute_on:
            timeline.op("compute", "expert", t0, dev.marker(timing=True), j, decision.experts[i])
        self.queue.pump()


def _requests_of(decision: Any, waiting: list[int]) -> list[FetchRequest]:
    """The outstanding request of each non-hit expert (late: its prefetch; miss: its demand load)."""
    late = iter(decision.late)
    demands = iter(decision.demands)
    return [next(late) if decision.status[i] == LATE else next(demands) for i in waiting]


__all__ = [
    "LiveModel",
    "LiveOptions",
    "MemoryPlan",
    "check_memory",
    "plan_memory",
    "prepare",
    "run_live",
]
