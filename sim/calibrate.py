"""Calibration: measure on a GPU what the simulator needs and write it as a hardware profile.

Measured (CUDA events, warm-up, repetitions, medians; inputs rotated over more bytes than the L2 cache so
that repeated runs do not measure the cache): host-to-device copy time over sizes from pinned and
pageable memory; several copies at once on separate streams (do the copy engines share one PCIe link?);
and, for each model shape, the decode ops of ``sim.kernels`` (the very functions the live executor runs):
attention against context length and batch, RMS norm, router, residual add, routed expert SwiGLU against
token count, shared expert and dense MLP, the paper's predictor MLP on the GPU and on the CPU; plus the
launch overhead of a trivial kernel, a large matmul's rate and device memory bandwidth.

Pure logic (fitting, conversion to the profile) is separate from measurement and testable on the CPU;
the measurement functions accept ``device=cpu`` with tiny sizes for smoke tests. torch is imported only
inside the measurement functions, so importing this module stays light.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from sim.costs import CostModel
from sim.hardware import GPU_TIMED_OPS
from sim.host_speed import HostGate, fast_steps, step_probe_s
from sim.stream_delays import COPIES, StreamDelays, measure_stream_delays, sleep_cycles_per_s
from traces.schema import ModelShape

T = TypeVar("T")

if TYPE_CHECKING:
    from sim.hardware import HardwareProfile

KIB = 1024
MIB = 1024 * 1024
GIB = 1024 * MIB
#: Copy sizes measured by default (the shapes' own expert sizes are added).
DEFAULT_COPY_SIZES = (64 * KIB, 256 * KIB, MIB, 4 * MIB, 16 * MIB, 64 * MIB, 256 * MIB)
#: Attention contexts measured: every power of two, the key lengths the graphed live executor runs
#: (sim.kernels.attention_length); at length 1 SDPA took 44-78 us on the H200, at 64 37-49 us, so
#: interpolating between the two overstated every short context.
DEFAULT_CONTEXTS = tuple(1 << i for i in range(14))  # 1 .. 8192
DEFAULT_BATCHES = (1, 2, 4, 8)
DEFAULT_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128)
#: Bytes to rotate through so repeated kernels do not hit a warm L2 (H200: 60 MB).
ROTATE_BYTES = 256 * MIB
MAX_ROTATION = 64
#: context of the attention that the predictor's share of the GPU is measured beside (the grids decode at
#: tens of positions)
PREDICTOR_SHARE_CONTEXT = 64
#: largest copy of the chain that ops are timed beside (Mixtral's 336 MiB experts: one copy would outlast
#: most bursts many times over; the link is as busy with smaller ones)
COPY_CHAIN_MAX_BYTES = 32 * MIB


@dataclass(frozen=True)
class Effort:
    """How hard to measure: repetitions and the sizes swept."""

    warmup: int = 5
    reps: int = 30
    inner: int = 10
    copy_sizes: tuple[int, ...] = DEFAULT_COPY_SIZES
    contexts: tuple[int, ...] = DEFAULT_CONTEXTS
    batches: tuple[int, ...] = DEFAULT_BATCHES
    tokens: tuple[int, ...] = DEFAULT_TOKENS
    concurrency_streams: tuple[int, ...] = (1, 2, 3, 4)
    concurrency_size_bytes: int = 64 * MIB
    matmul_n: int = 8192
    bandwidth_bytes: int = GIB
    rotate_bytes: int = ROTATE_BYTES

    @classmethod
    def smoke(cls) -> Effort:
        """Tiny sizes and few repetitions: checks the code path on a CPU in seconds."""
        return cls(
            warmup=1,
            reps=3,
            inner=2,
            copy_sizes=(4 * KIB, 32 * MIB),  # far apart: on a loaded CPU even 4 KiB and 4 MiB inverted
            contexts=(1, 16),
            batches=(1, 2),
            tokens=(1, 4),
            concurrency_streams=(1, 2),
            concurrency_size_bytes=64 * KIB,
            matmul_n=64,
            bandwidth_bytes=MIB,
            rotate_bytes=0,
        )


@dataclass
class CopyPoint:
    """Median time of one host-to-device copy of ``size_bytes`` (pageable is None when not measured)."""

    size_bytes: int
    pinned_s: float
    pageable_s: float | None = None


@dataclass
class ConcurrencyPoint:
    """``streams`` copies of ``size_bytes`` each, started together on separate streams: time until all
    end, and until the first ends (about ``total_s / streams`` when the copies run one after the other,
    about ``total_s`` when they share the link)."""

    streams: int
    size_bytes: int
    total_s: float
    first_done_s: float | None = None

    @property
    def aggregate_gbps(self) -> float:
        return self.streams * self.size_bytes / self.total_s / 1e9


@dataclass
class ShapeTimings:
    """Per-call medians of the decode ops of one model shape (seconds; curves indexed like their axes)."""

    shape: str
    batches: list[int]
    contexts: list[int]
    tokens: list[int]
    attention_s: list[list[float]]  # [batch][context]
    norm_s: list[float]  # [batch]
    router_s: list[float]  # [batch]
    add_s: list[float]  # [batch] one residual add
    expert_s: list[float]  # [tokens]
    shared_s: list[float] = field(default_factory=list)  # [tokens], empty without shared experts
    dense_s: list[float] = field(default_factory=list)  # [tokens], empty without dense layers
    predictor_gpu_s: list[float] = field(default_factory=list)  # [batch]
    predictor_cpu_s: list[float] = field(default_factory=list)  # [batch]
    #: GPU time alone of each op of sim.hardware.GPU_TIMED_OPS (launches hidden behind a sleeping
    #: kernel), indexed like its op curve above; empty on the CPU and in calibrations that predate it
    gpu_s: dict[str, Any] = field(default_factory=dict)
    #: the host's launch time alone of the same calls (timed while the sleeping kernel held the GPU)
    host_s: dict[str, Any] = field(default_factory=dict)
    #: the GPU time of the same calls while host-to-device copies are in flight (``<op>_copying``)
    copying_s: dict[str, Any] = field(default_factory=dict)
    #: the share of a side-stream predictor's GPU time that the compute stream loses while it runs
    #: beside (``measure_predictor_share``); None where not measured
    predictor_share: float | None = None


@dataclass
class HostRun:
    """One live decode of calibration's host-cost step (a model, maybe truncated, on a synthetic trace, both
    rebuilt from code), kept so that the host costs can be fitted again offline, without a GPU, after
    the simulator's model changes (``fit_host_costs``). ``kind``: "layer" (every expert resident),
    "copying" (the same with the link kept busy all along by a chain of copies on a stream of its own,
    decoded on the same model right after its "layer" run) or "copy" (oracle prefetching into a
    quarter-size cache)."""

    shape: str
    kind: str
    step_latency_s: list[float]
    #: per step, the host core's speed right before it (sim.host_speed.step_probe_s; empty in runs
    #: kept before the probes existed)
    host_probe_s: list[float] = field(default_factory=list)
    #: the host thread's busy time per step (its loop less its waits for the GPU; 0 in runs kept
    #: before it was measured)
    host_busy_s: float = 0.0
    #: MoE layers of the (maybe truncated) model it decoded
    moe_layers: int = 4
    #: the live run's counters (sim.live.run_live: copies, where the host thread's time went; empty in
    #: runs kept before session 6)
    counters: dict[str, float] = field(default_factory=dict)


@dataclass
class Calibration:
    """Everything one calibration run measured, with where and when."""

    gpu: str
    driver: str
    torch_version: str
    cuda_version: str
    date: str
    device: str
    host: str
    copy_engines: int | None
    launch_overhead_s: float
    matmul_tflops: float
    device_bandwidth_gbps: float
    copies: list[CopyPoint]
    concurrency: list[ConcurrencyPoint]
    shapes: dict[str, ShapeTimings]
    notes: str = ""
    #: host time per copy of the live executor, fitted end to end (see fit_host_costs)
    issue_s: float = 0.0
    #: per shape: host time per MoE layer of the live decode loop beyond its ops (see fit_host_costs)
    host_layer_s: dict[str, float] = field(default_factory=dict)
    gpu_layer_s: dict[str, float] = field(default_factory=dict)
    #: per shape: the factor on its ops' GPU times (``<op>_gpu``, ``<op>_copying``) where its resident run
    #: was faster than its ops timed one at a time allow, even with no gap between them (see fit_host_costs)
    gpu_scale: dict[str, float] = field(default_factory=dict)
    #: per shape: the factor on its ``<op>_copying`` curves at which the simulated "copying" run matches
    #: the live one (see fit_host_costs; a shape without such a run keeps its curves as measured)
    copying_scale: dict[str, float] = field(default_factory=dict)
    #: the live runs those two were fitted to
    host_runs: list[HostRun] = field(default_factory=list)
    #: the host core's fast-level probe (sim.host_speed; 0: not gated) and every gated phase:
    #: {"phase", "probe_s", "after_s", "waited_s", "attempts", "timed_out", "slow_after"}
    host_probe_s: float = 0.0
    host_gates: list[dict[str, Any]] = field(default_factory=list)
    #: the hand-overs between the executor's streams (sim.stream_delays); None on the CPU and in
    #: calibrations that predate them
    stream_delays: StreamDelays | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Calibration:
        doc = dict(doc)
        doc["copies"] = [CopyPoint(**c) for c in doc["copies"]]
        doc["concurrency"] = [ConcurrencyPoint(**c) for c in doc["concurrency"]]
        doc["shapes"] = {k: ShapeTimings(**v) for k, v in doc["shapes"].items()}
        doc["host_runs"] = [HostRun(**r) for r in doc.get("host_runs", [])]
        delays = doc.get("stream_delays")
        doc["stream_delays"] = StreamDelays(**delays) if delays else None
        return cls(**doc)


# ---------------------------------------------------------------------------------------------- fitting


#: copies a serial link keeps committed (one moving, one queued behind it): see to_profile's notes
COMMITTED_SERIAL_COPIES = 2


def fit_copy_line(sizes_bytes: Sequence[float], times_s: Sequence[float]) -> tuple[float, float]:
    """Fit ``t = latency + bytes / bandwidth`` minimising relative error; returns (latency_s, gbps).

    Relative (1/t-weighted) least squares keeps the small copies' latency from being swamped by the big
    copies' seconds. The latency is clamped at zero (a negative intercept means the line fits bandwidth
    only).
    """
    x = np.asarray(sizes_bytes, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("need copies of at least two different sizes to fit a line")
    w = 1.0 / t
    design = np.stack([np.ones_like(x), x], axis=1) * w[:, None]
    (latency, per_byte), *_ = np.linalg.lstsq(design, t * w, rcond=None)
    if per_byte <= 0:
        raise ValueError("copy times do not grow with size; cannot fit a bandwidth")
    if latency < 0:
        per_byte = float(np.sum(x * t * w * w) / np.sum(x * x * w * w))
        latency = 0.0
    return float(latency), float(1.0 / per_byte / 1e9)


def link_sharing_factor(points: Sequence[ConcurrencyPoint]) -> float:
    """Aggregate bandwidth of the most concurrent copies over that of one copy, from the same run.

    About 1.0 means concurrent copies share one link (two engines do not double the bandwidth); about N
    means N independent links.
    """
    by_streams = {p.streams: p for p in points}
    if 1 not in by_streams or len(by_streams) < 2:
        raise ValueError("need a single-stream point and at least one concurrent point")
    most = by_streams[max(by_streams)]
    return most.aggregate_gbps / by_streams[1].aggregate_gbps


def copies_serialise(points: Sequence[ConcurrencyPoint]) -> bool:
    """True when concurrent copies ran one at a time: at the most concurrent point, the first copy
    finished nearer ``total / n`` (serial) than ``total`` (fair sharing)."""
    most = max(points, key=lambda p: p.streams)
    if most.streams < 2 or most.first_done_s is None:
        return False
    return most.first_done_s / most.total_s < (1.0 + 1.0 / most.streams) / 2.0


def rotation_count(item_bytes: int, rotate_bytes: int) -> int:
    """How many copies of an operand to cycle through so the set exceeds ``rotate_bytes`` (cache-cold)."""
    if rotate_bytes <= 0 or item_bytes <= 0:
        return 1
    return max(1, min(MAX_ROTATION, math.ceil(rotate_bytes / item_bytes)))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ---------------------------------------------------------------------------------------------- timing


def fast_samples(samples: list[list[float]], probes: list[list[float]]) -> list[list[float]]:
    """Each callable's samples taken with the host core at its fast level: those whose probe is within
    ``FAST_STEP_TOLERANCE`` of the fastest probe of all (``sim.host_speed.fast_steps``); all of a
    callable's samples if none of its is (or if no probes were taken)."""
    taken = [p for ps in probes for p in ps]
    if not taken:
        return samples
    reference = min(taken)
    out = []
    for xs, ps in zip(samples, probes, strict=True):
        kept = [x for x, fast in zip(xs, fast_steps(np.asarray(ps), reference), strict=True) if fast]
        out.append(kept or xs)
    return out


