"""The command line's surface: light start-up, exit codes, messages that name the flags typed,
--help offering only values that work, and the library's logging from Python."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from solidx.cli.bench import BENCHMARKS
from solidx.cli.bench_gemm import gemm
from solidx.cli.bench_latency import latency
from solidx.cli.csv_cmd import diff
from solidx.cli.csv_group import CSV_COMMANDS
from solidx.cli.generate import generate
from solidx.cli.lazy_group import LazyGroup
from solidx.cli.main import COMMANDS, main
from solidx.gradlib.backends.base import spec_hash
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.tuned_file import TunedRow, write_tuned
from solidx.runtime import envs, log_setup

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-llama", "--load-format", "dummy", "--device", "cpu"]


def solidx(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``solidx ARGS`` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "solidx.cli.main", *args], cwd=ROOT,
                          check=False, text=True, capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})})


def other_gpu_row(problem: GemmProblem, soltimems: float = 0.01) -> TunedRow:
    return TunedRow(problem=problem, libtype="default", solidx=spec_hash("default:"),
                    soltimems=soltimems, solution="default:", default_ms=soltimems, speedup=1.0,
                    device="NVIDIA H999", sm_count=999, torch_version=torch.__version__)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["csv", "--help"],
                                  ["bench", "--help"]])
def test_help_and_version_import_neither_torch_nor_transformers(args) -> None:
    code = ("import sys\nfrom solidx.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'triton', 'pandas') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, check=False, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("HEAVY []"), done.stdout


@pytest.mark.parametrize("table", [COMMANDS, BENCHMARKS, CSV_COMMANDS])
def test_every_lazy_command_resolves(table) -> None:
    group = LazyGroup(name="g", lazy=table)
    ctx = click.Context(group)
    for name in table:
        command = group.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name in (name, "csv")


def test_help_lists_every_command() -> None:
    output = CliRunner().invoke(main, ["--help"]).output
    assert all(name in output for name in COMMANDS)


def test_prompt_longer_than_the_context_exits_1_naming_the_flag() -> None:
    done = solidx("generate", *TINY, "--max-model-len", "8", "--prompt", "x" * 40,
                  "--prompt", "hi", "--max-tokens", "2")
    assert done.returncode == 1, done.stderr
    assert "more than --max-model-len 8" in done.stdout
    assert "1 of 2 requests were refused" in done.stderr


def test_errors_name_the_flags_typed() -> None:
    bad = CliRunner().invoke(generate, [*TINY, "--max-tokens", "0"])
    assert bad.exit_code == 1 and "--max-tokens must be in [1, inf]" in bad.output
    long = CliRunner().invoke(generate, [*TINY, "--max-model-len", "100000"])
    assert long.exit_code == 1 and "--max-model-len 100000 must be in 1..512" in long.output
    preset = CliRunner().invoke(generate, ["--model", "tiny-llama"])
    assert preset.exit_code == 1 and "pass --load-format 'dummy'" in preset.output


def test_python_errors_name_the_keyword() -> None:
    from solidx.runtime.config import Config

    with pytest.raises(ValueError, match=r"max_model_len=100000 must be in 1\.\.512"):
        Config("tiny-llama", load_format="dummy", max_model_len=100000)
    with pytest.raises(ValueError, match=r"dtype='float64' is not supported \(supported: 'auto'"):
        Config("tiny-llama", load_format="dummy", dtype="float64")


def test_help_offers_only_values_that_work() -> None:
    text = CliRunner().invoke(generate, ["--help"]).output
    quantization = text.split("--quantization")[1].split("--")[0]
    assert "[fp8]" in quantization and "none" not in quantization
    for args, flag in ((["--quantization", "none"], "--quantization"),
                       (["--dtype", "float64"], "--dtype")):
        result = CliRunner().invoke(generate, [*TINY, *args])
        assert result.exit_code == 2 and f"Invalid value for '{flag}'" in result.output
        assert "float8" not in result.output and "e4m3" not in result.output
    dtype = CliRunner().invoke(generate, [*TINY, "--dtype", "float64"]).output
    assert "'auto', 'float32', 'float16', 'bfloat16'" in dtype


def test_bad_log_level_is_a_usage_error() -> None:
    done = solidx("--version", env={"SOLIDX_LOG_LEVEL": "chatty"})
    assert done.returncode == 0  # --version runs before the group's set-up
    done = solidx("csv", "--help", env={"SOLIDX_LOG_LEVEL": "chatty"})
    assert done.returncode == 2 and "SOLIDX_LOG_LEVEL='CHATTY' is not a log level" in done.stderr


def test_llm_from_python_logs_and_warns_when_the_tuned_file_gives_nothing(tmp_path) -> None:
    tuned = tmp_path / "tuned.csv"
    write_tuned(tuned, [other_gpu_row(GemmProblem(64, 1, 64))])
    code = ("from solidx import LLM\n"
            f"LLM('tiny-llama', load_format='dummy', quantization='fp8', tuned_gemm={str(tuned)!r},"
            " device='cpu')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "WARNING solidx.gradlib.tuned: tuned GEMMs:" in done.stderr
    assert "0 rows loaded, 1 skipped" in done.stderr and "contributes no row" in done.stderr
    assert "INFO solidx.runtime" in done.stderr  # INFO lines shown, as from the command
    quiet = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False, text=True,
                           timeout=300, capture_output=True,
                           env={**os.environ, "SOLIDX_LOG_LEVEL": "WARNING"})
    assert "INFO" not in quiet.stderr and "contributes no row" in quiet.stderr


def test_a_users_logging_config_is_left_alone(monkeypatch) -> None:
    logger = logging.getLogger("solidx")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.ERROR)
    log_setup.setup_logging()
    assert logger.handlers == [] and logger.level == logging.ERROR
    code = ("import logging\nlogging.basicConfig(level=logging.DEBUG, format='USER %(message)s')\n"
            "import solidx.runtime\nlogging.getLogger('solidx.x').debug('hello')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False, text=True,
                          capture_output=True, timeout=120)
    assert done.stderr.strip() == "USER hello"  # the user's format, once, at the user's level


def test_bench_gemm_refuses_a_file_with_no_row_for_this_device(tmp_path) -> None:
    tuned = tmp_path / "tuned.csv"
    write_tuned(tuned, [other_gpu_row(GemmProblem(64, 1, 64))])
    result = CliRunner().invoke(gemm, ["--tuned-file", str(tuned)])
    assert result.exit_code == 1
    assert "has no row for this device" in result.output and "nan" not in result.output


def test_csv_diff_shows_changed_times(tmp_path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    problem = GemmProblem(64, 1, 64)
    write_tuned(a, [other_gpu_row(problem, 0.01)])
    write_tuned(b, [other_gpu_row(problem, 0.02)])
    result = CliRunner().invoke(diff, [str(a), str(b)])
    assert result.exit_code == 1
    assert "default default:: 0.01 ms -> 0.02 ms" in result.output
    assert CliRunner().invoke(diff, [str(a), str(a)]).exit_code == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without GPU")
def test_bench_latency_refuses_its_default_8b_model_on_a_cpu() -> None:
    result = CliRunner().invoke(latency, [])
    assert result.exit_code == 2
    assert "the default --model llama-3-8b is a GPU benchmark" in result.output


def test_every_environment_variable_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in envs.VARIABLES if f"`{name}`" not in readme]
    assert not missing, f"runtime/envs.py reads {missing}, which the README does not list"
