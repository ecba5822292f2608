"""Timing rules: statistics, rotating copies, modes, interleaving, calibration; graph replay
on a GPU."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from solidx.gradlib.operands import make_operands
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.timing import (
    EagerTimer,
    GraphTimer,
    Timer,
    Timing,
    TimingConfig,
    calibrate,
    copy_bandwidth,
    interleave,
    l2_bytes,
    make_timer,
    measure,
    rotating_copies,
    time_calls,
)


def test_timing_median_and_spread() -> None:
    t = Timing.of([1.0, 3.0, 2.0, 2.0])
    assert (t.median_ms, t.min_ms, t.max_ms, t.samples) == (2.0, 1.0, 3.0, 4)
    assert t.spread == pytest.approx(1.0)
    with pytest.raises(ValueError):
        Timing.of([])


def test_config_validation_and_modes() -> None:
    cpu = torch.device("cpu")
    assert TimingConfig().resolved_mode(cpu) == "wall"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        TimingConfig(mode="graph").resolved_mode(cpu)
    for bad in (dict(mode="fast"), dict(min_launches=0), dict(min_launches=5, max_launches=4),
                dict(screen_repeats=0)):
        with pytest.raises(ValueError):
            TimingConfig(**bad)


def test_rotating_copies_are_separate_equal_buffers() -> None:
    problem = GemmProblem(32, 4, 64, bias=True)
    ops = make_operands(problem)
    copies = rotating_copies(ops, TimingConfig())
    assert len(copies) == 2 and copies[0] is ops  # no L2 on CPU: the minimum
    a, b = copies
    assert a.w.data_ptr() != b.w.data_ptr() and a.x.data_ptr() != b.x.data_ptr()
    assert torch.equal(a.w.float(), b.w.float()) and torch.equal(a.bias, b.bias)
    assert b.scale_w is a.scale_w
    assert (a.w.float() != 0).float().mean() > 0.9 and a.x.float().std() > 0  # random, not zeros


class _Recorder(Timer):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def sample(self) -> float:
        self.log.append(self.name)
        return float(len(self.log))


def test_interleave_rotates_the_order() -> None:
    log: list[str] = []
    timings = interleave([_Recorder("A", log), _Recorder("B", log), _Recorder("C", log)], 3)
    assert "".join(log) == "ABCBCACAB"
    assert [t.samples for t in timings] == [3, 3, 3]


def test_calibrate_and_wall_timer() -> None:
    problem = GemmProblem(16, 1, 16)
    copies = rotating_copies(make_operands(problem), TimingConfig())
    calls = []

    def run(ops):
        calls.append(ops)
        time.sleep(0.001)
        return ops.x

    config = TimingConfig(target_ms=5.0, min_launches=1, max_launches=8, warmup=1)
    launches = calibrate(run, copies, config)
    assert 3 <= launches <= 6
    capped = TimingConfig(target_ms=100.0, min_launches=1, max_launches=8)
    assert calibrate(run, copies, capped) == 8
    calls.clear()
    timing = measure(make_timer(run, copies, 4, config), 2)
    assert 1.0 <= timing.median_ms < 10.0
    assert len(calls) == 1 + 2 * 4  # warm-up, then two samples of four calls
    assert {id(c) for c in calls} == {id(c) for c in copies}  # every copy is used


def test_time_calls_warms_up_then_samples() -> None:
    calls: list[float] = []

    def fn() -> None:
        calls.append(time.perf_counter())
        time.sleep(0.001)

    timing = time_calls(fn, torch.device("cpu"), calls=3, repeats=4, warmup=2)
    assert len(calls) == 2 + 3 * 4 and timing.samples == 4
    assert 1.0 <= timing.min_ms <= timing.median_ms <= timing.max_ms < 50.0
    with pytest.raises(ValueError):
        time_calls(fn, torch.device("cpu"), calls=0)
    assert copy_bandwidth(torch.device("cpu"), 1 << 20) > 0


def test_the_benchmarks_read_no_clock_of_their_own() -> None:
    """Every timer is in gradlib/timing.py: the benchmarks call it, not the clocks."""
    root = Path(__file__).resolve().parents[1]
    for path in [root / "gradlib" / "bench_gemm.py", *(root / "runtime" / "bench").glob("*.py")]:
        text = path.read_text()
        for clock in ("perf_counter", "cuda.Event", "elapsed_time"):
            assert clock not in text, f"{path.relative_to(root)} reads {clock}"


@pytest.mark.gpu
def test_graph_replay_times_rotating_matmuls() -> None:
    device = torch.device("cuda")
    problem = GemmProblem(4096, 1, 4096, dtype=torch.bfloat16, outdtype=torch.bfloat16)
    copies = rotating_copies(make_operands(problem, device), TimingConfig())
    total = sum(c.w.numel() * c.w.element_size() for c in copies)
    assert total >= 4 * l2_bytes(device) or len(copies) == TimingConfig().max_copies

    def run(ops):
        return torch.nn.functional.linear(ops.x, ops.w)

    launches = calibrate(run, copies, TimingConfig())
    graph = GraphTimer(run, copies, launches)
    eager = EagerTimer(run, copies, launches)
    g, e = interleave([graph, eager], 10)
    graph.close()
    floor_ms = problem.weight_bytes / 5e12 * 1e3  # no card reads faster than 5 TB/s
    assert floor_ms < g.median_ms <= e.median_ms * 1.05
