"""How solidx times a GEMM: honest numbers for calls that take a few microseconds.

Rules (the project design, "Timing rules"):

* Inputs are random, never zeros (:func:`gradlib.operands.make_operands`).
* Calls rotate over copies of the operands so that the working set is several times the L2
  cache (:func:`rotating_copies`): a weight is never served from the cache of the call before.
* Warm-up calls run first (they compile kernels, grow workspaces); then one *sample* times
  ``launches`` back-to-back calls and divides: CUDA-graph replay of the captured calls
  (``graph``, the default on CUDA: no launch overhead, as in the runtime's decode graphs), CUDA
  events around eager calls (``eager``), or the wall clock on CPU (``wall``, for CI).
* A result is the median of several samples, with their spread (:class:`Timing`);
  :func:`interleave` samples several timers in turns (A B A B) so that clock and thermal drift
  hit all of them alike.

Every clock solidx's timers and benchmarks read is read here: :class:`Stopwatch` (the wall
clock around a block, the device synchronized at both ends) and :class:`EventClock` (CUDA
events) under the GEMM timers above and the benchmarks' :func:`time_calls` (any callable of no
arguments); :func:`copy_bandwidth` is the device-to-device copy bandwidth that every
benchmark's GB/s is set against.
"""
from __future__ import annotations

import math
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from solidx.gradlib.operands import GemmOperands

Run = Callable[[GemmOperands], torch.Tensor]
MODES = ("auto", "graph", "eager", "wall")


@dataclass(frozen=True)
class TimingConfig:
    """How much to measure. ``mode`` ``auto`` is ``graph`` on CUDA and ``wall`` on CPU."""

    mode: str = "auto"
    target_ms: float = 1.0          # wanted duration of one sample (sets ``launches``)
    min_launches: int = 10
    max_launches: int = 500
    warmup: int = 3                 # eager calls before capture/timing
    screen_repeats: int = 5         # samples per candidate while screening
    final_rounds: int = 15          # interleaved samples per finalist
    l2_factor: float = 4.0          # working set ≥ l2_factor × L2
    max_copies: int = 64

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"timing mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.min_launches < 1 or self.max_launches < self.min_launches:
            raise ValueError("need 1 ≤ min_launches ≤ max_launches")
        if self.screen_repeats < 1 or self.final_rounds < 1 or self.warmup < 0:
            raise ValueError("screen_repeats and final_rounds must be ≥ 1, warmup ≥ 0")

    def resolved_mode(self, device: torch.device) -> str:
        if self.mode == "auto":
            return "graph" if device.type == "cuda" else "wall"
        if self.mode in ("graph", "eager") and device.type != "cuda":
            raise ValueError(f"timing mode {self.mode!r} needs a CUDA device, not {device}")
        return self.mode


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: the median of ``samples`` samples and their range."""

    median_ms: float
    min_ms: float
    max_ms: float
    samples: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        if not samples:
            raise ValueError("no samples")
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    @property
    def spread(self) -> float:
        """(max − min) / median: how much the samples disagree (0.02 = 2 %)."""
        return (self.max_ms - self.min_ms) / self.median_ms if self.median_ms > 0 else math.nan


def l2_bytes(device: torch.device) -> int:
    """The device's L2 cache size (0 on CPU)."""
    if device.type != "cuda":
        return 0
    return int(torch.cuda.get_device_properties(device).L2_cache_size)


def _nbytes(ops: GemmOperands) -> int:
    return sum(t.numel() * t.element_size() for t in ops.tensors())


def rotating_copies(ops: GemmOperands, config: TimingConfig) -> list[GemmOperands]:
    """``ops`` and clones of its x, w and bias (scales shared) so that all copies together are
    at least ``config.l2_factor`` × L2 (at least two copies, at most ``config.max_copies``)."""
    device = ops.w.device
    wanted = config.l2_factor * l2_bytes(device)
    count = max(2, min(config.max_copies, math.ceil(wanted / max(1, _nbytes(ops)))))
    copies = [ops]
    for _ in range(count - 1):
        copies.append(GemmOperands(
            ops.x.clone(), ops.w.clone(), ops.scale_x, ops.scale_w,
            None if ops.bias is None else ops.bias.clone(),
        ))
    return copies


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_seconds() -> float:
    """A reading of the wall clock the Stopwatch uses (``time.perf_counter``), for benchmarks
    that time events rather than blocks (a streamed response's chunks)."""
    return time.perf_counter()


class Stopwatch:
    """The wall clock around a block: ``with Stopwatch(device) as watch: ...``. The device is
    synchronized on entry and on exit, so queued GPU work counts in the block that queued it.
    ``start`` is the ``time.perf_counter()`` reading at entry (the clock of the engine's request
    metrics), ``seconds`` the block's duration once it has exited."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = math.nan
        self.seconds = math.nan

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def wall_ms(work: Callable[[], object], device: torch.device) -> float:
    """Milliseconds ``work()`` takes by the wall clock (:class:`Stopwatch`)."""
    with Stopwatch(device) as watch:
        work()
    return watch.seconds * 1e3


class EventClock:
    """CUDA events on ``device``'s current stream: :meth:`ms` records one before and one after
    ``work()`` queues its kernels, waits for the second and returns the milliseconds between
    them. The pair is made once and reused, so a sample adds two event records to what it
    times and nothing more."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def ms(self, work: Callable[[], object]) -> float:
        stream = torch.cuda.current_stream(self.device)
        self.start.record(stream)
        work()
        self.end.record(stream)
        self.end.synchronize()
        return self.start.elapsed_time(self.end)


