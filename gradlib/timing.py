"""How solidx times a GEMM: honest numbers for calls that take a few microseconds.

Rules (DESIGN.md, "Timing rules"):

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
"""
from __future__ import annotations

import math
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    """``time.perf_counter`` around the calls (CPU)."""

    def sample(self) -> float:
        _sync(self.device)
        start = time.perf_counter()
        self._calls()
        _sync(self.device)
        return (time.perf_counter() - start) * 1e3 / self.launches


class EagerTimer(Timer):
    """CUDA events around eagerly launched calls (launch overhead included)."""

    def __init__(self, run: Run, copies: Sequence[GemmOperands], launches: int) -> None:
        super().__init__(run, copies, launches)
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def sample(self) -> float:
        self.start.record()
        self._calls()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / self.launches


class GraphTimer(EagerTimer):
    """The calls captured once in a CUDA graph; a sample times one replay."""

    def __init__(self, run: Run, copies: Sequence[GemmOperands], launches: int) -> None:
        super().__init__(run, copies, launches)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._calls()
        self.graph.replay()
        torch.cuda.synchronize(self.device)

    def sample(self) -> float:
        self.start.record()
        self.graph.replay()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / self.launches

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
