"""The ``solidx csv`` and ``capture-shapes`` commands, and TUNE_FP8-style process capture."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from solidx.cli.main import main
from solidx.gradlib.backends.base import spec_hash
from solidx.gradlib.backends.cublaslt_configs import AlgoConfig
from solidx.gradlib.backends.triton_configs import candidate_configs
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.shapes_file import ShapeRow, read_shapes, write_shapes
from solidx.gradlib.tuned_file import TunedRow, write_tuned

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


def _tuned_rows(soltimems: float) -> list[TunedRow]:
    default, triton, cublaslt = (GemmProblem(m, 1, 4096) for m in (1024, 2048, 4096))
    specs = [(default, "default", "default:"),
             (triton, "triton", candidate_configs(triton)[0].spec),
             (cublaslt, "cublaslt", AlgoConfig(66, tile=20, stages=15, splitk=4, red=1).spec)]
    rows = [TunedRow(problem, libtype, spec_hash(spec), soltimems, spec, default_ms=0.02,
                     device="NVIDIA H200", sm_count=132) for problem, libtype, spec in specs]
    return rows + [TunedRow(GemmProblem(64, 8, 32, dtype="torch.float8_e4m3fnuz"), "hipblaslt",
                            1234, soltimems, "hipblaslt:index=1234")]


def test_csv_commands_import_no_torch(tmp_path: Path) -> None:
    """show, validate, merge and diff on real shapes and tuned files (good and bad) run without
    importing torch or Triton (what keeps ``solidx csv ...`` under a second)."""
    shapes_a, shapes_b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_shapes(shapes_a, [ShapeRow(GemmProblem(768, 1, 4096), 32, ("model.layers.*.o",)),
                            ShapeRow(GemmProblem(768, 2, 4096, True, "bf16", "bf16"))])
    write_shapes(shapes_b, [ShapeRow(GemmProblem(768, 4, 4096, dtype="torch.float16"))])
    tuned_a, tuned_b = tmp_path / "tuned_a.csv", tmp_path / "tuned_b.csv"
    write_tuned(tuned_a, _tuned_rows(0.01))
    write_tuned(tuned_b, _tuned_rows(0.005))
    bad = tmp_path / "bad.csv"
    bad.write_text(GOOD.replace(",42051450,", ",7,"))
    runs = [["show", shapes_a], ["show", tuned_a], ["validate", shapes_a, tuned_a, bad],
            ["merge", shapes_a, shapes_b, "-o", tmp_path / "m.csv"],
            ["merge", tuned_a, tuned_b, "-o", tmp_path / "t.csv"],
            ["diff", shapes_a, shapes_b], ["diff", tuned_a, tuned_b]]
    code = ("import sys\nfrom solidx.cli.main import main\n"
            f"for args in {[['csv', *map(str, run)] for run in runs]!r}:\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n"
            "        print('EXIT', args[1], e.code)\n"
            "print('HEAVY', [m for m in ('torch', 'triton') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], check=False, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    exits = [line for line in done.stdout.splitlines() if line.startswith("EXIT")]
    assert exits == ["EXIT show 0", "EXIT show 0", "EXIT validate 1", "EXIT merge 0",
                     "EXIT merge 0", "EXIT diff 1", "EXIT diff 1"], done.stdout
    assert f"{tuned_a}: ok" in done.stdout and "hipblaslt:index=1234" in done.stdout
    assert f"{bad}:2: column solidx: 7 is not the hash" in done.stderr
    assert "0.01 ms -> 0.005 ms" in done.stdout
    assert done.stdout.strip().endswith("HEAVY []"), done.stdout