class Stopwatch:
    """Per-call median time of a callable on one device: CUDA events on a GPU, perf_counter on the CPU.

    ``fn(i)`` is called ``inner`` times back to back between two timestamps (``i`` counts calls, for
    rotating operands); the per-call time is the interval over ``inner``, and the result the median over
    ``reps`` intervals after ``warmup`` untimed calls. Back-to-back calls measure what a decode loop sees:
    the longer of the kernel time and the host's launch time.
    """

    def __init__(self, device: Any, effort: Effort) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"
        self.effort = effort

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def per_call_s(
        self, fn: Callable[[int], Any], inner: int | None = None, reps: int | None = None
    ) -> float:
        return self.per_call_all([fn], inner, reps)[0]

    def per_call_all(
        self, fns: Sequence[Callable[[int], Any]], inner: int | None = None, reps: int | None = None
    ) -> list[float]:
        """Per-call medians of several callables measured in interleaved rounds (every repetition times
        each callable once), so a drift of the host's speed during calibration affects them alike.
        A short host probe (``sim.host_speed.step_probe_s``) before each burst drops the bursts that ran
        with the host core at its slow level (beyond ``FAST_STEP_TOLERANCE`` of the fastest probe of the
        call) from the medians: at batch 1 those intervals time the host, which switches level inside a
        phase too."""
        inner = inner or self.effort.inner
        reps = reps or self.effort.reps
        burst, _ = self._bursts(fns, inner)
        samples: list[list[float]] = [[] for _ in fns]
        probes: list[list[float]] = [[] for _ in fns]
        marks = []
        for _ in range(reps):
            for k in range(len(fns)):
                probes[k].append(step_probe_s())
                if self.cuda:
                    start, end = (
                        self.torch.cuda.Event(enable_timing=True),
                        self.torch.cuda.Event(enable_timing=True),
                    )
                    start.record()
                    burst(k)
                    end.record()
                    marks.append((k, start, end))
                else:
                    t0 = time.perf_counter()
                    burst(k)
                    samples[k].append((time.perf_counter() - t0) / inner)
        self.sync()
        for k, start, end in marks:
            samples[k].append(start.elapsed_time(end) / 1e3 / inner)
        return [median(x) for x in fast_samples(samples, probes)]

    def queued_all(
        self,
        fns: Sequence[Callable[[int], Any]],
        inner: int | None = None,
        reps: int | None = None,
        beside: Callable[[int, float], Any] | None = None,
    ) -> tuple[list[float], list[float]]:
        """(GPU, host) per-call medians of several callables (GPU only), in interleaved rounds: each burst
        is launched while a sleeping kernel holds the stream (sized to three times the burst's warm-up
        launches), so the host's interval is its launch time alone and the GPU's, between events, its
        time alone, back to back. A burst whose launches outlasted the sleep is left out, and so are the
        host intervals of bursts probed at the host's slow level (as in ``per_call_all``). The GPU is
        drained before each burst: bursts queued behind earlier ones filled the launch queue on the H200,
        and a launch into a full queue waits (session 5: a residual add timed 65-74 us to launch at batch
        1, 8 us at batch 2). ``beside(k, sleep_s)``, if given, starts work on other streams (copies)
        right before the sleep of each burst of ``fns[k]``, lasting beyond the burst."""
        inner = inner or self.effort.inner
        reps = reps or self.effort.reps
        burst, launch_s = self._bursts(fns, inner)
        cycles_per_s = sleep_cycles_per_s(self.device)
        gpu: list[list[float]] = [[] for _ in fns]
        host: list[list[float]] = [[] for _ in fns]
        probes: list[list[float]] = [[] for _ in fns]
        event = self.torch.cuda.Event
        for _ in range(reps):
            for k in range(len(fns)):
                probe = step_probe_s()
                start, end = event(enable_timing=True), event(enable_timing=True)
                sleep_s = 3 * inner * launch_s[k] + 100e-6
                if beside is not None:
                    beside(k, sleep_s)
                self.torch.cuda._sleep(int(sleep_s * cycles_per_s))
                t0 = time.perf_counter()
                start.record()
                burst(k)
                end.record()
                launched = time.perf_counter() - t0
                self.sync()  # drained: the next burst starts with an empty launch queue
                if launched < sleep_s:
                    gpu[k].append(start.elapsed_time(end) / 1e3 / inner)
                    host[k].append(launched / inner)
                    probes[k].append(probe)
        if any(not x for x in gpu):
            raise RuntimeError("every queued burst of a call outlasted its sleep")
        return [median(x) for x in gpu], [median(x) for x in fast_samples(host, probes)]

    def _bursts(
        self, fns: Sequence[Callable[[int], Any]], inner: int
    ) -> tuple[Callable[[int], None], list[float]]:
        """Warm each callable up, then return ``burst(k)`` (``inner`` calls of ``fns[k]`` back to back,
        ``i`` counting on for rotating operands) and each callable's warm-up time per call."""
        calls = [0] * len(fns)
        launch_s = [0.0] * len(fns)
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            for i in range(self.effort.warmup):
                fn(i)
            launch_s[k] = (time.perf_counter() - t0) / max(1, self.effort.warmup)
            calls[k] = self.effort.warmup
        self.sync()

        def burst(k: int) -> None:
            fn, c = fns[k], calls[k]
            for i in range(c, c + inner):
                fn(i)
            calls[k] = c + inner

        return burst, launch_s

    def wall_s(self, fn: Callable[[], Any], reps: int | None = None) -> float:
        """Median host wall time of ``fn`` followed by a device synchronisation."""
        samples = []
        for i in range(self.effort.warmup + (reps or self.effort.reps)):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            if i >= self.effort.warmup:
                samples.append(time.perf_counter() - t0)
        return median(samples)


# ---------------------------------------------------------------------------------------------- measuring


