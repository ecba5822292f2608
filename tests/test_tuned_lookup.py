"""The runtime's view of a tuned file: device filter, nearest-N rule, broken rows dropped."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import solidx.gradlib.tuned as tuned_mod
from solidx.gradlib.backends.base import Solution
from solidx.gradlib.device import device_identity
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.tuned import TunedGemms
from solidx.gradlib.tuned_file import TunedRow, write_tuned

HERE = device_identity("cpu")


class FakeSolution(Solution):
    """Accepts token counts up to ``limit``."""

    libtype = "triton"

    def __init__(self, spec: str, problem: GemmProblem, limit: int) -> None:
        self._spec, self.problem, self.limit = spec, problem, limit

    @property
    def spec(self) -> str:
        return self._spec

    def accepts(self, n: int) -> bool:
        return n <= self.limit

    def run(self, ops: GemmOperands) -> torch.Tensor:
        raise NotImplementedError


def fake_from_spec(spec: str, problem: GemmProblem) -> Solution:
    if "broken" in spec:
        raise ValueError("no such kernel")
    return FakeSolution(spec, problem, limit=int(spec.split("limit=")[1]))


def row(n: int, spec: str, device: str = HERE.name, libtype: str = "triton",
        m: int = 64) -> TunedRow:
    return TunedRow(GemmProblem(m, n, 32), libtype, 1, 0.01, spec, device=device,
                    sm_count=HERE.sm_count, lib_version="fake-1")


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuned_mod, "solution_from_spec", fake_from_spec)
    monkeypatch.setattr(tuned_mod, "library_version", lambda libtype: "fake-1")


def test_nearest_n_rule(tmp_path: Path, fake_backend: None) -> None:
    path = tmp_path / "tuned.csv"
    write_tuned(path, [row(4, "triton:limit=8"), row(16, "triton:limit=16"),
                       row(64, "triton:limit=32"), row(8, "default:", libtype="default")])
    tuned = TunedGemms.load(str(path), "cpu")
    spec = lambda n: tuned.solution(GemmProblem(64, n, 32)).spec  # noqa: E731
    assert spec(4) == "triton:limit=8"        # exact row
    assert spec(3) == "triton:limit=8"        # smallest tuned N >= 3 that accepts 3
    assert spec(8) == "default:"              # exact default row wins over a larger tuned one
    assert spec(12) == "triton:limit=16"      # smallest tuned N >= 12
    assert spec(40) == "default:"             # N=64 row exists but its solution does not accept 40
    assert spec(100) == "default:"            # nothing tuned that large
    assert tuned.solution(GemmProblem(128, 4, 32)).spec == "default:"  # another weight
    assert tuned.hits() == {"": {"hits": 3, "misses": 4}}  # distinct problems, not calls
    tuned.solution(GemmProblem(64, 4, 32), "qkv")
    assert tuned.hits()["qkv"] == {"hits": 1, "misses": 0}


def test_rows_for_other_devices_are_skipped_and_broken_dropped(
        tmp_path: Path, fake_backend: None, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tuned.csv"
    write_tuned(path, [row(1, "triton:limit=1"), row(2, "triton:limit=2", device="NVIDIA H200"),
                       row(4, "triton:broken=1,limit=4")])
    with caplog.at_level(logging.WARNING):
        tuned = TunedGemms.load(str(path), "cpu")
    assert tuned.rows == 1
    assert "1 rows loaded, 2 skipped (1 for device 'NVIDIA H200', 1 unbuildable" in tuned.summary
    assert "triton:broken=1,limit=4" in caplog.text and "cannot be built" in caplog.text
    assert tuned.solution(GemmProblem(64, 4, 32)).spec == "default:"


def test_unavailable_backend_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "tuned.csv"
    write_tuned(path, [row(1, "cublaslt:id=1", libtype="cublaslt")])
    tuned = TunedGemms.load(str(path), "cpu")
    assert tuned.rows == 0 and "cublaslt unavailable" in tuned.summary
