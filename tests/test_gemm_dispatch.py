"""The one GEMM dispatch point of every linear layer, on a 16-bit tiny model: tuned rows are used
(hits and the solution recorded per layer kind), rows of another device skipped with the reason
logged, the tuned file read once per engine, ``VLLM_TUNE_GEMM=1`` capture with the LM head."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import solidx.gradlib.tuned as tuned_mod
from solidx.gradlib.backends.triton import TritonBackend
from solidx.gradlib.device import device_identity
from solidx.gradlib.dtypes import FP8
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.shapes_file import read_shapes
from solidx.gradlib.tuned import library_version
from solidx.gradlib.tuned_file import TunedRow, write_tuned
from solidx.runtime import LLM, SamplingParams
from solidx.runtime.layers.linear import ColumnParallelLinear, layer_kind, tuned_gemms

HERE = device_identity("cpu")
BF16 = torch.bfloat16
PROMPT = {"prompt_token_ids": [1, 5, 9, 13, 17]}
ENGINE = {"load_format": "dummy", "dtype": "bfloat16", "max_num_seqs": 2, "max_model_len": 64}


def row(problem: GemmProblem, spec: str, device: str = HERE.name) -> TunedRow:
    libtype = spec.partition(":")[0]
    return TunedRow(problem, libtype, 1, 0.01, spec, device=device, sm_count=HERE.sm_count,
                    lib_version=library_version(libtype) or "")


def generate(llm: LLM, tokens: int = 3) -> list[int]:
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    return llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0].token_ids


def test_layer_kinds() -> None:
    assert [layer_kind(p) for p in ("model.layers.3.self_attn.qkv_proj", "model.layers.0.mlp."
            "gate_up_proj", "model.layers.1.mlp.down_proj", "x.o_proj", "lm_head")] == [
        "qkv", "gate_up", "down", "o", "lm_head"]


def test_a_call_without_tokens_gives_an_empty_result() -> None:
    layer = ColumnParallelLinear(64, 32, params_dtype=BF16, prefix="model.layers.0.mlp.up_proj")
    layer.weight.data.normal_()
    assert layer(torch.empty(0, 64, dtype=BF16)).shape == (0, 32)
    assert tuned_gemms(layer).decisions == {}


def test_16bit_model_runs_its_tuned_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    o_proj = GemmProblem(64, 1, 64, False, BF16, BF16)  # tiny-llama: hidden 64
    lm_head = GemmProblem(512, 1, 64, False, BF16, BF16)  # vocab 512
    triton = TritonBackend().solutions(o_proj)[0]
    path = tmp_path / "tuned.csv"
    write_tuned(path, [row(o_proj, triton.spec), row(lm_head, "default:"),
                       row(GemmProblem(128, 1, 64, False, BF16, BF16), triton.spec,
                           device="NVIDIA H200"),
                       row(GemmProblem(64, 1, 64, False, FP8, BF16), "default:")])
    reads = []
    real_read = tuned_mod.read_tuned
    monkeypatch.setattr(tuned_mod, "read_tuned", lambda p: reads.append(p) or real_read(p))
    with caplog.at_level(logging.INFO):
        llm = LLM("tiny-llama", tuned_gemm=str(path), **ENGINE)
    assert reads == [str(path)]  # once per engine, for every layer
    assert "3 rows loaded, 1 skipped (1 for device 'NVIDIA H200')" in caplog.text
    tokens = generate(llm)
    tuned = tuned_gemms(llm.llm_engine.model_runner.model)
    assert tuned.decisions["o"][o_proj] == triton.spec
    assert tuned.decisions["lm_head"][lm_head] == "default:"
    report = tuned.report()
    assert report["by_kind"]["o"] == {"hits": 1, "misses": 1}  # decode N=1 tuned; prefill N=5
    assert report["by_kind"]["qkv"] == {"hits": 0, "misses": 2}
    assert report["by_kind"]["lm_head"] == {"hits": 0, "misses": 1}  # a default row: no hit
    assert reads == [str(path)]
    assert tokens == generate(LLM("tiny-llama", **ENGINE))  # the triton row computes the same


def test_vllm_tune_gemm_records_16bit_problems_with_the_lm_head(tmp_path: Path) -> None:
    untuned = tmp_path / "vllm_untuned.csv"
    code = ("from solidx import LLM, SamplingParams\n"
            f"llm = LLM('tiny-llama', **{ENGINE!r})\n"
            f"llm.generate([{PROMPT!r}], SamplingParams(temperature=0, max_tokens=3, "
            "ignore_eos=True), use_tqdm=False)\n")
    root = str(Path(__file__).parents[1])
    env = {**os.environ, "VLLM_TUNE_GEMM": "1", "VLLM_UNTUNE_FILE": str(untuned),
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    got = {(r.problem.M, r.problem.N, r.problem.K, r.layers) for r in read_shapes(untuned)}
    assert (512, 1, 64, ("lm_head",)) in got  # the LM head, N=1 at prefill and decode
    assert (64, 1, 64, ("model.layers.*.self_attn.o_proj",)) in got
    assert (256, 5, 64, ("model.layers.*.mlp.gate_up_proj",)) in got
    assert all(r.problem.dtype == BF16 for r in read_shapes(untuned))


@pytest.mark.gpu
def test_tuned_stream_rows_are_warmed_and_captured_in_cuda_graphs(tmp_path: Path) -> None:
    cuda = device_identity("cuda")
    engine = {**ENGINE, "device": "cuda", "kv_cache_memory_bytes": 1 << 26}
    spec = "triton:kernel=streamdot,bn=16,bm=16,bk=64,progs=1,warps=4,stages=2"
    rows = [TunedRow(GemmProblem(m, 1, k, False, BF16, BF16), "triton", 1, 0.01, spec,
                     device=cuda.name, sm_count=cuda.sm_count,
                     lib_version=library_version("triton") or "")
            for m, k in ((128, 64), (64, 64), (256, 64), (64, 128), (512, 64))]
    path = tmp_path / "tuned.csv"
    write_tuned(path, rows)
    llm = LLM("tiny-llama", tuned_gemm=str(path), **engine)
    assert llm.llm_engine.model_runner.graphs is not None
    tokens = generate(llm, 6)
    report = tuned_gemms(llm.llm_engine.model_runner.model).report()
    assert all(report["by_kind"][kind]["hits"] == 1
               for kind in ("qkv", "o", "gate_up", "down", "lm_head")), report
    untuned = generate(LLM("tiny-llama", **engine), 6)
    assert tokens[0] == untuned[0]  # bf16 rounding may part greedy paths later on


def test_tuned_file_sources_rocm_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from solidx.runtime import tuned_gemm
    from solidx.runtime.config import Config

    config = Config("tiny-llama", load_format="dummy", dtype="bfloat16")
    fp8_file, bf16_file = tmp_path / "tuned_fp8_16.csv", tmp_path / "tuned.csv"
    write_tuned(fp8_file, [row(GemmProblem(64, 1, 64, False, FP8, BF16), "default:")])
    write_tuned(bf16_file, [row(GemmProblem(64, 1, 64, False, BF16, BF16), "default:")])
    monkeypatch.setattr(tuned_gemm, "ROCM_TUNED_FILE", str(fp8_file))
    monkeypatch.setattr(tuned_gemm, "ROCM_TUNE_FILE", str(bf16_file))
    both = tuned_gemm.load_tuned_gemms(config)  # ROCm's defaults, both kinds, where they exist
    assert both.rows == 2 and str(fp8_file) in both.summary and str(bf16_file) in both.summary
    monkeypatch.setenv("VLLM_TUNE_FILE", str(bf16_file))
    assert tuned_gemm.load_tuned_gemms(config).summary.startswith(f"{bf16_file}: 1 rows loaded")
    monkeypatch.setenv("VLLM_TUNE_FILE", str(tmp_path / "none.csv"))
    with pytest.raises(FileNotFoundError, match="VLLM_TUNE_FILE"):
        tuned_gemm.load_tuned_gemms(config)
