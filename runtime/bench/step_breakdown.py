"""Where a decode step goes, read off a profiler trace: every GPU kernel and copy (on a CPU:
every top-level torch op) is put in a part of the step, and each step's time is split among the
parts and the host gap, which sum to the step.

The rules, each a pure function tested on synthetic events:

* Name: the part of the first pattern of ``PATTERNS`` that matches the name (case-insensitive),
  else ``other``.
* Position: activities belong to the step whose host call launched them (a kernel's launch is
  its runtime call, found by correlation id). In each step, the last run of consecutive GEMMs
  (copies and communication aside) is the ``LM head``, and what follows it (copies and
  communication aside) is ``sampling``.
* Time: a step lasts from its start on the host to the next step's start. Within that window,
  time where activities overlap is split evenly among them, and the time no activity covers is
  the ``host gap``.
* GPU idle between steps: from the end of step n's last activity to the start of step n+1's
  first (0 where they overlap).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

COPIES, COMM, GEMM, LM_HEAD, SAMPLING, OTHER, HOST = (
    "copies", "communication", "GEMM", "LM head", "sampling", "other", "host gap")

PATTERNS: tuple[tuple[str, str], ...] = (
    # the device's memory copies and sets the profiler records beside kernels
    (COPIES, r"^memcpy|^memset"),
    # NCCL, PyTorch's symmetric-memory all-reduce (runtime.custom_all_reduce), solidx's
    # all-reduce fused with the RMSNorm after it (_all_reduce_rms_norm_kernel), c10d on a CPU
    (COMM, r"nccl|all_?reduce|all_?gather|reduce_?scatter|one_shot|two_shot|multimem|c10d"),
    # solidx's Triton kernels of runtime/attention, flash kernels, the reference's CPU ops
    ("attention", r"^_paged_custom_kernel|^_paged_v2_kernel|^_reduce_kernel|^_prefill_kernel"
                  r"|^_store_kernel|paged_attention|flash|fmha"
                  r"|^aten::(einsum|_?softmax|repeat_interleave|masked_fill_|_?index_put_?"
                  r"(impl_)?)$"),
    # cuBLAS / cuBLASLt (nvjet, sm90 xmma, gemv, split-K reduce), CUTLASS, gradlib's Triton
    # GEMMs (gradlib/kernels), torch's matrix products on a CPU
    (GEMM, r"gemm|gemv|nvjet|xmma|cutlass|cublas|splitkreduce"
           r"|^(tiled|stream|stream_dot|skinny)_kernel$"
           r"|^aten::(linear|mm|addmm|matmul|bmm|_scaled_mm)$"),
    # solidx's fused Triton kernels (RMSNorm, rotary, SiLU, fp8 input quantization) and the
    # framework's elementwise, reduction, index and copy kernels; every other torch op on a CPU
    ("norms & elementwise", r"rms|norm|rotary|rope|silu|act_and_mul|quant|elementwise"
                            r"|reduce_kernel|index|gather|scatter|catarray|copy|fill|^aten::"),
)
"""``(part, regular expression)`` in the order they are tried."""

PARTS: tuple[str, ...] = (GEMM, LM_HEAD, "attention", "norms & elementwise", COMM, SAMPLING,
                          COPIES, OTHER, HOST)
"""Every part, in the order tables and pictures show them."""

_COMPILED = tuple((part, re.compile(pattern, re.IGNORECASE)) for part, pattern in PATTERNS)


def classify(name: str) -> str:
    """The part a kernel or op of this name belongs to, by ``PATTERNS``; ``other`` if none."""
    return next((part for part, pattern in _COMPILED if pattern.search(name)), OTHER)


@dataclass(frozen=True)
class Activity:
    """One kernel, copy or CPU op: its start and end (microseconds, one clock for host and
    device) and when the host launched it (a CPU op's own start)."""

    name: str
    start: float
    end: float
    launched: float


def label(step: Sequence[Activity]) -> list[str]:
    """The part of each of one step's activities (in start order): its name's part, with the
    last run of GEMMs taken as the LM head and the compute after it as sampling."""
    parts = [classify(a.name) for a in step]
    compute = [i for i, part in enumerate(parts) if part not in (COPIES, COMM)]
    gemms = [i for i in compute if parts[i] == GEMM]
    if not gemms:
        return parts
    at = compute.index(gemms[-1])
    for i in compute[at + 1:]:
        parts[i] = SAMPLING
    while at >= 0 and parts[compute[at]] == GEMM:
        parts[compute[at]] = LM_HEAD
        at -= 1
    return parts


def split_time(spans: Sequence[tuple[float, float, str]], start: float,
               end: float) -> dict[str, float]:
    """The time each part's spans ``(start, end, part)`` cover inside ``[start, end)``, where
    time that several spans cover is split evenly among them: the values sum to the union of
    the spans inside the window."""
    edges: list[tuple[float, int, str]] = []
    for s, e, part in spans:
        s, e = max(s, start), min(e, end)
        if e > s:
            edges += [(s, 1, part), (e, -1, part)]
    edges.sort(key=lambda edge: edge[0])
    active: Counter[str] = Counter()
    covered: defaultdict[str, float] = defaultdict(float)
    running, last = 0, start
    for t, delta, part in edges:
        if running and t > last:
            for name, count in active.items():
                if count:
                    covered[name] += (t - last) * count / running
        active[part] += delta
        running += delta
        last = t
    return dict(covered)


def idle_between(steps: Sequence[Sequence[Activity]]) -> list[float]:
    """For each pair of consecutive steps that both ran something: the time from the first
    one's last activity ending to the second one's first starting (0 if they overlap)."""
    ran = [step for step in steps if step]
    return [max(0.0, min(a.start for a in after) - max(a.end for a in before))
            for before, after in zip(ran, ran[1:])]


def top_level(ops: Sequence[Activity]) -> list[Activity]:
    """The ops (of one thread) that no other op contains, in start order."""
    kept: list[Activity] = []
    for op in sorted(ops, key=lambda a: (a.start, -a.end)):
        if not kept or op.start >= kept[-1].end:
            kept.append(op)
    return kept


@dataclass
class PartTime:
    """One part of the mean step: milliseconds, percent of the step, activities started."""

    part: str
    ms: float
    percent: float
    count: float


@dataclass
class NameTime:
    """One kernel (or op) name in one part: mean milliseconds and launches per step."""

    name: str
    part: str
    ms: float
    count: float


@dataclass
class StepBreakdown:
    """The mean of ``steps`` decode steps: ``step_ms`` split into ``parts`` (in ``PARTS``
    order, the host gap last, summing to ``step_ms``); ``idle_between_us``: the idle time at
    each step boundary; ``names``: time by kernel or op name, longest first. ``on_gpu``: GPU
    kernels and copies were timed, else top-level CPU ops; ``source`` says which in words."""

    on_gpu: bool
    source: str
    steps: int
    step_ms: float
    parts: list[PartTime]
    idle_between_us: list[float]
    names: list[NameTime]

    @property
    def idle_mean_us(self) -> float:
        return sum(self.idle_between_us) / len(self.idle_between_us) if self.idle_between_us \
            else float("nan")

    @property
    def idle_max_us(self) -> float:
        return max(self.idle_between_us, default=float("nan"))


def breakdown(activities: Sequence[Activity], step_starts: Sequence[float], last_end: float,
              skip: int, on_gpu: bool, source: str) -> StepBreakdown:
    """The breakdown of the steps ``skip`` .. ``len(step_starts) - 2`` (each up to the next
    step's start; the last step only closes the window and gives the last idle gap).
    ``last_end`` is when the last step ended on the host; an activity launched outside
    ``[step_starts[0], last_end]`` belongs to no step."""
    if len(step_starts) < skip + 2:
        raise ValueError(f"{len(step_starts)} steps recorded: {skip + 2} needed (skip {skip})")
    steps: list[list[Activity]] = [[] for _ in step_starts]
    for a in sorted(activities, key=lambda a: a.start):
        if step_starts[0] <= a.launched <= last_end:
            steps[bisect.bisect_right(step_starts, a.launched) - 1].append(a)
    labelled = [(a, part) for step in steps for a, part in zip(step, label(step))]
    windows = list(zip(step_starts[skip:-1], step_starts[skip + 1:]))
    totals: defaultdict[str, float] = defaultdict(float)
    counts: Counter[str] = Counter()
    by_name: defaultdict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    spans = [(a.start, a.end, part) for a, part in labelled]
    for start, end in windows:
        for part, time in split_time(spans, start, end).items():
            totals[part] += time
        totals[HOST] += end - start
    for a, part in labelled:
        if any(start <= a.start < end for start, end in windows):
            counts[part] += 1
            entry = by_name[(a.name, part)]
            entry[0] += a.end - a.start
            entry[1] += 1
    totals[HOST] -= sum(time for part, time in totals.items() if part != HOST)
    n = len(windows)
    step_us = sum(end - start for start, end in windows) / n
    parts = [PartTime(part, totals[part] / n / 1e3, 100 * totals[part] / n / step_us,
                      counts[part] / n) for part in PARTS]
    names = [NameTime(name, part, time / n / 1e3, count / n)
             for (name, part), (time, count) in by_name.items()]
    names.sort(key=lambda entry: -entry.ms)
    idle = idle_between(steps[skip:])
    return StepBreakdown(on_gpu, source, n, step_us / 1e3, parts, idle, names)


GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
CLOCK_SLACK_US = 1000.0
"""A GPU record that starts more than this before its own launch call is one CUPTI corrupted
(pytorch/pytorch#192021: the first records of a session may carry another clock's time)."""


def from_trace(events: Sequence[dict[str, Any]], step_name: str, skip: int,
               on_gpu: bool) -> StepBreakdown:
    """:func:`breakdown` of a Chrome trace's events (``torch.profiler``'s export), whose steps
    are the ``user_annotation`` ranges named ``step_name``. On a GPU the activities are its
    kernels and copies; on a CPU, the top-level ``cpu_op`` events of the steps' thread."""
    marks = sorted((e for e in events
                    if e.get("cat") == "user_annotation" and e.get("name") == step_name),
                   key=lambda e: e["ts"])
    if not marks:
        raise ValueError(f"the trace has no {step_name!r} ranges")
    starts = [float(m["ts"]) for m in marks]
    last_end = float(marks[-1]["ts"]) + float(marks[-1]["dur"])
    if on_gpu:
        launches = {e["args"]["correlation"]: float(e["ts"]) for e in events
                    if e.get("cat") in LAUNCH_CATEGORIES and "correlation" in e.get("args", {})}
        recorded = [_activity(e, launches.get(e.get("args", {}).get("correlation")))
                    for e in events if e.get("cat") in GPU_CATEGORIES]
        activities = [a for a in recorded if a.start >= a.launched - CLOCK_SLACK_US]
        if not activities:
            raise RuntimeError("the profiler recorded no GPU kernels (is CUPTI available?)")
        source = "GPU kernels and copies"
    else:
        thread = marks[0].get("tid")
        activities = top_level([_activity(e, None) for e in events
                                if e.get("cat") == "cpu_op" and e.get("tid") == thread])
        source = "CPU ops (no GPU: top-level torch ops by name; host gap = Python outside them)"
    return breakdown(activities, starts, last_end, skip, on_gpu, source)


def _activity(event: dict[str, Any], launched: float | None) -> Activity:
    start = float(event["ts"])
    return Activity(event["name"], start, start + float(event.get("dur", 0.0)),
                    start if launched is None else launched)
