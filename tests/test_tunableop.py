"""PyTorch TunableOp (``PYTORCH_TUNABLEOP_*``): harmless on the CPU, applied to the rank's GPU,
and on a GPU a results file per rank that the next run reuses."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from solidx.runtime import LLM, SamplingParams
from solidx.runtime.tunableop import configure_tunableop

PARAMS = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def test_cpu_engine_is_unchanged_with_tunableop_enabled(monkeypatch):
    prompts = ["Hello", "TunableOp"]
    options = {"load_format": "dummy", "max_model_len": 32, "device": "cpu"}
    plain = LLM("tiny-llama", **options).generate(prompts, PARAMS)
    monkeypatch.setenv("PYTORCH_TUNABLEOP_ENABLED", "1")
    monkeypatch.setenv("PYTORCH_TUNABLEOP_TUNING", "0")
    assert configure_tunableop(torch.device("cpu")) is None
    tuned = LLM("tiny-llama", **options).generate(prompts, PARAMS)
    assert [o.outputs[0].token_ids for o in tuned] == [o.outputs[0].token_ids for o in plain]


class FakeTunable:
    """Records the calls ``configure_tunableop`` makes on ``torch.cuda.tunable``."""

    def __init__(self, with_write_file: bool) -> None:
        self.calls: list[tuple] = []
        if with_write_file:
            self.write_file = lambda: self.calls.append(("write_file",))

    def __getattr__(self, name: str):
        if name not in ("set_filename", "tuning_enable", "enable", "get_filename"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, *args, *kwargs.values()))


@pytest.mark.parametrize("tuning", ["1", "0"])
@pytest.mark.parametrize("with_write_file", [True, False])
def test_settings_go_to_the_ranks_gpu(monkeypatch, tuning, with_write_file):
    fake = FakeTunable(with_write_file)
    registered = []
    monkeypatch.setattr(torch.cuda, "tunable", fake)
    monkeypatch.setattr(
        torch.cuda, "device", lambda device: nullcontext(fake.calls.append(("device", device)))
    )
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setenv("PYTORCH_TUNABLEOP_FILENAME", "tuned%d.csv")
    monkeypatch.setenv("PYTORCH_TUNABLEOP_TUNING", tuning)
    monkeypatch.delenv("PYTORCH_TUNABLEOP_ENABLED", raising=False)
    assert configure_tunableop(torch.device("cuda", 1)) is None  # off unless enabled
    assert fake.calls == []
    monkeypatch.setenv("PYTORCH_TUNABLEOP_ENABLED", "1")
    configure_tunableop(torch.device("cuda", 1))
    assert fake.calls[:4] == [
        ("device", torch.device("cuda", 1)),
        ("set_filename", "tuned%d.csv", True),
        ("tuning_enable", tuning == "1"),
        ("enable", True),
    ]
    assert len(registered) == (tuning == "1" and with_write_file)


SCRIPT = """
import sys
from solidx.runtime import LLM, SamplingParams
llm = LLM("tiny-llama", load_format="dummy", dtype="bfloat16", max_model_len=64,
          kv_cache_memory_bytes=16 << 20)
params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
batch = int(sys.argv[1])
out = llm.generate(["TunableOp picks GEMMs"] * batch, params, use_tqdm=False)
print(out[0].outputs[0].token_ids)
"""


def run_engine(tmp_path: Path, batch: int, tuning: str) -> str:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (
            str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p),
        PYTORCH_TUNABLEOP_ENABLED="1",
        PYTORCH_TUNABLEOP_TUNING=tuning,
        PYTORCH_TUNABLEOP_FILENAME=str(tmp_path / "tunableop%d.csv"),
        PYTORCH_TUNABLEOP_MAX_TUNING_ITERATIONS="5",
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(batch)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def gemm_lines(path: Path) -> set[str]:
    return {line for line in path.read_text().splitlines() if line.startswith("Gemm")}


@pytest.mark.gpu
def test_results_file_is_written_then_used_without_tuning(tmp_path):
    tokens = run_engine(tmp_path, batch=1, tuning="1")
    results = tmp_path / "tunableop0.csv"  # the GPU's ordinal in place of %d
    tuned = gemm_lines(results)
    assert tuned, results.read_text()
    assert run_engine(tmp_path, batch=1, tuning="0") == tokens  # reused
    run_engine(tmp_path, batch=3, tuning="0")  # new shapes are not tuned
    assert gemm_lines(results) == tuned
