"""SIGTERM and Ctrl-C end the tuner and its worker process within 2 s, the finished rows kept;
unknown backends and GPUs this machine lacks are refused before any worker starts."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from solidx.gradlib.csv_validate import validate
from solidx.gradlib.tune_options import TuneOptions
from solidx.gradlib.tuned_file import read_tuned
from solidx.gradlib.tuner import check_options

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    from solidx.gradlib.problem import GemmProblem
    from solidx.gradlib.timing import TimingConfig
    from solidx.gradlib.tune_options import TuneOptions
    from solidx.gradlib.tune_signals import TuneInterrupted, exit_now
    from solidx.gradlib.tuner import tune_problems
    if __name__ == "__main__":
        timing = TimingConfig(target_ms=2.0, min_launches=1, max_launches=4, warmup=1,
                              screen_repeats=3, final_rounds=5)
        options = TuneOptions(backends=("triton",), timing=timing, progress=False,
                              candidate_timeout_s=600, backend_overrides={
                                  "default": "tests.tuner_fakes:SlowDefault",
                                  "triton": "tests.tuner_fakes:HangAfterFirstBackend"})
        problems = [GemmProblem(32, n, 64) for n in (1, 2, 3)]
        try:
            tune_problems(problems, sys.argv[1], options)
        except TuneInterrupted as exc:
            print(exc, file=sys.stderr)
            exit_now(exc.exit_code)  # as solidx tune does
""")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_tuner_and_worker_within_2s_keeping_rows(tmp_path: Path, signum) -> None:
    tuned = tmp_path / "tuned.csv"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tuned)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tuned.exists() and read_tuned(tuned)):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no row landed"
        time.sleep(0.05)
    workers = children(proc.pid)
    assert workers, "the worker process is not running"
    time.sleep(0.5)  # the worker is now inside the candidate that never returns
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        proc.wait(timeout=10)
    finally:
        proc.kill()
    took = time.monotonic() - sent
    stderr = proc.stderr.read()
    assert took < 2.0, f"exit took {took:.1f} s"
    assert proc.returncode == 128 + signum, stderr
    assert "1 finished problems kept" in stderr
    while any(alive(pid) for pid in workers) and time.monotonic() - sent < 2.0:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers), "a worker outlived the tuner by 2 s"
    assert [r.problem.N for r in read_tuned(tuned)] == [1]
    # the fake's specs (triton:kind=...) are no real Triton configurations: only that is wrong
    errors = validate(tuned)
    assert all("not a triton spec" in str(e) for e in errors), errors


def test_unknown_backend_is_refused_before_any_worker_starts() -> None:
    with pytest.raises(ValueError, match=r"backends='nosuch' is not a backend \(known: .*triton"):
        check_options(TuneOptions(backends=("nosuch",)))
    check_options(TuneOptions(backends=("cublaslt", "triton")))  # known, maybe unavailable


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without GPU")
def test_gpus_on_a_cpu_machine_are_refused() -> None:
    with pytest.raises(ValueError, match="gpus=0,1: this machine has no CUDA GPU"):
        check_options(TuneOptions(gpus=(0, 1)))


def test_tune_command_refuses_bad_backends_and_gpus_with_one_line(tmp_path: Path) -> None:
    shapes = tmp_path / "shapes.csv"
    shapes.write_text("M,N,K\n32,1,64\n")
    base = [sys.executable, "-m", "solidx.cli.main", "tune", "--input-file", str(shapes),
            "--tuned-file", str(tmp_path / "tuned.csv"), "--no-progress"]
    bad = subprocess.run(base + ["--backends", "foo"], cwd=ROOT, check=False,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("Error: --backends 'foo' is not a backend (known: ")
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tuned.csv").exists()
    if not torch.cuda.is_available():
        gpus = subprocess.run(base + ["--gpus", "0,1"], cwd=ROOT, check=False,
                              capture_output=True, text=True, timeout=120)
        assert gpus.returncode == 1
        assert gpus.stderr.strip() == (
            "Error: --gpus 0,1: this machine has no CUDA GPU (leave it out on a CPU)")
