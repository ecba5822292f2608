"""The tuner end to end on CPU (default, fake backends that misbehave, Triton when present),
resume after a kill, the margin rule, the correctness gate, ROCm's command line; and on a GPU,
a Llama-3-8B decode problem with every available backend."""
from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from solidx.gradlib.csv_validate import validate
from solidx.gradlib.device import device_identity
from solidx.gradlib.dtypes import FP8
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.shapes_file import ShapeRow, write_shapes
from solidx.gradlib.timing import Timing, TimingConfig
from solidx.gradlib.tune_options import TuneOptions
from solidx.gradlib.tuned_file import read_tuned
from solidx.gradlib.tuner import choose_winner, run_workers, tune_problems
from solidx.gradlib.worker import Worker

ROOT = Path(__file__).resolve().parents[1]
FAST = TimingConfig(target_ms=2.0, min_launches=1, max_launches=4, warmup=1, screen_repeats=3,
                    final_rounds=5)
SLOW_DEFAULT = {"default": "tests.tuner_fakes:SlowDefault"}
TINY_FP8 = GemmProblem(32, 1, 64, dtype=FP8, outdtype=torch.bfloat16)


def options(triton_fake: str | None = None, **kwargs) -> TuneOptions:
    overrides = dict(SLOW_DEFAULT)
    if triton_fake:
        overrides["triton"] = f"tests.tuner_fakes:{triton_fake}"
    kwargs.setdefault("backends", ("triton",))
    return TuneOptions(timing=FAST, progress=False, backend_overrides=overrides, **kwargs)


