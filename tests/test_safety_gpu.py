"""Issue 18 on the GPU: refusals against the GPU's memory before anything is allocated, and the
loader's tensor checks on CUDA tensors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from solidx.gradlib.dtypes import FP8
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.tune_limits import device_memory, too_big
from solidx.gradlib.tune_options import TuneOptions
from solidx.gradlib.tuner import tune_problems
from solidx.runtime.config import Config
from solidx.runtime.loader import check_tensor, load_model

from tests.checkpoints import make_checkpoint

pytestmark = pytest.mark.gpu


def test_gpu_memory_is_the_cards() -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    assert device_memory(torch.cuda.get_device_name(0), 0) == total
    assert too_big(GemmProblem(8192, 8192, 8192, dtype=FP8, outdtype=torch.bfloat16), total) is None


def test_tune_refuses_a_problem_too_big_for_the_gpu(tmp_path: Path) -> None:
    huge = GemmProblem(2**18, 2**18, 2**18, dtype=FP8, outdtype=torch.bfloat16)
    report = tune_problems([huge], tmp_path / "tuned.csv",
                           TuneOptions(backends=(), progress=False))
    (result,) = report.results
    assert result.row is None and "needs at least" in result.error
    assert not (tmp_path / "tuned.csv").exists()


def test_a_model_too_big_for_the_gpu_is_refused(tmp_path: Path) -> None:
    base = make_checkpoint(tmp_path / "llama", "llama-gqa")
    folder = Path(shutil.copytree(base, tmp_path / "huge"))
    config = json.loads((folder / "config.json").read_text())
    config.update(vocab_size=2**31 - 1, tie_word_embeddings=True)
    (folder / "config.json").write_text(json.dumps(config))
    before = torch.cuda.memory_allocated()
    with pytest.raises(ValueError, match=r"weights need .* GiB but cuda:0 has"):
        load_model(Config(model=str(folder), device="cuda"))
    assert torch.cuda.memory_allocated() - before < 2**30


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_tensor_checks_on_cuda(dtype: torch.dtype) -> None:
    good = torch.randn(1024, 1024, device="cuda").to(dtype)
    check_tensor("gpu", "w", good, dtype)
    bad = torch.full((1024, 1024), float("nan"), device="cuda").to(dtype)
    with pytest.raises(ValueError, match="all NaN"):
        check_tensor("gpu", "w", bad, dtype)
    with pytest.raises(ValueError, match="torch.int8"):
        check_tensor("gpu", "w", good.view(torch.int8) if dtype.itemsize == 1 else
                     torch.zeros(4, dtype=torch.int8, device="cuda"), dtype)
