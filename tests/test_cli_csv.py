"""The ``solidx csv`` and ``capture-shapes`` commands, and TUNE_FP8-style process capture."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from solidx.cli.main import main
from solidx.gradlib.shapes_file import read_shapes

GOOD = "M,N,K,bias,dtype,outdtype,libtype,solidx,soltimems,solution\n" \
       "4096,1,4096,False,torch.float8_e4m3fn,torch.bfloat16,default,42051450,0.01,default:\n"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_capture_show_validate_merge_diff(tmp_path: Path) -> None:
    a, b, c = (str(tmp_path / n) for n in ("a.csv", "b.csv", "c.csv"))
    result = invoke("capture-shapes", "--model", "llama-3-8b", "--tp", "8", "--batch-sizes", "1,2",
                    "-o", a)
    assert result.exit_code == 0, result.output
    assert "wrote 10 problems" in result.output
    invoke("capture-shapes", "--model", "llama-3-8b", "--tp", "8", "--batch-sizes", "2,4", "-o", b)
    shown = invoke("csv", "show", a)
    assert ("out_features(M)" in shown.output and "tokens(N)" in shown.output
            and "in_features(K)" in shown.output)
    assert invoke("csv", "validate", a, b).exit_code == 0
    assert invoke("csv", "merge", a, b, "-o", c).exit_code == 0
    rows = read_shapes(c)
    assert len(rows) == 15
    assert max(r.count for r in rows) == 64  # N=2 decoder rows seen in both files
    diff = invoke("csv", "diff", a, b)
    assert (diff.exit_code == 1 and "- M=768 N=1 K=4096" in diff.output
            and "+ M=768 N=4 K=4096" in diff.output)
    assert invoke("csv", "diff", a, a).exit_code == 0


def test_validate_reports_every_error(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.csv", tmp_path / "tuned_fp8.csv"
    good.write_text(GOOD)
    bad.write_text(GOOD + GOOD.splitlines()[1].replace(",42051450,", ",abc,") + "\n"
                   + GOOD.splitlines()[1].replace("4096,1,", "4096,0,") + "\n")
    result = CliRunner().invoke(main, ["csv", "validate", str(good), str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:3: column solidx: 'abc' is not an integer" in result.output
    assert f"{bad}:4: column N: '0' must be a positive integer" in result.output
    assert f"{good}: ok" in result.output


def test_show_bad_file_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "s.csv"
    bad.write_text("M,N,K\n1,2,x\n")
    result = CliRunner().invoke(main, ["csv", "show", str(bad)])
    assert result.exit_code == 1 and f"{bad}:2: column K" in result.output


def test_process_capture_writes_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "fp8_shapes.csv"
    code = ("from solidx.gradlib import GemmProblem; "
            "from solidx.shape_capture import start_recording, active_recorder;"
            f"start_recording({str(path)!r}); "
            "active_recorder().record(GemmProblem(16, 2, 32), 'model.layers.0.o')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    (row,) = read_shapes(path)
    assert (row.problem.M, row.problem.N, row.problem.K, row.layers) == (16, 2, 32,
                                                                         ("model.layers.*.o",))


def test_capture_shapes_run_records_engine_problems(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    result = invoke("capture-shapes", "--model", "tiny-llama", "--run", "--batch-sizes", "1,2",
                    "--input-len", "5", "--output-len", "2", "-o", str(path))
    assert result.exit_code == 0, result.output
    got = {(r.problem.M, r.problem.N, r.problem.K) for r in read_shapes(path)}
    # tiny-llama: hidden 64, qkv (4 + 2*2) * 16 = 128; decode steps at N = 1 and 2.
    assert {(128, 1, 64), (128, 2, 64), (64, 2, 128), (512, 2, 64)} <= got