class Timer(ABC):
    """Times one callable over rotating copies; each :meth:`sample` is ms per call."""

    def __init__(self, run: Run, copies: Sequence[GemmOperands], launches: int) -> None:
        self.run, self.copies, self.launches = run, list(copies), launches
        self.device = self.copies[0].w.device

    def _calls(self) -> None:
        n = len(self.copies)
        for i in range(self.launches):
            self.run(self.copies[i % n])

    @abstractmethod
    def sample(self) -> float: ...

    def close(self) -> None:
        """Release what the timer holds (a captured graph and its memory)."""


class WallTimer(Timer):
    """The wall clock around the calls (CPU): :func:`wall_ms`."""

    def sample(self) -> float:
        return wall_ms(self._calls, self.device) / self.launches


class EagerTimer(Timer):
    """CUDA events around eagerly launched calls (launch overhead included): :class:`EventClock`."""

    def __init__(self, run: Run, copies: Sequence[GemmOperands], launches: int) -> None:
        super().__init__(run, copies, launches)
        self.clock = EventClock(self.device)

    def sample(self) -> float:
        return self.clock.ms(self._calls) / self.launches


class GraphTimer(EagerTimer):
    """The calls captured once in a CUDA graph; a sample times one replay by CUDA events."""

    def __init__(self, run: Run, copies: Sequence[GemmOperands], launches: int) -> None:
        super().__init__(run, copies, launches)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._calls()
        self.graph.replay()
        synchronize(self.device)

    def sample(self) -> float:
        return self.clock.ms(self.graph.replay) / self.launches

    def close(self) -> None:
        self.graph.reset()


_TIMERS: dict[str, type[Timer]] = {"graph": GraphTimer, "eager": EagerTimer, "wall": WallTimer}


def warm_up(run: Run, copies: Sequence[GemmOperands], calls: int) -> None:
    """Run ``calls`` eager calls (on a side stream on CUDA, as graph capture wants) and wait."""
    device = copies[0].w.device
    if device.type != "cuda":
        for i in range(calls):
            run(copies[i % len(copies)])
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for i in range(calls):
            run(copies[i % len(copies)])
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)


def make_timer(run: Run, copies: Sequence[GemmOperands], launches: int,
               config: TimingConfig) -> Timer:
    """Warm ``run`` up and build the timer of ``config``'s mode for this device."""
    mode = config.resolved_mode(copies[0].w.device)
    warm_up(run, copies, config.warmup)
    return _TIMERS[mode](run, copies, launches)


def calibrate(run: Run, copies: Sequence[GemmOperands], config: TimingConfig) -> int:
    """The number of calls per sample that makes a sample last about ``config.target_ms``
    for ``run``, within the config's bounds and at least one pass over the copies."""
    warm_up(run, copies, config.warmup)
    probe = _TIMERS["eager" if copies[0].w.device.type == "cuda" else "wall"](run, copies, 3)
    per_call = max(min(probe.sample() for _ in range(3)), 1e-6)
    launches = math.ceil(config.target_ms / per_call)
    launches = max(launches, len(copies), config.min_launches)
    return min(launches, config.max_launches)


def measure(timer: Timer, repeats: int) -> Timing:
    """The median of ``repeats`` samples of one timer."""
    return Timing.of([timer.sample() for _ in range(repeats)])


def interleave(timers: Sequence[Timer], rounds: int) -> list[Timing]:
    """Sample every timer once per round, the order rotated each round (A B C, B C A, ...)."""
    samples: list[list[float]] = [[] for _ in timers]
    for r in range(rounds):
        for i in range(len(timers)):
            j = (i + r) % len(timers)
            samples[j].append(timers[j].sample())
    return [Timing.of(s) for s in samples]


# ---------------------------------------------------------------- benchmarks' timers

COPY_BYTES = 1 << 30
"""Bytes of the copy :func:`copy_bandwidth` times on CUDA (far beyond any L2)."""
CPU_COPY_BYTES = 1 << 26
"""Bytes of that copy elsewhere (beyond a CPU's last-level cache)."""


def time_calls(fn: Callable[[], object], device: torch.device, *, calls: int = 5,
               repeats: int = 7, warmup: int = 5) -> Timing:
    """Milliseconds per call of ``fn`` (no arguments; it finds its own inputs): ``warmup`` calls
    (clocks up, kernels compiled), the device synchronized, then ``repeats`` samples of ``calls``
    back-to-back calls each, by CUDA events on CUDA (:class:`EventClock`) and the wall clock
    elsewhere (:func:`wall_ms`); their median and range."""
    if calls < 1 or repeats < 1 or warmup < 0:
        raise ValueError("need calls ≥ 1, repeats ≥ 1 and warmup ≥ 0")
    for _ in range(warmup):
        fn()
    synchronize(device)
    clock = EventClock(device).ms if device.type == "cuda" else partial(wall_ms, device=device)

    def work() -> None:
        for _ in range(calls):
            fn()

    return Timing.of([clock(work) / calls for _ in range(repeats)])


def copy_bandwidth(device: torch.device, nbytes: int | None = None) -> float:
    """GB/s of one device-to-device copy of ``nbytes`` random bytes (default
    :data:`COPY_BYTES` on CUDA, :data:`CPU_COPY_BYTES` elsewhere), counting the bytes read and
    the bytes written: the median of :func:`time_calls`."""
    if nbytes is None:
        nbytes = COPY_BYTES if device.type == "cuda" else CPU_COPY_BYTES
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_calls(lambda: dst.copy_(src), device).median_ms
    return 2 * nbytes / (ms * 1e-3) / 1e9
