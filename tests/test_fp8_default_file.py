"""ROCm's default tuned file (/tmp/tuned_fp8_16.csv) is used only when it is the user's own:
a link, another user's file or one writable by others is ignored with a warning (issue 18)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from solidx.gradlib.device import device_identity
from solidx.gradlib.dtypes import FP8
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.tuned_file import TunedRow, write_tuned
from solidx.runtime.config import Config
from solidx.runtime import tuned_gemm

from tests.checkpoints import make_checkpoint

HERE = device_identity("cpu")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    base = make_checkpoint(tmp_path_factory.mktemp("fp8-default") / "llama", "llama-gqa")
    return Config(model=str(base), quantization="fp8", device="cpu")


@pytest.fixture
def default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tuned_fp8_16.csv"
    problem = GemmProblem(64, 1, 64, False, FP8, torch.float32)
    write_tuned(path, [TunedRow(problem, "default", 1, 0.01, "default:", device=HERE.name,
                                sm_count=HERE.sm_count)])
    monkeypatch.delenv("SOLIDX_TUNED_GEMM", raising=False)
    monkeypatch.delenv("VLLM_TUNE_FILE", raising=False)
    monkeypatch.setattr(tuned_gemm, "ROCM_TUNED_FILE", str(path))
    monkeypatch.setattr(tuned_gemm, "ROCM_TUNE_FILE", str(tmp_path / "no-16-bit-tuned.csv"))
    return path


def _loaded(config: Config, caplog: pytest.LogCaptureFixture) -> str:
    with caplog.at_level(logging.WARNING):
        return tuned_gemm.load_tuned_gemms(config).summary


def test_own_default_file_is_loaded(config: Config, default_file: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    assert _loaded(config, caplog).startswith(str(default_file))


def test_default_file_writable_by_others_is_ignored(config: Config, default_file: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    default_file.chmod(0o666)
    assert _loaded(config, caplog) == "no tuned file"
    assert "writable by other users" in caplog.text and "--tuned-gemm" in caplog.text


def test_default_file_of_another_user_is_ignored(config: Config, default_file: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    try:
        os.chown(default_file, 65534, 65534)
    except PermissionError:
        pytest.skip("not root: cannot make a file of another user")
    assert _loaded(config, caplog) == "no tuned file"
    assert "belongs to" in caplog.text


def test_default_file_that_is_a_link_is_ignored(config: Config, default_file: Path,
                                                tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    real = tmp_path / "elsewhere.csv"
    default_file.rename(real)
    default_file.symlink_to(real)
    assert _loaded(config, caplog) == "no tuned file"
    assert "symbolic link" in caplog.text