def log_entries(tuned: Path, *stages: str) -> list[dict]:
    """The candidates log's entries of these stages (screen, final)."""
    lines = Path(f"{tuned}.candidates.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["stage"] in (stages or ("screen", "final"))]


def test_margin_rule() -> None:
    def t(ms: float) -> Timing:
        return Timing(ms, ms, ms, 1)

    assert choose_winner({"default:": t(1.0), "x:a=1": t(0.98)}, 0.03) == "default:"
    assert choose_winner({"default:": t(1.0), "x:a=1": t(0.96), "x:a=2": t(0.95)}, 0.03) == "x:a=2"
    assert choose_winner({"default:": t(1.0), "x:a=1": t(1.2)}, 0.0) == "default:"
    assert choose_winner({"default:": t(1.0)}, 0.03) == "default:"


def test_failing_candidates_are_isolated_and_a_good_one_wins(tmp_path: Path) -> None:
    tuned = tmp_path / "tuned.csv"
    report = tune_problems([TINY_FP8], tuned, options("FaultyBackend"))
    # the fake's specs (triton:kind=...) are no real Triton configurations: only that is wrong
    errors = validate(tuned)
    assert not report.failed and all("not a triton spec" in str(e) for e in errors), errors
    (row,) = read_tuned(tuned)
    assert row.libtype == "triton" and row.solution in ("triton:kind=good", "triton:kind=sleep500")
    assert row.speedup >= 1.03 and row.default_ms > row.soltimems
    assert row.device == device_identity("cpu").name and row.lib_version == "fake-1"
    assert row.torch_version == torch.__version__ and row.max_rel_err < 0.01 and row.tuned_at
    screened = [e for e in log_entries(tuned, "screen") if e["spec"] != "default:"]
    listed = log_entries(tuned, "list")
    assert [(e["libtype"], e["count"]) for e in listed] == [("triton", 8)]
    reasons = {e["spec"].removeprefix("triton:kind="): e["reason"] for e in screened}
    assert "RuntimeError: this candidate always fails" in reasons["raise"]
    assert reasons["zeros"].startswith("wrong result") and "inf" in reasons["nan"]
    assert "expected torch.bfloat16 [1, 32]" in reasons["shape"]
    assert "died" in reasons["exit"] and "exit code 7" in reasons["exit"]
    assert "SIGSEGV" in reasons["segv"]
    assert reasons["good"] == reasons["sleep500"] == ""
    assert report.results[0].tried == 8 and report.results[0].rejected == 6


def test_hanging_candidate_is_killed_and_the_sweep_goes_on(tmp_path: Path) -> None:
    tuned = tmp_path / "tuned.csv"
    overrides = {**SLOW_DEFAULT, "triton": "tests.tuner_fakes:HangingBackend"}
    opts = TuneOptions(backends=("triton",), timing=FAST, progress=False, candidate_timeout_s=3,
                       backend_overrides=overrides)
    report = tune_problems([TINY_FP8], tuned, opts)
    screened = {e["spec"]: e for e in log_entries(tuned, "screen")}
    assert "no answer within 3 s" in screened["triton:kind=hang"]["reason"]
    assert screened["triton:kind=good"]["ok"]
    assert not report.failed and read_tuned(tuned)[0].solution == "triton:kind=good"


def test_wrong_or_barely_faster_candidates_keep_default(tmp_path: Path) -> None:
    # triton's fakes are the fastest but wrong; cublaslt's is right but only ~1.33x < 1 + margin
    tuned = tmp_path / "tuned.csv"
    half = GemmProblem(48, 3, 40, bias=True, dtype=torch.float16, outdtype=torch.float16)
    problems = [TINY_FP8, half]
    overrides = {**SLOW_DEFAULT, "triton": "tests.tuner_fakes:WrongBackend",
                 "cublaslt": "tests.tuner_fakes:MarginBackend"}
    report = tune_problems(problems, tuned, TuneOptions(
        backends=("triton", "cublaslt"), margin=0.6, timing=FAST, progress=False,
        backend_overrides=overrides))
    rows = read_tuned(tuned)
    assert len(rows) == 2 and {r.libtype for r in rows} == {"default"}
    assert all(r.solution == "default:" and r.speedup == 1 for r in rows)
    entries = log_entries(tuned)
    assert all(not e["ok"] for e in entries if e["spec"].startswith("triton"))
    for problem in problems:  # the barely faster candidate reached the final, lost on the margin
        final = {e["spec"]: e["ms"] for e in entries
                 if e["problem"] == str(problem) and e["stage"] == "final"}
        assert 1 < final["default:"] / final["cublaslt:kind=sleep1500"] < 1.6
    assert report.summary().count("default") >= 2


def test_two_workers_share_the_queue_and_the_file(tmp_path: Path) -> None:
    # what --gpus does with one worker per GPU, here with two CPU workers
    tuned = tmp_path / "tuned.csv"
    opts = options("FastBackend")
    workers = [Worker(None, FAST, opts.backend_overrides) for _ in range(2)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.ready()
        problems = [GemmProblem(16 * (i + 1), 1 + i % 3, 32) for i in range(8)]
        report = run_workers(workers, problems + problems[:2], tuned, opts)
    finally:
        for worker in workers:
            worker.close()
    rows = read_tuned(tuned)
    assert len(report.results) == 8 and not report.failed
    assert sorted(r.problem.key() for r in rows) == sorted(p.key() for p in problems)
    assert all(r.libtype == "triton" for r in rows)


RESUME_SCRIPT = textwrap.dedent("""
    import sys, torch
    from solidx.gradlib.problem import GemmProblem
    from solidx.gradlib.timing import TimingConfig
    from solidx.gradlib.tune_options import TuneOptions
    from solidx.gradlib.tuner import tune_problems
    problems = [GemmProblem(16 * (i + 1), 1 + i, 32) for i in range(6)]
    timing = TimingConfig(target_ms=2.0, min_launches=1, max_launches=4, warmup=1,
                          screen_repeats=5, final_rounds=20)
    options = TuneOptions(backends=("triton",), timing=timing, progress=False, backend_overrides={
        "default": "tests.tuner_fakes:SlowDefault", "triton": "tests.tuner_fakes:FastBackend"})
    report = tune_problems(problems, sys.argv[1], options)
    print("skipped", len(report.skipped), "tuned", len(report.results))
""")


def test_resume_after_kill(tmp_path: Path) -> None:
    tuned = tmp_path / "tuned.csv"
    cmd = [sys.executable, "-c", RESUME_SCRIPT, str(tuned)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while not (tuned.exists() and read_tuned(tuned)):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no row landed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = read_tuned(tuned)
    assert 1 <= len(first) < 6
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"skipped {len(first)} tuned {6 - len(first)}" in done.stdout
    rows = read_tuned(tuned)
    assert len(rows) == 6 and len({r.identity() for r in rows}) == 6
    by_key = {r.problem.key(): r for r in rows}
    assert all(by_key[r.problem.key()] == r for r in first)  # finished rows untouched


def test_fp8_gemm_tuner_command_on_gradlib_file(tmp_path: Path) -> None:
    shapes, tuned = tmp_path / "fp8_shapes.csv", tmp_path / "tuned_fp8_16.csv"
    shapes.write_text("M,N,K\n32,1,64\n48,2,32\n")
    done = subprocess.run(
        [sys.executable, "-m", "solidx.gradlib.fp8_gemm_tuner", "--input_file", str(shapes),
         "--tuned_file", str(tuned), "--backends", "cublaslt"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert validate(tuned) == []
    rows = read_tuned(tuned)
    assert [(r.problem.M, r.problem.N, r.problem.K) for r in rows] == [(32, 1, 64), (48, 2, 32)]
    assert all(r.problem.dtype == FP8 and r.problem.outdtype == torch.float16 for r in rows)
    assert "2 problems tuned" in done.stdout
    if not torch.cuda.is_available():
        assert "backend cublaslt skipped: no CUDA device" in done.stdout


def test_tune_cli_reads_shapes_file_and_reports(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from solidx.cli.tune import tune as tune_cmd

    shapes, tuned = tmp_path / "shapes.csv", tmp_path / "tuned.csv"
    bf16 = GemmProblem(32, 2, 48, dtype=torch.bfloat16, outdtype=torch.bfloat16)
    write_shapes(shapes, [ShapeRow(bf16)])
    refused = CliRunner().invoke(tune_cmd, ["--input_file", str(shapes), "--tuned-file",
                                            str(tuned), "--backends", "nosuch", "--no-progress"])
    assert refused.exit_code == 1 and "--backends 'nosuch' is not a backend" in refused.output
    assert not tuned.exists()
    result = CliRunner().invoke(tune_cmd, ["--input_file", str(shapes), "--tuned-file", str(tuned),
                                           "--backends", "", "--no-progress"])
    assert result.exit_code == 0, result.output
    (row,) = read_tuned(tuned)
    assert row.libtype == "default" and row.problem.dtype == torch.bfloat16
    again = CliRunner().invoke(tune_cmd, ["--input-file", str(shapes), "--tuned-file", str(tuned),
                                          "--backends", "", "--no-progress"])
    assert again.exit_code == 0 and "1 skipped as already tuned" in again.output
    bad = CliRunner().invoke(tune_cmd, ["--input-file", str(shapes), "--tuned-file", str(tuned),
                                        "--gpus", "0,x"])
    assert bad.exit_code != 0 and "--gpus" in bad.output


@pytest.mark.skipif(importlib.util.find_spec("solidx.gradlib.backends.triton") is None,
                    reason="the triton backend is not in this build yet")
def test_tuner_with_triton_backend_writes_valid_file(tmp_path: Path) -> None:
    tuned = tmp_path / "tuned.csv"
    problems = [GemmProblem(32, 3, 80), GemmProblem(16, 1, 48, bias=True, dtype=torch.float16,
                                                     outdtype=torch.float16)]
    report = tune_problems(problems, tuned, TuneOptions(
        backends=("triton",), max_candidates=2, timing=FAST, progress=False))
    assert not report.failed and "triton" not in report.unavailable
    assert validate(tuned) == [] and len(read_tuned(tuned)) == 2
    entries = [e for e in log_entries(tuned, "screen") if e["spec"] != "default:"]
    assert all(e["seconds"] > 0 for e in entries)
    assert entries and all(e["spec"].startswith("triton:") for e in entries)
    assert all(e["ok"] for e in entries), [e["reason"] for e in entries if not e["ok"]]


@pytest.mark.gpu
def test_cuda_fault_is_isolated(tmp_path: Path) -> None:
    tuned = tmp_path / "tuned.csv"
    problem = GemmProblem(256, 4, 256)
    report = tune_problems([problem], tuned, TuneOptions(
        backends=("triton",), progress=False,
        backend_overrides={"triton": "tests.tuner_fakes:CudaFaultBackend"}))
    assert not report.failed and len(read_tuned(tuned)) == 1
    screened = {e["spec"]: e for e in log_entries(tuned, "screen")}
    assert not screened["triton:kind=illegal"]["ok"]
    reason = screened["triton:kind=illegal"]["reason"]
    assert "illegal" in reason or "CUDA" in reason or "died" in reason, reason
    assert screened["triton:kind=good"]["ok"]  # ran in a fresh child after the fault


@pytest.mark.gpu
def test_llama3_8b_decode_tunes_and_is_no_slower(tmp_path: Path) -> None:
    from solidx.gradlib.bench_gemm import bench_gemm

    problem = GemmProblem(4096, 1, 4096, dtype=FP8, outdtype=torch.bfloat16)
    tuned = tmp_path / "tuned.csv"
    report = tune_problems([problem], tuned, TuneOptions(progress=False, max_candidates=64))
    assert not report.failed
    (row,) = read_tuned(tuned)
    assert row.device == torch.cuda.get_device_name() and row.speedup >= 1.0
    bench = bench_gemm(tuned, measure_peaks=False)
    (result,) = bench.results
    assert result.speedup >= 0.98, result