def measure_copies(watch: Stopwatch, sizes: Sequence[int]) -> list[CopyPoint]:
    """Median host-to-device copy time per size: pinned (events), all sizes in interleaved rounds, so that
    a slow spell of the link lands on every size alike (measured one size after the other, session 10's
    fourth calibration had DeepSeek-V2-Lite's expert size 4.7% slow and its neighbours not), and pageable
    (wall clock, it blocks; on the CPU the only kind)."""
    torch = watch.torch
    sizes = sorted(set(int(s) for s in sizes))
    pageable = [torch.randn(size // 2, dtype=torch.float32).to(torch.bfloat16) for size in sizes]
    dsts = [torch.empty(size // 2, dtype=torch.bfloat16, device=watch.device) for size in sizes]
    if not watch.cuda:
        copies = [lambda _i, d=d, s=s: d.copy_(s) for d, s in zip(dsts, pageable, strict=True)]
        return [
            CopyPoint(size, t) for size, t in zip(sizes, watch.per_call_all(copies, inner=1), strict=True)
        ]
    pinned = [src.pin_memory() for src in pageable]
    copies = [lambda _i, d=d, s=s: d.copy_(s, non_blocking=True) for d, s in zip(dsts, pinned, strict=True)]
    times = watch.per_call_all(copies, inner=1)
    return [
        CopyPoint(size, t, watch.wall_s(lambda d=d, s=s: d.copy_(s, non_blocking=True), reps=10))
        for size, t, d, s in zip(sizes, times, dsts, pageable, strict=True)
    ]


def measure_concurrency(watch: Stopwatch, streams: Sequence[int], size: int) -> list[ConcurrencyPoint]:
    """Start ``n`` equal copies at once on ``n`` streams (distinct buffers) and time until the last ends."""
    torch = watch.torch
    n_max = max(streams)
    n = size // 2
    dsts = [torch.empty(n, dtype=torch.bfloat16, device=watch.device) for _ in range(n_max)]
    srcs = [torch.randn(n).to(torch.bfloat16) for _ in range(n_max)]
    if not watch.cuda:
        out = []
        for k in streams:
            t = watch.wall_s(
                lambda k=k: [d.copy_(s) for d, s in zip(dsts[:k], srcs[:k], strict=True)], reps=3
            )
            out.append(ConcurrencyPoint(k, size, t))
        return out
    srcs = [s.pin_memory() for s in srcs]
    side = [torch.cuda.Stream(device=watch.device) for _ in range(n_max)]
    main = torch.cuda.current_stream(watch.device)
    out = []
    for k in streams:
        totals, firsts = [], []
        for rep in range(watch.effort.warmup + watch.effort.reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record(main)
            done = []
            for j in range(k):
                side[j].wait_event(start)
                with torch.cuda.stream(side[j]):
                    dsts[j].copy_(srcs[j], non_blocking=True)
                    ev = torch.cuda.Event(enable_timing=True)
                    ev.record(side[j])
                    done.append(ev)
            for ev in done:
                main.wait_event(ev)
            end.record(main)
            end.synchronize()
            if rep >= watch.effort.warmup:
                totals.append(start.elapsed_time(end) / 1e3)
                firsts.append(min(start.elapsed_time(ev) for ev in done) / 1e3)
        out.append(ConcurrencyPoint(k, size, median(totals), median(firsts)))
    return out


def measure_launch_overhead(watch: Stopwatch) -> float:
    """Per-launch time of a trivial kernel issued back to back: the host's cost of one eager op."""
    x = watch.torch.zeros(1, device=watch.device)
    return watch.per_call_s(lambda _i: x.add_(1.0), inner=200, reps=max(5, watch.effort.reps // 3))


def measure_matmul_tflops(watch: Stopwatch, n: int) -> float:
    torch = watch.torch
    dt = torch.bfloat16 if watch.cuda else torch.float32
    a = torch.randn(n, n, device=watch.device).to(dt)
    b = torch.randn(n, n, device=watch.device).to(dt)
    t = watch.per_call_s(lambda _i: a @ b, inner=3, reps=max(3, watch.effort.reps // 5))
    return 2.0 * n**3 / t / 1e12


def measure_device_bandwidth(watch: Stopwatch, size: int) -> float:
    """Device-to-device copy, counting bytes read plus bytes written, in GB/s."""
    torch = watch.torch
    src = torch.randn(size // 4, device=watch.device)
    dst = torch.empty_like(src)
    t = watch.per_call_s(lambda _i: dst.copy_(src), inner=3, reps=max(3, watch.effort.reps // 5))
    return 2.0 * size / t / 1e9


class CopyChain:
    """Host-to-device copies of ``chunk_bytes`` each, queued back to back on a stream of their own, from
    pinned host memory: what the live executor's copies put on the link while the GPU computes."""

    #: a link rate no PCIe link beats (sizes the chain: more copies than needed, never fewer)
    FASTEST_LINK_BPS = 64e9
    #: most copies a chain queues: a CUDA stream holds about 1024 queued operations and the host blocks on
    #: a full one, so a longer chain is still being queued while most of it runs (session 11: 6236 copies
    #: of 9 MiB took 939 ms to queue, and the 193 ms left of them did not outlast a 421 ms decode)
    MAX_QUEUED_COPIES = 512

    @classmethod
    def chunk_bytes_for(cls, seconds: float, copy_bytes: int) -> int:
        """The copy size of a chain that keeps the link busy for ``seconds`` once queued: ``copy_bytes``,
        or larger (whole MiB) where that many copies would not fit in the stream's queue."""
        queue_bytes = seconds * cls.FASTEST_LINK_BPS / (cls.MAX_QUEUED_COPIES - 1)
        return max(copy_bytes, math.ceil(queue_bytes / MIB) * MIB)

    @classmethod
    def copies_for(cls, seconds: float, chunk_bytes: int) -> int:
        """Copies of ``chunk_bytes`` that keep the link busy for at least ``seconds``."""
        return 1 + math.ceil(seconds * cls.FASTEST_LINK_BPS / chunk_bytes)

    def __init__(self, device: Any, chunk_bytes: int) -> None:
        import torch

        n = max(1, chunk_bytes // 2)
        self.chunk_bytes = 2 * n
        self.stream = torch.cuda.Stream(device)
        self.src = torch.empty(n, dtype=torch.bfloat16).pin_memory()
        self.dst = torch.empty(n, dtype=torch.bfloat16, device=device)

    def start(self, seconds: float) -> None:
        """Queue copies that keep the link busy for at least ``seconds``, between two timing events
        (``elapsed_s`` once they ran)."""
        import torch

        started = time.perf_counter()
        self.copies = self.copies_for(seconds, self.chunk_bytes)
        self.begun, self.ended = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        with torch.cuda.stream(self.stream):
            self.begun.record()
            for _ in range(self.copies):
                self.dst.copy_(self.src, non_blocking=True)
            self.ended.record()
        #: the host's time to queue them (the link ran meanwhile)
        self.queueing_s = time.perf_counter() - started

    def elapsed_s(self) -> float:
        """The GPU time from the first copy of the last ``start`` to the end of its last (waits for it)."""
        self.ended.synchronize()
        return self.begun.elapsed_time(self.ended) / 1e3


def _queued_times(
    watch: Stopwatch, points: dict[tuple[str, int, int], Callable[[int], Any]], copy_bytes: int
) -> tuple[dict[tuple[str, int, int], float], ...]:
    """The GPU time alone, the host's launch time alone and the GPU time beside copies (a ``CopyChain``
    of ``copy_bytes`` copies) of each point of the ops in ``GPU_TIMED_OPS`` (``Stopwatch.queued_all``);
    all empty (and said on stderr) if this torch cannot hold a stream (``torch.cuda._sleep`` is private
    API): the simulator then falls back to the roofline for GPU times and to the op times for launches,
    and the op curves are complete without these."""
    keys = [k for k in points if k[0] in GPU_TIMED_OPS]
    fns = [points[k] for k in keys]
    try:
        gpu, host = watch.queued_all(fns)
        chain = CopyChain(watch.device, copy_bytes)
        inner = watch.effort.inner
        copying, _ = watch.queued_all(
            fns, beside=lambda k, sleep_s: chain.start(sleep_s + 2 * inner * gpu[k])
        )
    except (AttributeError, RuntimeError) as exc:
        print(f"calibrate: GPU-only op times NOT measured ({type(exc).__name__}: {exc})", file=sys.stderr)
        return {}, {}, {}
    return tuple(dict(zip(keys, times, strict=True)) for times in (gpu, host, copying))


def measure_shape(watch: Stopwatch, shape: ModelShape, effort: Effort) -> ShapeTimings:
    """Time every decode op of ``shape`` with ``sim.kernels`` (the live executor's code), replayed from
    CUDA graphs as the live executor runs them (norm, attention, router, routed, shared and dense FFNs;
    the residual add is one eager kernel), all points in interleaved rounds, rotating weights and KV
    caches over more bytes than the L2 cache (one graph per rotated copy)."""
    import torch

    from sim import kernels

    dev = watch.device
    dt = kernels.torch_dtype(shape)
    h = shape.hidden_size
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*size: int) -> torch.Tensor:
        return (torch.randn(*size, generator=gen, device=dev) * h**-0.5).to(dt)

    points: dict[tuple[str, int, int], Callable[[int], Any]] = {}
    graphs = kernels.GraphPool(dev)

    def rotated(calls: Sequence[Callable[[], Any]]) -> Callable[[int], Any]:
        replays = [graphs.capture(call) for call in calls]
        return lambda i: replays[i % len(replays)]()

    layers = _attention_layers(shape, effort, watch.device, gen)
    for ctx in effort.contexts:
        at = kernels.Positions(max(effort.contexts), dev)
        at.set(ctx)
        length = kernels.attention_length(ctx, at.max_context)
        for b in effort.batches:
            x, out = rand(b, h), rand(b, h)
            points["attention", b, ctx] = rotated(
                [
                    lambda x=x, out=out, layer=layer, at=at, n=length: out.copy_(
                        kernels.attention(x, layer, shape, at, n)
                    )
                    for layer in layers
                ]
            )
    norm_w = torch.ones(h, device=dev, dtype=dt)
    gates = [rand(shape.num_experts, h) for _ in range(8)]
    predictors = [kernels.new_predictor(shape, dev) for _ in range(8)]
    for b in effort.batches:
        x, y, out = rand(b, h), rand(b, h), rand(b, h)
        points["norm", b, 0] = rotated([lambda x=x, out=out: kernels.norm_into(out, x, norm_w)])
        points["router", b, 0] = rotated(
            [lambda x=x, gate=gate: kernels.router_scores(x, gate, shape.top_k) for gate in gates]
        )
        points["add", b, 0] = lambda _i, x=x, y=y: x.add_(y)
        # over its input in place, as the live executor replays it
        graphed = [graphs.capture(lambda p=p, x=x: p(x)) for p in predictors]
        points["predictor_gpu", b, 0] = lambda i, g=graphed: g[i % len(g)]()
    ffns = {"expert": shape.expert_intermediate_size}
    if shape.num_shared_experts:
        ffns["shared"] = shape.shared_intermediate_size
    if shape.dense_layers:
        ffns["dense"] = shape.dense_intermediate_size
    for op, intermediate in ffns.items():
        elems = kernels.expert_elements(h, intermediate)
        # one view per rotated copy, made once (the live executor keeps one view per slot too)
        weights = list(rand(rotation_count(elems * 2, effort.rotate_bytes), elems).unbind(0))
        for n_tok in effort.tokens:
            x = rand(n_tok, h)
            out = torch.zeros_like(x)
            points[op, n_tok, 0] = rotated(
                [
                    lambda x=x, out=out, w=w, n=intermediate: kernels.expert_into(out, x, w, h, n, 0.5)
                    for w in weights
                ]
            )
    keys = list(points)
    times = dict(zip(keys, watch.per_call_all([points[k] for k in keys]), strict=True))
    share = None
    if watch.cuda:
        context = min(effort.contexts, key=lambda c: abs(c - PREDICTOR_SHARE_CONTEXT))
        share = measure_predictor_share(
            watch, points["attention", 1, context], predictors[0], rand(1, h), times["predictor_gpu", 1, 0]
        )
    copy_bytes = min(shape.bytes_per_expert, COPY_CHAIN_MAX_BYTES)
    gpu_times, host_times, copying_times = (
        _queued_times(watch, points, copy_bytes) if watch.cuda else ({}, {}, {})
    )

    cpu_watch = Stopwatch(torch.device("cpu"), dataclasses.replace(effort, inner=max(1, effort.inner // 2)))
    pred_cpu = kernels.new_predictor(shape, torch.device("cpu"), torch.float32)
    cpu_inputs = [torch.randn(b, h) for b in effort.batches]
    predictor_cpu_s = cpu_watch.per_call_all([lambda _i, x=x: pred_cpu(x) for x in cpu_inputs])

    def curve(
        op: str, axis: Sequence[int], measured: dict[tuple[str, int, int], float] = times
    ) -> list[float]:
        return [measured[op, n, 0] for n in axis] if (op, axis[0], 0) in measured else []

    def queued_curves(measured: dict[tuple[str, int, int], float]) -> dict[str, Any]:
        if not measured:
            return {}
        out: dict[str, Any] = {
            "attention": [[measured["attention", b, c] for c in effort.contexts] for b in effort.batches]
        }
        for op in ("norm", "router", "add"):
            out[op] = curve(op, effort.batches, measured)
        for op in ("expert", "shared", "dense"):
            if values := curve(op, effort.tokens, measured):
                out[op] = values
        return out

    return ShapeTimings(
        shape=shape.name,
        batches=list(effort.batches),
        contexts=list(effort.contexts),
        tokens=list(effort.tokens),
        attention_s=[[times["attention", b, c] for c in effort.contexts] for b in effort.batches],
        norm_s=curve("norm", effort.batches),
        router_s=curve("router", effort.batches),
        add_s=curve("add", effort.batches),
        expert_s=curve("expert", effort.tokens),
        shared_s=curve("shared", effort.tokens),
        dense_s=curve("dense", effort.tokens),
        predictor_gpu_s=curve("predictor_gpu", effort.batches),
        predictor_cpu_s=predictor_cpu_s,
        gpu_s=queued_curves(gpu_times),
        host_s=queued_curves(host_times),
        copying_s=queued_curves(copying_times),
        predictor_share=share,
    )


def measure_predictor_share(
    watch: Stopwatch, attention: Callable[[int], Any], predictor: Any, x: Any, predictor_s: float
) -> float:
    """The share of the predictor MLP's GPU time (``predictor_s``) that the compute stream loses while
    the predictor runs beside it on a side stream, as the live executor runs the pre-attention
    predictor beside a layer's attention: attention calls queued alone against the same calls each with
    the predictor (replayed from its own graph) started beside it; 0 to 1."""
    from sim import kernels

    torch = watch.torch
    side = torch.cuda.Stream(watch.device)
    call = kernels.GraphPool(watch.device).capture(lambda: predictor(x))  # own pool: runs beside

    def beside(i: int) -> None:
        side.wait_stream(torch.cuda.current_stream(watch.device))
        with torch.cuda.stream(side):
            call()
        attention(i)

    (alone_s, with_s), _ = watch.queued_all([attention, beside])
    return min(1.0, max(0.0, (with_s - alone_s) / predictor_s))


def _attention_layers(shape: ModelShape, effort: Effort, device: Any, gen: Any) -> list[Any]:
    """Enough layers' attention weights and KV caches to rotate over more bytes than the L2 cache."""
    from sim import kernels

    b_max, ctx_max = max(effort.batches), max(effort.contexts)
    first = kernels.new_attention(shape, b_max, ctx_max, device, gen)
    item_bytes = sum(t.numel() * t.element_size() for t in (first.wqkv, first.wo, first.k_cache))
    return [first] + [
        kernels.new_attention(shape, b_max, ctx_max, device, gen)
        for _ in range(rotation_count(item_bytes, effort.rotate_bytes) - 1)
    ]


#: MoE layers of the truncated model a host-cost calibration run decodes (4 before session 5: the
#: host's work at each step's start then weighed a quarter as much as a layer's), and its tokens
HOST_LAYERS = 12
HOST_TOKENS = 32
#: the context a model needs to decode a host-cost run (its tokens and the next position)
HOST_RUN_CONTEXT = HOST_TOKENS + 1
#: leading steps of a host-cost run left out of the fits (cold cache, first launches)
HOST_WARMUP_STEPS = 2
#: the quantile of (live - simulated) step time that the host-cost fit sets to zero (see fit_host_costs)
HOST_FIT_QUANTILE = 0.25


def truncated_shape(shape: ModelShape, moe_layers: int = HOST_LAYERS) -> ModelShape:
    """The same model (same name, so its op curves apply) cut to its first ``moe_layers`` MoE layers
    and the dense layers before them."""
    last = shape.moe_layers[min(moe_layers, shape.num_moe_layers) - 1]
    return dataclasses.replace(
        shape, num_layers=last + 1, moe_layers=tuple(j for j in shape.moe_layers if j <= last)
    )


#: cache share and policy of the calibration run that fits the host time per copy: oracle prefetches at
#: the layer start, so copies overlap attention and their host cost shows in the step time
ISSUE_FIT_CACHE_FRACTION = 0.25
ISSUE_FIT_POLICY = "oracle"
#: bounds of the fitted host time per copy (seconds) and the bisection's steps
ISSUE_FIT_MAX_S = 1e-3
ISSUE_FIT_STEPS = 30
#: bound of the fitted GPU time per MoE layer outside the ops (seconds)
GPU_LAYER_FIT_MAX_S = 1e-3
#: lower bound of the fitted factor on a shape's GPU times of its ops (``gpu_scale``)
GPU_SCALE_MIN = 0.5
#: bounds of the fitted factor on a shape's ``<op>_copying`` curves (below about 1 / (their ratio to the
#: curves alone) it changes nothing: an op is never faster beside copies than alone)
COPYING_SCALE_MIN, COPYING_SCALE_MAX = 0.5, 3.0
#: the copy chain of a "copying" host-cost run lasts this many times the run's simulated decode, plus
#: ``COPYING_RUN_EXTRA_S`` (a slow model instance decoded 10% slower than another, session 9)
COPYING_RUN_MARGIN = 2.0
COPYING_RUN_EXTRA_S = 0.1


def fit_scalar(predict: Callable[[float], float], target: float, lo: float, hi: float, steps: int) -> float:
    """The ``x`` in ``[lo, hi]`` where the non-decreasing ``predict(x)`` meets ``target`` (bisection);
    the nearer bound when ``target`` lies outside ``[predict(lo), predict(hi)]``."""
    if predict(lo) >= target:
        return lo
    if predict(hi) <= target:
        return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if predict(mid) < target else (lo, mid)
    return (lo + hi) / 2


#: the host-cost runs with every expert resident, decoded on one model (see HostRun)
RESIDENT_RUN_KINDS = ("layer", "copying")
#: what each kind of host-cost run measures (see HostRun)
HOST_RUN_MEASURES = {"layer": "time per layer", "copying": "time beside copies", "copy": "time per copy"}


def host_run_setup(kind: str) -> tuple[Any, Any, Any]:
    """(cache, policy, options) of a host-cost run: "layer" has every expert resident (no copies: the
    step time beyond the ops is the loop's own host time), and so has "copying" (with copies of no
    expert in flight beside it all along: the ops' time beside copies), "copy" prefetches with the
    oracle into a quarter-size cache (copies overlap attention, so their host cost shows in the step
    time)."""
    from sim.cache import CacheConfig
    from sim.config import SimOptions
    from sim.policies import PolicySpec

    options = SimOptions(warmup_steps=HOST_WARMUP_STEPS)
    if kind in RESIDENT_RUN_KINDS:
        return CacheConfig(fraction=1.0), PolicySpec("resident"), options
    if kind == "copy":
        return CacheConfig(fraction=ISSUE_FIT_CACHE_FRACTION), PolicySpec(ISSUE_FIT_POLICY), options
    raise ValueError(f"unknown host run kind {kind!r}")


def host_workload(shape: ModelShape, moe_layers: int = HOST_LAYERS) -> tuple[ModelShape, Any]:
    """The truncated model and the synthetic trace a host-cost run decodes (rebuilt from code, so a
    kept run can be simulated again later)."""
    from sim.validate import synthetic_trace

    small = truncated_shape(shape, moe_layers)
    return small, synthetic_trace(small, HOST_TOKENS)


def record_host_runs(
    shape: ModelShape,
    kinds: Sequence[str],
    profile: HardwareProfile,
    device: Any,
    engines: int,
    progress: Callable[[str], None],
) -> list[HostRun]:
    """Decode the synthetic host-cost trace live once per kind, all on one model of ``shape`` or of a
    truncated copy (``host_run_layers`` of the first kind): a "copying" run describes the model of the
    "layer" run before it only if it decodes on that very model (instances differ, session 9)."""
    from sim import live

    small, trace = host_workload(shape, host_run_layers(shape, kinds[0], device))
    what = ", ".join(HOST_RUN_MEASURES[kind] for kind in kinds)
    progress(f"host {what} of {shape.name} (live decode, {small.num_moe_layers} layers)")
    slots, copies = 0, False
    for kind in kinds:
        cache, policy, options = host_run_setup(kind)
        _, policy_obj, needed = live.prepare(trace, small, policy, cache, options)
        slots, copies = max(slots, needed), copies or not policy_obj.resident
    budget = GIB if copies else small.bytes_per_expert
    live_options = live.LiveOptions(device=str(device), host_budget_bytes=budget)
    model = live.open_model(
        small, slots, copies, 1, HOST_RUN_CONTEXT, copies, engines, live_options, profile.copy.serial
    )
    return [host_run_on(model, kind, profile, live_options, shape.name) for kind in kinds]


def host_run_on(
    model: Any, kind: str, profile: HardwareProfile, live_options: Any, name: str | None = None
) -> HostRun:
    """Decode the synthetic host-cost trace of ``kind`` on a live model built already (its shape, maybe
    truncated: ``host_workload``), labelled with shape ``name`` (default: the model's). A "copying" run
    (GPU only) queues a ``CopyChain`` of expert-sized copies (larger where the stream's queue would not
    hold that many) right before its first step, long enough to outlast the decode, and keeps the chain's
    copy count and time in its counters (``chain_copies``, ``chain_us``); it refuses a run whose chain
    ended first. (Queued before ``run_live``, session 10's first chains were spent by up to 0.4 s of
    set-up and ended a quarter of the way before the decode.)"""
    from sim import live
    from sim.simulation import simulate

    small = model.shape
    trace = host_workload(small, small.num_moe_layers)[1]
    cache, policy, options = host_run_setup(kind)
    chain, queue_chain = None, None
    if kind == "copying":
        if not model.dev.cuda:
            raise ValueError("a host-cost run beside copies needs a GPU")
        expected_s = simulate(trace, small, profile, cache, policy, options).total_s
        chain_s = COPYING_RUN_MARGIN * expected_s + COPYING_RUN_EXTRA_S
        copy_bytes = min(small.bytes_per_expert, COPY_CHAIN_MAX_BYTES)
        chain = CopyChain(model.dev.device, CopyChain.chunk_bytes_for(chain_s, copy_bytes))
        queue_chain = functools.partial(chain.start, chain_s)
    ran = live.run_live(model, trace, profile, cache, policy, options, live_options, queue_chain)
    counters = {k: float(v) for k, v in ran.counters.items()}
    if chain is not None:
        chain_s, decode_s = chain.elapsed_s(), float(ran.step_latency_s.sum())
        if chain_s < decode_s + chain.queueing_s:
            raise RuntimeError(
                f"the copy chain ({chain.copies} copies, {chain_s * 1e3:.1f} ms) ended before the decode "
                f"({decode_s * 1e3:.1f} ms after {chain.queueing_s * 1e3:.1f} ms of queueing the chain): the "
                "run was not beside copies throughout"
            )
        counters |= {"chain_copies": float(chain.copies), "chain_us": chain_s * 1e6}
    # (the host-cost trace is one sequence decoded at batch 1: token i is step i)
    probes = [] if ran.host_probe_s is None else [float(x) for x in ran.host_probe_s]
    busy_s = (ran.counters["host_loop_us"] - ran.counters["host_wait_gpu_us"]) / 1e6 / len(ran.step_latency_s)
    return HostRun(
        name or small.name,
        kind,
        [float(x) for x in ran.step_latency_s],
        probes,
        busy_s,
        small.num_moe_layers,
        counters,
    )


def instance_run_kinds(model: Any) -> tuple[str, ...]:
    """The host-cost runs a live model can decode of its whole shape (``host_run_on``): with every
    expert in a slot and room for the trace's context, the resident run, and on a GPU the run beside
    copies after it; none otherwise."""
    shape = model.shape
    fits = model.slots.shape[0] >= shape.num_moe_layers * shape.num_experts and (
        model.max_context >= HOST_RUN_CONTEXT
    )
    if not fits:
        return ()
    return RESIDENT_RUN_KINDS if model.dev.cuda else ("layer",)


def host_run_layers(shape: ModelShape, kind: str, device: Any) -> int:
    """MoE layers a host-cost run decodes: the whole model for the resident ("layer") run when all its
    experts fit in the GPU's free memory, else (and for the copy run) the first ``HOST_LAYERS``. On four
    H200 VMs, DeepSeek-V2-Lite's full model ran 5.8 or 6.5 ms per token resident while its first 12
    layers, which calibration had fitted ``gpu_layer`` to, ran per layer 2.5% slower than the first and
    9% faster than the second (session 8): the GPU's time outside the ops is the whole model's."""
    from sim import live

    if kind not in RESIDENT_RUN_KINDS:
        return HOST_LAYERS
    every_expert = shape.num_moe_layers * shape.num_experts
    plan = live.plan_memory(shape, every_expert, False, 1, HOST_RUN_CONTEXT, False, 0)
    return shape.num_moe_layers if plan.gpu_bytes <= live.free_gpu_bytes(device) else HOST_LAYERS


def use_instance_runs(result: Calibration, runs: Sequence[HostRun]) -> None:
    """Replace ``result``'s resident host-cost runs ("layer" and "copying") of each shape that ``runs``
    holds some of by those (a validation's own model: ``sim.validate.run_live_grid``'s
    ``instance_runs``), so that ``fit_host_costs`` fits that model's costs per layer, and say so in the
    notes. Calibration's run beside copies goes too where the instance has none: it describes calibration's
    model, whose "layer" run is replaced."""
    replaced = {r.shape for r in runs}
    result.host_runs = [
        r for r in result.host_runs if r.shape not in replaced or r.kind not in RESIDENT_RUN_KINDS
    ] + list(runs)
    names = ", ".join(sorted({r.shape for r in runs}))
    beside = any(r.kind == "copying" for r in runs)
    fitted = "host_layer, gpu_layer, gpu_scale" + (", copying_scale" if beside else "")
    result.notes = (
        f"{result.notes} {fitted} of {names} fitted to the resident host-cost run(s) on the model a "
        "validation grid ran on (its instance_runs.json), not on calibration's own model."
    ).strip()


def fit_host_costs(result: Calibration, shapes: Sequence[ModelShape]) -> list[str]:
    """Fit the live executor's host costs to ``result.host_runs`` with the current simulator (CPU only,
    so a changed simulator can be re-fitted to the runs of an earlier calibration):

    - ``host_layer_s[shape]``: host time per MoE layer outside the launches. Where the resident run
      measured the host thread's busy time, it is that time per step less the step probe and the ops'
      launch times (the host's own time, whichever clock set the pace); in older runs, the
      ``HOST_FIT_QUANTILE`` quantile over measured steps of (live - simulated) step time, per MoE layer
      (right only for a host-bound executor);
    - ``gpu_layer_s[shape]`` (runs with busy time only): the GPU time per MoE layer at which that
      quantile of (live - simulated) is zero (bisection): the gaps between a layer's launches, which
      ops timed one at a time do not show;
    - ``gpu_scale[shape]`` (runs with busy time only, where the fit of ``gpu_layer_s`` would need a
      negative gap): the factor below 1 on the shape's GPU times of its ops at which that quantile is zero
      with no gap. Calibration times the ops on buffers of its own, whose speed varies like a model's:
      session 10's second calibration timed DeepSeek-V2-Lite's routed expert at 22.8 us (19.2-19.4 us in
      session 9), and its resident decode simulated 6.2% slower than the model it was fitted to;
    - ``copying_scale[shape]`` (where a "copying" run decoded on the resident run's model): the factor on
      the shape's ``<op>_copying`` curves at which that quantile of the run's (live - simulated) step
      time is zero, simulated with every op beside copies (``with_link_busy``), after the two above.
      Ops timed one at a time beside copies need not slow like that model's: on session 9's H200 VMs,
      prefetching policies lost up to 0.16 ms per token more than on-demand loading on slow model
      instances, where scaling DeepSeek-V2-Lite's ``<op>_copying`` curves by 1.15 matched them;
    - ``issue_s`` (``copy.issue_s``): the host time per copy that the first shape's oracle run
      measured (committing copies to copy streams and handling them once landed, its counters
      ``host_issue_us`` and ``host_landing_us``). Runs kept before session 6 lack those counters; for
      them it is the host time per copy at which that quantile of (live - simulated) step time is zero
      (bisection), which took every way the live run was slower than the simulator for host time:
      session 6 measured 14 us per copy where that fit gave 161 us, and the fitted value held back
      cross-layer prefetching, whose copies the host issues between a router and its experts.

    Measured steps are those after ``HOST_WARMUP_STEPS`` that ran with the host core at its fast level
    (``host_fit_steps``). A disturbance only ever adds time, and not every one shows in the probe (a
    session-4 calibration had 21 of 30 steps 1.5x slow at fast probes), so the fits take a low quantile
    rather than the median or the mean. Returns the runs that had no fast step (fitted at the slow
    level: a warning for the profile's notes).
    """
    runs = {(r.shape, r.kind): r for r in result.host_runs}
    steps, slow = host_fit_steps(result.host_runs)
    result.issue_s, result.host_layer_s, result.gpu_layer_s = 0.0, {}, {}
    result.gpu_scale, result.copying_scale = {}, {}
    for shape in shapes:
        if (shape.name, "layer") in runs:
            run = runs[shape.name, "layer"]
            _fit_layer_costs(result, shapes, run, _FitTarget.of(shape, run, steps))
        if (shape.name, "copying") in runs:
            _fit_copying_scale(result, shapes, _FitTarget.of(shape, runs[shape.name, "copying"], steps))
    copy_runs = [(s, runs[s.name, "copy"]) for s in shapes if (s.name, "copy") in runs]
    if not copy_runs:
        return slow
    shape, run = copy_runs[0]
    if run.counters.get("live_transfers"):
        host_us = run.counters["host_issue_us"] + run.counters["host_landing_us"]
        result.issue_s = host_us / 1e6 / run.counters["live_transfers"]
        return slow
    target, profile = _FitTarget.of(shape, run, steps), to_profile(result, shapes)
    result.issue_s = fit_scalar(
        lambda issue_s: target.shortfall_s(profile.with_copy(issue_s=issue_s)),
        0.0,
        0.0,
        ISSUE_FIT_MAX_S,
        ISSUE_FIT_STEPS,
    )
    return slow


@dataclass(frozen=True)
class _FitTarget:
    """A kept host-cost run as the target of a fit: the workload it decoded and its fitted steps."""

    small: ModelShape
    trace: Any
    setup: tuple[Any, Any, Any]
    live_s: np.ndarray
    mask: np.ndarray

    @classmethod
    def of(cls, shape: ModelShape, run: HostRun, steps: dict[tuple[str, str], np.ndarray]) -> _FitTarget:
        small, trace = host_workload(shape, run.moe_layers)
        mask = steps[shape.name, run.kind]
        return cls(small, trace, host_run_setup(run.kind), np.asarray(run.step_latency_s)[mask], mask)

    def shortfall_s(self, profile: HardwareProfile) -> float:
        """How far the run simulated with ``profile`` falls short of the live one: minus the
        ``HOST_FIT_QUANTILE`` quantile over the fitted steps of (live - simulated) step time; it rises as
        the simulation slows, and a fit sets it to zero."""
        from sim.simulation import simulate

        simulated = simulate(self.trace, self.small, profile, *self.setup).step_latency_s[self.mask]
        return -float(np.quantile(self.live_s - simulated, HOST_FIT_QUANTILE))


def _fit_layer_costs(
    result: Calibration, shapes: Sequence[ModelShape], run: HostRun, target: _FitTarget
) -> None:
    """``host_layer_s``, ``gpu_layer_s`` and maybe ``gpu_scale`` of a shape from its resident ``run``
    (see ``fit_host_costs``)."""
    small, name = target.small, target.small.name
    ops_only = to_profile(result, shapes)  # the measured ops and the host costs fitted so far
    if not run.host_busy_s:
        result.host_layer_s[name] = -target.shortfall_s(ops_only) / small.num_moe_layers
        return
    probe_s = 3 * float(np.median(run.host_probe_s)) if run.host_probe_s else 0.0
    launches_s = launch_time_per_step_s(CostModel(small, ops_only), small, HOST_TOKENS // 2)
    result.host_layer_s[name] = max(0.0, run.host_busy_s - probe_s - launches_s) / small.num_moe_layers

    def shortfall(gpu_layer_s: float) -> float:
        result.gpu_layer_s[name] = gpu_layer_s
        return target.shortfall_s(to_profile(result, shapes))

    result.gpu_layer_s[name] = fit_scalar(shortfall, 0.0, 0.0, GPU_LAYER_FIT_MAX_S, ISSUE_FIT_STEPS)
    if result.gpu_layer_s[name] > 0.0 or shortfall(0.0) <= 0.0:
        return

    def scaled_shortfall(scale: float) -> float:
        result.gpu_scale[name] = scale
        return shortfall(0.0)

    result.gpu_scale[name] = fit_scalar(scaled_shortfall, 0.0, GPU_SCALE_MIN, 1.0, ISSUE_FIT_STEPS)


def _fit_copying_scale(result: Calibration, shapes: Sequence[ModelShape], target: _FitTarget) -> None:
    """``copying_scale`` of a shape from its run beside copies (see ``fit_host_costs``)."""
    name = target.small.name

    def shortfall(scale: float) -> float:
        result.copying_scale[name] = scale
        return target.shortfall_s(to_profile(with_link_busy(result, name), shapes))

    result.copying_scale[name] = fit_scalar(
        shortfall, 0.0, COPYING_SCALE_MIN, COPYING_SCALE_MAX, ISSUE_FIT_STEPS
    )


def with_link_busy(result: Calibration, shape_name: str) -> Calibration:
    """``result`` as if the link were busy all the while: each op of ``shape_name`` with a curve beside
    copies (scaled by its ``copying_scale``) runs on the GPU at that curve's time (and takes at least as
    long back to back); a resident decode simulated with it is the counterpart of a "copying" host-cost
    run, whose chain of copies kept the link busy."""
    t = result.shapes[shape_name]
    scale = result.copying_scale.get(shape_name, 1.0)
    busy = {op: _elementwise(max, t.gpu_s[op], _scaled(t.copying_s[op], scale)) for op in t.copying_s}
    op_curves = {f"{op}_s": _elementwise(max, getattr(t, f"{op}_s"), busy[op]) for op in busy}
    timings = dataclasses.replace(t, gpu_s=t.gpu_s | busy, copying_s=busy, **op_curves)
    return dataclasses.replace(
        result,
        shapes=result.shapes | {shape_name: timings},
        copying_scale={k: v for k, v in result.copying_scale.items() if k != shape_name},
    )


def _scaled(values: Any, factor: float) -> Any:
    """A curve's values (a list, or a list of lists) times ``factor``."""
    return [_scaled(v, factor) for v in values] if isinstance(values, list) else values * factor


def _elementwise(fn: Callable[[float, float], float], a: Any, b: Any) -> Any:
    """``fn`` of two curves' values point by point (lists, or lists of lists, of one layout)."""
    if isinstance(a, list):
        return [_elementwise(fn, x, y) for x, y in zip(a, b, strict=True)]
    return fn(a, b)


def launch_time_per_step_s(costs: CostModel, shape: ModelShape, context_total: int) -> float:
    """The host's launch time of one decode step's ops at batch 1 (``sim.costs.CostModel.launch_s``),
    as the simulator charges them: per MoE layer norm, attention, add, norm, router, shared experts,
    ``top_k`` experts and add; per dense layer norm, attention, add, norm, MLP and add."""
    launch = costs.launch_s
    norm, add, attention = launch("norm", 1, 0), launch("add", 1, 0), launch("attention", 1, context_total)
    moe = 2 * norm + attention + 2 * add + launch("router", 1, 0) + launch("shared", 1, 0)
    moe += shape.top_k * launch("expert", 1, 0)
    dense = 2 * norm + attention + 2 * add + launch("dense", 1, 0)
    return shape.num_moe_layers * moe + len(shape.dense_layers) * dense


def host_fit_steps(runs: Sequence[HostRun]) -> tuple[dict[tuple[str, str], np.ndarray], list[str]]:
    """Per host-cost run, the steps its fit uses: after ``HOST_WARMUP_STEPS``, and, where the run took
    per-step probes, only those at the host core's fast level (within ``FAST_STEP_TOLERANCE`` of the
    fastest probe of all the runs); all measured steps if none of a run's steps was fast. Also returns
    those runs ("kind shape"), whose fit then comes from the slow level."""
    probed = [np.asarray(r.host_probe_s) for r in runs if len(r.host_probe_s) == len(r.step_latency_s)]
    reference = min((float(p.min()) for p in probed if p.size), default=None)
    masks, slow = {}, []
    for r in runs:
        measured = np.arange(len(r.step_latency_s)) >= HOST_WARMUP_STEPS
        mask = measured
        if reference is not None and len(r.host_probe_s) == len(r.step_latency_s):
            fast = measured & fast_steps(np.asarray(r.host_probe_s), reference)
            mask = fast if fast.any() else measured
            if not fast.any():
                slow.append(f"{r.kind} {r.shape}")
        masks[r.shape, r.kind] = mask
    return masks, slow


def copy_engine_count(device: Any) -> int | None:
    """The GPU's asynchronous copy engine count (cudaDevAttrAsyncEngineCount), or None if unreadable."""
    if device.type != "cuda":
        return None
    try:
        import cupy  # type: ignore[import-not-found]

        return int(cupy.cuda.runtime.deviceGetAttribute(cupy.cuda.runtime.cudaDevAttrAsyncEngineCount, 0))
    except Exception:
        return None


def _environment(device: Any) -> dict[str, str]:
    import torch

    env = {
        "gpu": "cpu",
        "driver": "",
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda or ""),
        "host": f"{platform.node()} {platform.processor() or platform.machine()}",
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        try:
            import subprocess

            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = ""
    return env


def calibrate(
    shapes: Sequence[ModelShape],
    device: str = "auto",
    effort: Effort | None = None,
    progress: Callable[[str], None] | None = None,
    host_costs: bool = True,
    host_gate_timeout_s: float = 0.0,
) -> Calibration:
    """Run every measurement on ``device`` ("auto": cuda if available) for the given model shapes;
    ``host_costs`` also measures the live executor's host costs (needs the simulator, i.e. simpy).
    ``host_gate_timeout_s`` > 0: the host-bound measurements (launch overhead, each shape's ops, each
    host-cost run) first wait, up to that long, for the host core's fast level (sim.host_speed)."""
    import torch

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device)
    if dev.type == "auto":
        dev = torch.device("cpu")
    effort = effort or Effort()
    watch = Stopwatch(dev, effort)
    say = progress or (lambda _msg: None)
    gate = _PhaseGate(host_gate_timeout_s, say)
    copy_sizes = set(effort.copy_sizes) | {s.bytes_per_expert for s in shapes}
    with torch.inference_mode():
        say("launch overhead, matmul rate, device bandwidth")
        launch = gate("launch overhead", lambda: measure_launch_overhead(watch))
        tflops = measure_matmul_tflops(watch, effort.matmul_n)
        hbm = measure_device_bandwidth(watch, effort.bandwidth_bytes)
        say("host-to-device copies")
        copies = measure_copies(watch, sorted(copy_sizes))
        say("concurrent copies")
        concurrency = measure_concurrency(watch, effort.concurrency_streams, effort.concurrency_size_bytes)
        delays = None
        if dev.type == "cuda" and shapes:
            say("hand-overs between the copy and compute streams")
            size = shapes[0].bytes_per_expert
            delays = measure_stream_delays(dev, size, reps=effort.reps, warmup=effort.warmup)
        timings = {}
        for shape in shapes:
            say(f"decode ops of {shape.name}")
            timings[shape.name] = gate(f"ops {shape.name}", lambda s=shape: measure_shape(watch, s, effort))
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        for phase, value in gate.redo_slow().items():  # met before the fast level was known
            if phase == "launch overhead":
                launch = value
            else:
                timings[phase.removeprefix("ops ")] = value
    env = _environment(dev)
    result = Calibration(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=dev.type,
        copy_engines=copy_engine_count(dev),
        launch_overhead_s=launch,
        matmul_tflops=tflops,
        device_bandwidth_gbps=hbm,
        copies=copies,
        concurrency=concurrency,
        shapes=timings,
        stream_delays=delays,
        **env,
    )
    if host_costs:
        say("host costs of the live executor")
        try:
            _measure_host_costs(result, shapes, dev, effort, say, gate)
        except Exception as exc:  # the op and copy measurements above stay valid without them
            result.notes = f"host costs NOT measured ({type(exc).__name__}: {exc})"
            result.issue_s, result.host_layer_s, result.gpu_layer_s, result.host_runs = 0.0, {}, {}, []
            say(f"WARNING: {result.notes}")
    result.host_probe_s, result.host_gates = gate.record()
    return result


#: attempts per gated calibration phase (a phase is short; the core sat at its slow level through
#: three attempts of session 4's copy run, which then fitted issue_s three times too high)
CALIBRATION_ATTEMPTS = 5


class _PhaseGate:
    """Calibration's use of sim.host_speed.HostGate: each host-bound phase runs at the core's fast level
    (waited for, and repeated if the core ended it slow), logged by name; without a timeout it just runs
    the phase."""

    def __init__(self, timeout_s: float, say: Callable[[str], None]) -> None:
        self.gate = HostGate(timeout_s=timeout_s) if timeout_s > 0 else None
        self.say = say
        self.log: list[dict[str, Any]] = []
        self.measures: dict[str, Callable[[], Any]] = {}

    def __call__(self, phase: str, measure: Callable[[], T]) -> T:
        if self.gate is None:
            return measure()
        if not self.log:
            self.gate.settle()
        self.measures[phase] = measure
        gated = self.gate.run(measure, CALIBRATION_ATTEMPTS)
        before = gated.before
        self.log.append(
            {
                "phase": phase,
                "probe_s": before.probe_s,
                "after_s": gated.after_s,
                "waited_s": before.waited_s,
                "attempts": gated.attempts,
                "timed_out": before.timed_out,
                "slow_after": gated.slow_after,
            }
        )
        if before.waited_s > 0.05 or gated.attempts > 1 or gated.slow_after:
            self.say(
                f"host gate: {phase}: waited {before.waited_s:.1f} s for the fast level, "
                f"{gated.attempts} attempt(s)" + (", still ended slow" if gated.slow_after else "")
            )
        return gated.value

    def redo_slow(self) -> dict[str, Any]:
        """Measure again, once, each phase so far whose probes were slow by the fastest probe seen since:
        the gate learns the fast level from its probes, so a core that sat at its slow level through the
        settling let the first phases through at that level. Returns the new values by phase."""
        if self.gate is None:
            return {}
        slow = [
            e["phase"]
            for e in self.log
            if not (self.gate.fast(e["probe_s"]) and self.gate.fast(e["after_s"]))
        ]
        values = {}
        for phase in dict.fromkeys(slow):
            self.say(f"host gate: {phase}: measured again (the core was at its slow level then)")
            values[phase] = self(phase, self.measures[phase])
        return values

    def record(self) -> tuple[float, list[dict[str, Any]]]:
        """(fastest probe seen, one entry per gated phase) for the Calibration."""
        return (self.gate.reference_s, self.log) if self.gate is not None else (0.0, [])


def _measure_host_costs(
    result: Calibration,
    shapes: Sequence[ModelShape],
    dev: Any,
    effort: Effort,
    say: Callable[[str], None],
    gate: _PhaseGate,
) -> None:
    """Record the host-cost runs live (a resident run per shape, an oracle run of the first shape),
    then fit the host costs to them (``fit_host_costs``)."""
    import torch

    provisional = to_profile(result, shapes)
    engines = provisional.copy.engines
    resident = RESIDENT_RUN_KINDS if dev.type == "cuda" else ("layer",)
    jobs = [(shape, resident) for shape in shapes] + [(shapes[0], ("copy",))]
    for shape, kinds in jobs:
        runs = gate(
            f"host {' '.join(kinds)} {shape.name}",
            lambda s=shape, k=kinds: record_host_runs(s, k, provisional, dev, engines, say),
        )
        result.host_runs.extend(runs)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    slow = fit_host_costs(result, shapes)
    if slow:
        result.notes = (
            f"host-cost run(s) {', '.join(slow)} never ran at the host core's fast level: fitted at the slow "
            "level, so their host costs are too high"
        )
        say(f"WARNING: {result.notes}")


# ---------------------------------------------------------------------------------------------- the profile


def cpu_gflops(shape_timings: ShapeTimings, shape: ModelShape) -> float:
    """Achieved CPU rate of the predictor MLP at its largest measured batch (its FLOPs over its time)."""
    from sim.kernels import PREDICTOR_HIDDEN

    batch = shape_timings.batches[-1]
    flops = 2.0 * batch * (shape.hidden_size * PREDICTOR_HIDDEN + PREDICTOR_HIDDEN * shape.num_experts)
    return flops / shape_timings.predictor_cpu_s[-1] / 1e9


def to_profile(
    result: Calibration, shapes: Sequence[ModelShape], name: str = "", smoke: bool = False
) -> HardwareProfile:
    """The simulator's HardwareProfile (sim.hardware) holding everything ``result`` measured."""
    from sim.hardware import ComputeProfile, CopyCurve, CopyProfile, HardwareProfile, OpCurve, ProfileMeta

    copies, copies_note = undisturbed_copies(result)
    sizes = [p.size_bytes for p in copies]
    latency_s, pinned_gbps = fit_copy_line(sizes, [p.pinned_s for p in copies])
    pageable = [p.pageable_s for p in copies]
    has_pageable = all(t is not None for t in pageable)
    pageable_gbps = fit_copy_line(sizes, pageable)[1] if has_pageable else pinned_gbps
    sharing = link_sharing_factor(result.concurrency)
    most = max(result.concurrency, key=lambda p: p.streams)
    serial = copies_serialise(result.concurrency)
    if serial:
        engines = COMMITTED_SERIAL_COPIES
    else:
        engines = result.copy_engines or (
            1 if result.device == "cpu" else max(p.streams for p in result.concurrency)
        )
    measured = result.stream_delays
    # the hand-overs' delays are what they took beyond the time the simulator charges a copy of that size,
    # the curve's point (calibration times a copy of each shape's expert size)
    pinned_s = {p.size_bytes: p.pinned_s for p in copies}
    delayed_copy_s = 0.0 if measured is None else pinned_s[measured.size_bytes]
    delays = {} if measured is None else measured.delays(delayed_copy_s)
    curves = []
    for shape in shapes:
        t = result.shapes[shape.name]
        curves.append(OpCurve("attention", shape.name, t.batches, t.attention_s, t.contexts))
        per_batch = {"norm": t.norm_s, "router": t.router_s, "add": t.add_s}
        per_batch |= {"predictor_gpu": t.predictor_gpu_s, "predictor_cpu": t.predictor_cpu_s}
        curves += [OpCurve(op, shape.name, t.batches, s) for op, s in per_batch.items() if s]
        per_tokens = {"expert": t.expert_s, "shared": t.shared_s, "dense": t.dense_s}
        curves += [OpCurve(op, shape.name, t.tokens, s) for op, s in per_tokens.items() if s]
        gpu = result.gpu_scale.get(shape.name, 1.0)
        copying = gpu * result.copying_scale.get(shape.name, 1.0)
        scaled = {
            "_gpu": {op: _scaled(values, gpu) for op, values in t.gpu_s.items()},
            "_host": t.host_s,
            "_copying": {op: _scaled(values, copying) for op, values in t.copying_s.items()},
        }
        for suffix, timed in scaled.items():
            for op, values in timed.items():
                axis = t.tokens if op in ("expert", "shared", "dense") else t.batches
                context = t.contexts if op == "attention" else ()
                curves.append(OpCurve(f"{op}{suffix}", shape.name, axis, values, context))
        for op, fitted in (("host_layer", result.host_layer_s), ("gpu_layer", result.gpu_layer_s)):
            if shape.name in fitted:
                curves.append(OpCurve(op, shape.name, (1,), (fitted[shape.name],)))
        if t.predictor_share is not None:
            curves.append(OpCurve("predictor_share", shape.name, (1,), (t.predictor_share,)))
    source = (
        "cpu smoke run (NOT a GPU measurement; numbers are meaningless)"
        if smoke or result.device == "cpu"
        else f"measured (moe-prefetch calibrate, {result.date[:10]})"
    )
    notes = (
        f"Measured by moe-prefetch calibrate on {result.gpu} ({result.host}), "
        f"CUDA {result.cuda_version or '-'}. "
        "Copies: torch copy_(non_blocking=True) into device memory, median per size; pinned timed with CUDA "
        "events, pageable with the wall clock (it blocks). "
        f"{most.streams} concurrent copies of {most.size_bytes >> 20} MiB on separate streams moved "
        f"{most.aggregate_gbps:.1f} GB/s together, {sharing:.2f}x one copy's rate (concurrency_factor). "
        + (
            f"They ran one after the other (first landed after {most.first_done_s * 1e3:.2f} of "
            f"{most.total_s * 1e3:.2f} ms): serial = true, and engines = {COMMITTED_SERIAL_COPIES} copies "
            "committed at once (one moving, one queued, as the live executor keeps them, so the link "
            f"never idles while the host polls; the GPU has {result.copy_engines} copy engines). "
            if serial
            else f"Copy engines: {result.copy_engines or 'not readable, assumed'}. "
        )
        + "Op curves: per-call medians of sim.kernels (the live executor's own code, run as the executor "
        "ran it when calibrated: eagerly before session 5, each multi-kernel op replayed from a CUDA graph "
        "since) called back to back, all points in interleaved rounds, weights rotated over more than the L2 "
        "cache; launch overhead: one trivial eager kernel back to back; "
        + (
            "<op>_gpu and <op>_host curves: the same calls launched while a sleeping kernel held the GPU "
            "(the GPU's time alone, back to back, and the host's launch time alone)"
            + (
                "; <op>_copying: the GPU's time of those calls while one expert-sized host-to-device copy "
                "after another was in flight on a stream of its own. "
                if any(t.copying_s for t in result.shapes.values())
                else ". "
            )
            if any(t.host_s for t in result.shapes.values())
            else "<op>_gpu curves: the same calls queued behind a sleeping kernel (the GPU's time alone). "
        )
        + "peak_tflops: bf16 square matmul of random data; hbm_gbps: device-to-device copy, read+write "
        "bytes; cpu_gflops: the predictor MLP on the CPU at its largest batch. "
        "Costs of the live executor outside the ops, from live runs of the first MoE layers of each "
        + (
            "shape: host_layer per shape = the host thread's busy time per step of a resident run, less "
            "its step probe and the ops' launch times, per MoE layer; gpu_layer per shape = the GPU time per "
            f"MoE layer at which the {100 * HOST_FIT_QUANTILE:.0f}th percentile over steps of (live - "
            "simulated) step time of that run is zero; "
            if any(r.host_busy_s for r in result.host_runs)
            else f"shape: host_layer per shape = the {100 * HOST_FIT_QUANTILE:.0f}th percentile over steps "
            "of (live - simulated) step time of a resident run, per MoE layer; "
        )
        + (
            "copy.issue_s = the host time per copy that a live oracle run of the first shape into a "
            "quarter-size cache spent committing copies to copy streams and handling them once landed "
            "(its counters); the fits over the steps whose host probe showed the fast level (a slowdown "
            "only adds time, and not every one shows in the probe)."
            if any(r.counters.get("live_transfers") for r in result.host_runs)
            else "copy.issue_s = the host time per copy at which that percentile is zero for a live oracle "
            "run of the first shape into a quarter-size cache (by bisection; all over the steps whose host "
            "probe showed the fast level: a slowdown only adds time, and not every one shows in the probe)."
        )
        + _scales_note(result)
        + copies_note
        + _delays_note(result.stream_delays, delayed_copy_s)
        + (f" {result.notes}" if result.notes else "")
        + (
            f" Host-bound measurements (launch overhead, op curves, host-cost runs) each waited for the host "
            f"core's fast level first and were repeated when the core ended them slow (sim.host_speed probe "
            f"{result.host_probe_s * 1e6:.0f} us; {sum(g['waited_s'] for g in result.host_gates):.1f} s of "
            f"waiting, {sum(g['attempts'] > 1 for g in result.host_gates)} phase(s) repeated)."
            if result.host_probe_s
            else ""
        )
    )
    return HardwareProfile(
        meta=ProfileMeta(
            name=name or _profile_name(result.gpu),
            source=source,
            gpu=result.gpu,
            driver=result.driver,
            torch=result.torch_version,
            date=result.date,
            notes=notes,
            host_probe_s=result.host_probe_s,
        ),
        copy=CopyProfile(
            latency_s=latency_s,
            pinned_gbps=pinned_gbps,
            pageable_gbps=pageable_gbps,
            engines=int(engines),
            link_gbps=most.aggregate_gbps,
            concurrency_factor=sharing,
            curve=CopyCurve(sizes, [p.pinned_s for p in copies], pageable if has_pageable else ()),
            serial=serial,
            issue_s=result.issue_s,
            **delays,
        ),
        compute=ComputeProfile(
            launch_overhead_s=result.launch_overhead_s,
            peak_tflops=result.matmul_tflops,
            hbm_gbps=result.device_bandwidth_gbps,
            cpu_gflops=max(cpu_gflops(result.shapes[s.name], s) for s in shapes) if shapes else 200.0,
            curves=tuple(curves),
        ),
    )


def undisturbed_copies(result: Calibration) -> tuple[list[CopyPoint], str]:
    """``result``'s copy points by size, the one at the stream hand-overs' size no slower than those
    copies back to back (``StreamDelays.period_s``), and the profile's words on it where it was.

    Both time the same copy on the same GPU minutes apart, and a disturbance only adds time: session
    10's fourth calibration timed DeepSeek-V2-Lite's 16.5 MiB expert at 331.2 us on the curve and one
    every 316.4 us back to back, where six other calibrations had 315.6-319.2 us; every copy the grid
    then simulated took 4.7% too long (link-bound rows +2.1 .. +4.3%)."""
    copies = sorted(result.copies, key=lambda p: p.size_bytes)
    measured = result.stream_delays
    point = next((p for p in copies if measured and p.size_bytes == measured.size_bytes), None)
    if measured is None or point is None or point.pinned_s <= measured.period_s:
        return copies, ""
    note = (
        f" The copy curve's point at {measured.size_bytes / MIB:.1f} MiB ({point.pinned_s * 1e6:.1f} us) was "
        f"slower than the same copies back to back ({measured.period_s * 1e6:.1f} us, below): taken as the "
        "latter (a disturbance only adds time)."
    )
    fixed = dataclasses.replace(point, pinned_s=measured.period_s)
    return [fixed if p is point else p for p in copies], note


def _listed_scales(scales: dict[str, float]) -> str:
    """Fitted factors per shape, for the profile's notes and the summary."""
    return ", ".join(f"{name} x{scale:.3f}" for name, scale in scales.items())


def _scales_note(result: Calibration) -> str:
    """The profile's words on the fitted factors on the ops' GPU times (none: as measured)."""
    quantile = f"the {100 * HOST_FIT_QUANTILE:.0f}th percentile of (live - simulated) step time is zero"
    return (
        f" <op>_gpu and <op>_copying curves scaled per shape ({_listed_scales(result.gpu_scale)}): its "
        f"resident run was faster than its ops allow with no gap between them; the factor at which "
        f"{quantile} with gpu_layer 0."
        if result.gpu_scale
        else ""
    ) + (
        f" <op>_copying curves scaled per shape ({_listed_scales(result.copying_scale)}): the factor at "
        f"which {quantile} for a resident decode on the resident run's model with a chain of copies "
        "(expert-sized, or larger where the stream's queue would not hold that many) keeping the link busy "
        "throughout, simulated with every op at its time beside copies."
        if result.copying_scale
        else ""
    )


def _delays_note(measured: StreamDelays | None, copy_s: float) -> str:
    if measured is None:
        return ""
    return (
        f" Stream hand-overs (sim.stream_delays, copies of {measured.size_bytes / MIB:.1f} MiB, "
        f"{copy_s * 1e6:.1f} us on the copy curve; each sequence queued behind a sleeping kernel): "
        f"{COPIES} committed back to back, each behind a passed marker, one every "
        f"{measured.period_s * 1e6:.1f} us (gap_s: the excess over the curve); a copy behind a "
        f"compute-stream marker landed {measured.gated_s * 1e6:.1f} us after it (gate_delay_s: the "
        f"excess); a small graph op behind a copy's landing ended {measured.landed_op_s * 1e6:.1f} us after "
        f"it, {measured.op_alone_s * 1e6:.1f} us alone (landing_delay_s: the difference); one copy on the "
        f"idle copy stream behind a passed marker took {measured.alone_s * 1e6:.1f} us."
    )


def _profile_name(gpu: str) -> str:
    words = gpu.lower().replace("nvidia", "").split()
    return "-".join(words) or "profile"


def write_profile(
    result: Calibration, shapes: Sequence[ModelShape], path: str, name: str = "", smoke: bool = False
) -> None:
    to_profile(result, shapes, name, smoke).save(path)


def _first(curve: Any) -> float:
    """A curve's first point (attention's: the first batch at the first context)."""
    return float(curve[0][0] if isinstance(curve[0], list) else curve[0])


def summary_text(result: Calibration) -> str:
    """A short human-readable table of the headline numbers."""
    copies = sorted(result.copies, key=lambda p: p.size_bytes)
    latency_s, gbps = fit_copy_line([p.size_bytes for p in copies], [p.pinned_s for p in copies])
    lines = [
        f"{result.gpu} | driver {result.driver or '-'} | torch {result.torch_version} | {result.date}",
        f"copies (pinned): {latency_s * 1e6:.1f} us + bytes / {gbps:.1f} GB/s; "
        f"link sharing {link_sharing_factor(result.concurrency):.2f}x over "
        f"{max(p.streams for p in result.concurrency)} streams; engines {result.copy_engines}",
        f"launch {result.launch_overhead_s * 1e6:.1f} us | matmul {result.matmul_tflops:.0f} TFLOP/s | "
        f"device memory {result.device_bandwidth_gbps:.0f} GB/s",
    ]
    if result.host_layer_s:
        per_layer = ", ".join(f"{k} {v * 1e6:+.0f} us" for k, v in result.host_layer_s.items())
        lines.append(
            f"live executor host costs: {result.issue_s * 1e6:.1f} us per copy; per layer {per_layer}"
        )
    if result.gpu_layer_s:
        gaps = ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in result.gpu_layer_s.items())
        lines.append(f"GPU time per MoE layer outside the ops: {gaps}")
    if result.gpu_scale:
        scales = _listed_scales(result.gpu_scale)
        lines.append(f"ops' GPU times against their curves, in a resident decode with no gap: {scales}")
    if result.copying_scale:
        scales = _listed_scales(result.copying_scale)
        lines.append(f"ops beside copies, against their curves, in a decode with the link busy: {scales}")
    for name, t in result.shapes.items():
        if t.host_s:
            launches = ", ".join(f"{op} {v[0] * 1e6:.1f}" for op, v in t.host_s.items() if op != "attention")
            lines.append(f"{name}: launch times (us, 1 token): {launches}")
        if t.gpu_s and t.copying_s:
            slower = ", ".join(
                f"{op} {_first(t.copying_s[op]) / _first(t.gpu_s[op]):.2f}x" for op in t.copying_s
            )
            lines.append(
                f"{name}: GPU time beside copies against alone (1 token, shortest context): {slower}"
            )
        if t.predictor_share is not None:
            lines.append(
                f"{name}: the compute stream loses {t.predictor_share:.2f} of the predictor's GPU time"
            )
    if result.host_gates:
        probes = ", ".join(f"{g['phase']} {g['probe_s'] * 1e6:.0f}" for g in result.host_gates)
        lines.append(
            f"host gate: fast-level probe {result.host_probe_s * 1e6:.0f} us; at each phase (us): {probes}"
        )
    for name, t in result.shapes.items():
        lines.append(
            f"{name}: attention {t.attention_s[0][0] * 1e6:.0f}-{t.attention_s[0][-1] * 1e6:.0f} us "
            f"(ctx {t.contexts[0]}-{t.contexts[-1]}), expert {t.expert_s[0] * 1e6:.0f} us (1 token), "
            f"norm {t.norm_s[0] * 1e6:.0f} us, router {t.router_s[0] * 1e6:.0f} us, "
            f"predictor {t.predictor_gpu_s[0] * 1e6:.0f} us GPU / {t.predictor_cpu_s[0] * 1e6:.0f} us CPU"
        )
    return "\n".join(lines)
