"""Tunes of one tuned file: concurrent runs share the work, problems too big for the device are
refused before allocating, a killed run's temp files go, the log is no link (issue 18 item 5)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from solidx.gradlib.dtypes import FP8
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.safe_files import UnsafeFileError
from solidx.gradlib.timing import TimingConfig
from solidx.gradlib.tune_limits import too_big, tune_bytes
from solidx.gradlib.tune_options import TuneOptions
from solidx.gradlib.tuned_file import read_tuned
from solidx.gradlib.tuner import tune_problems

ROOT = Path(__file__).resolve().parents[1]
FAST = TimingConfig(target_ms=2.0, min_launches=1, max_launches=4, warmup=1, screen_repeats=3,
                    final_rounds=5)
OPTIONS = TuneOptions(backends=("triton",), timing=FAST, progress=False, backend_overrides={
    "default": "tests.tuner_fakes:SlowDefault", "triton": "tests.tuner_fakes:FastBackend"})

SCRIPT = textwrap.dedent("""
    import sys
    from solidx.gradlib.problem import GemmProblem
    from solidx.gradlib.timing import TimingConfig
    from solidx.gradlib.tune_options import TuneOptions
    from solidx.gradlib.tuner import tune_problems
    problems = [GemmProblem(16 * (i + 1), 1 + i, 32) for i in range(8)]
    timing = TimingConfig(target_ms=2.0, min_launches=1, max_launches=4, warmup=1,
                          screen_repeats=5, final_rounds=20)
    options = TuneOptions(backends=("triton",), timing=timing, progress=False, backend_overrides={
        "default": "tests.tuner_fakes:SlowDefault", "triton": "tests.tuner_fakes:FastBackend"})
    report = tune_problems(problems, sys.argv[1], options)
    print("RESULT", len(report.results), len(report.skipped))
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def test_two_concurrent_tunes_share_the_work(tmp_path: Path) -> None:
    tuned = tmp_path / "tuned.csv"
    cmd = [sys.executable, "-c", SCRIPT, str(tuned)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    counts = [tuple(map(int, out.split("RESULT")[1].split())) for out, _ in outputs]
    tuned_counts = [c[0] for c in counts]
    assert sum(tuned_counts) == 8, counts  # every problem tuned once, by one of the two
    assert all(c[0] + c[1] == 8 for c in counts), counts
    rows = read_tuned(tuned)
    assert len(rows) == 8 and len({r.identity() for r in rows}) == 8
    assert not Path(f"{tuned}.claims.json").exists() or Path(
        f"{tuned}.claims.json").read_text().strip() == "{}"


def test_a_problem_too_big_for_the_device_is_refused_before_allocating(tmp_path: Path) -> None:
    huge = GemmProblem(2**20, 2**20, 2**20, dtype=FP8, outdtype=torch.bfloat16)
    assert too_big(huge, 80 * 2**30) and "needs at least" in too_big(huge, 80 * 2**30)
    assert too_big(GemmProblem(16, 1, 32), 2**30) is None
    assert tune_bytes(GemmProblem(16, 1, 32, dtype=FP8, outdtype=torch.bfloat16)) > 0
    tuned = tmp_path / "tuned.csv"
    small = GemmProblem(16, 1, 32)
    report = tune_problems([huge, small], tuned, OPTIONS)
    by_key = {r.problem.key(): r for r in report.results}
    assert by_key[huge.key()].row is None
    assert "needs at least" in by_key[huge.key()].error
    assert by_key[small.key()].row is not None
    assert [r.problem.key() for r in read_tuned(tuned)] == [small.key()]


def test_a_killed_tunes_temp_file_is_removed_at_start(tmp_path: Path) -> None:
    tuned = tmp_path / "tuned.csv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".tuned.csv.{dead.stdout.strip()}.x1y2.tmp"
    stale.write_text("M,N,K\n")
    tune_problems([GemmProblem(16, 1, 32)], tuned, OPTIONS)
    assert not stale.exists()
    assert list(tmp_path.glob(".*.tmp")) == []


def test_the_candidates_log_is_not_written_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    tuned = tmp_path / "tuned.csv"
    Path(f"{tuned}.candidates.jsonl").symlink_to(victim)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        tune_problems([GemmProblem(16, 1, 32)], tuned, OPTIONS)
    assert victim.read_text() == "keep\n"
