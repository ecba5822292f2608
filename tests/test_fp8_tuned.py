"""Tuned GEMMs in the fp8 layers (loaded once at startup, rows of other devices skipped, broken
rows dropped, tuned solutions really run) and ``TUNE_FP8=1`` capture, on a tiny float32 Llama
quantized at load. Triton solutions run under the interpreter on CPU."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from solidx.gradlib.backends.triton import TritonBackend
from solidx.gradlib.device import device_identity
from solidx.gradlib.dtypes import FP8
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.schema import CsvError
from solidx.gradlib.shapes_file import read_shapes
from solidx.gradlib.tuned_file import TunedRow, write_tuned
from solidx.gradlib.tuned import library_version
from solidx.runtime import LLM, SamplingParams
from solidx.runtime import tuned_gemm
from solidx.runtime.layers.linear import tuned_gemms


def tuned_gemm_report(model: torch.nn.Module) -> dict:
    return tuned_gemms(model).report()
from tests.checkpoints import make_checkpoint

HERE = device_identity("cpu")
PROMPT = {"prompt_token_ids": [1, 5, 9, 13, 17]}
NEW_TOKENS = 4
# (M, K, layer) of the tiny llama-gqa: hidden 64, 4 heads of 16, 2 KV heads, intermediate 128
LINEARS = [
    (128, 64, "model.layers.*.self_attn.qkv_proj"),
    (64, 64, "model.layers.*.self_attn.o_proj"),
    (256, 64, "model.layers.*.mlp.gate_up_proj"),
    (64, 128, "model.layers.*.mlp.down_proj"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("fp8-tuned") / "llama", "llama-gqa")


def decode_problem(m: int, k: int, n: int = 1) -> GemmProblem:
    return GemmProblem(m, n, k, False, FP8, torch.float32)


def row(problem: GemmProblem, spec: str, device: str = HERE.name) -> TunedRow:
    libtype = spec.partition(":")[0]
    return TunedRow(problem, libtype, 1, 0.01, spec, device=device, sm_count=HERE.sm_count,
                    lib_version=library_version(libtype) or "")


def generate(llm: LLM) -> tuple[list[int], list[float]]:
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=1)
    out = llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0]
    return out.token_ids, [step[token] for step, token in zip(out.logprobs, out.token_ids)]


def test_tuned_rows_run_other_devices_skipped_broken_dropped(
    base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    o_proj = decode_problem(64, 64)
    triton = max(TritonBackend().solutions(o_proj), key=lambda s: s.config.bm)  # fewest programs
    path = tmp_path / "tuned.csv"
    write_tuned(path, [
        row(o_proj, triton.spec),
        row(decode_problem(256, 64), "triton:kernel=tiled,bn=3,bm=7,bk=5,gm=1,splitk=1,warps=4,"
                                     "stages=2"),
        row(decode_problem(64, 128), triton.spec, device="NVIDIA H200"),
    ])
    with caplog.at_level(logging.WARNING):
        llm = LLM(str(base), quantization="fp8", tuned_gemm=str(path))
    assert "cannot be built" in caplog.text and "M=256 N=1 K=64" in caplog.text
    tokens, logprobs = generate(llm)
    report = tuned_gemm_report(llm.llm_engine.model_runner.model)
    assert "1 rows loaded, 2 skipped (1 for device 'NVIDIA H200', 1 unbuildable" in (
        report["tuned_file"]
    )
    # decode steps run o_proj (N=1) with the triton row in both layers; all else is default
    assert report["problems_tuned"] == 1 and report["problems_default"] == 8  # LM head: N=1
    assert report["by_kind"]["o"] == {"hits": 1, "misses": 1}  # N=1 (tuned), N=5 (prefill)
    untuned_tokens, untuned_logprobs = generate(LLM(str(base), quantization="fp8"))
    assert tokens == untuned_tokens
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(untuned_logprobs),
                               atol=1e-4, rtol=0)


def test_tuned_file_sources(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            caplog: pytest.LogCaptureFixture) -> None:
    good = tmp_path / "tuned.csv"
    write_tuned(good, [row(decode_problem(64, 64), "default:")])
    monkeypatch.setenv("SOLIDX_TUNED_GEMM", str(good))
    llm = LLM(str(base), quantization="fp8")
    assert tuned_gemm_report(llm.llm_engine.model_runner.model)["tuned_file"].startswith(str(good))
    monkeypatch.delenv("SOLIDX_TUNED_GEMM")

    bad = tmp_path / "bad.csv"
    bad.write_text("M,N,K,solidx\n64,x,64,0\n")
    with pytest.raises(CsvError, match=rf"{bad}:2: column N"):
        LLM(str(base), quantization="fp8", tuned_gemm=str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLM(str(base), quantization="fp8", tuned_gemm=str(tmp_path / "none.csv"))

    monkeypatch.setattr(tuned_gemm, "ROCM_TUNED_FILE", str(good))  # ROCm's default, when it exists
    llm = LLM(str(base), quantization="fp8")
    assert tuned_gemm_report(llm.llm_engine.model_runner.model)["tuned_file"].startswith(str(good))
    # a stale default never stops a run
    monkeypatch.setattr(tuned_gemm, "ROCM_TUNED_FILE", str(bad))
    with caplog.at_level(logging.WARNING):
        llm = LLM(str(base), quantization="fp8")
    assert "ignoring the default tuned GEMM file" in caplog.text
    assert tuned_gemm_report(llm.llm_engine.model_runner.model)["tuned_file"] == "no tuned file"
    assert tuned_gemm_report(LLM(str(base)).llm_engine.model_runner.model)["problems_tuned"] == 0


def test_tune_fp8_records_exactly_the_fp8_problems(base: Path, tmp_path: Path) -> None:
    shapes = tmp_path / "fp8_shapes.csv"
    code = (
        "from solidx import LLM, SamplingParams\n"
        f"llm = LLM({str(base)!r}, quantization='fp8')\n"
        f"llm.generate([{PROMPT!r}], SamplingParams(temperature=0, max_tokens={NEW_TOKENS}, "
        "ignore_eos=True), use_tqdm=False)\n"
    )
    env = {**os.environ, "TUNE_FP8": "1", "SOLIDX_SHAPES_FILE": str(shapes),
           "PYTHONPATH": os.pathsep.join(
               p for p in (str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    prompt_len, layers = len(PROMPT["prompt_token_ids"]), 2
    expected = {
        (m, n, k, False, FP8, torch.float32, count, (layer,))
        for m, k, layer in LINEARS
        for n, count in ((prompt_len, layers), (1, layers * (NEW_TOKENS - 1)))
    }  # the float32 LM head is no fp8 GEMM
    got = {
        (r.problem.M, r.problem.N, r.problem.K, r.problem.bias, r.problem.dtype,
         r.problem.outdtype, r.count, r.layers)
        for r in read_shapes(shapes)
    }
    assert got == expected


def test_benchmarks_report_tuned_hits_and_misses(tmp_path: Path) -> None:
    from solidx.runtime.bench.latency import bench_latency
    from solidx.runtime.bench.throughput import bench_throughput

    path = tmp_path / "tuned.csv"  # tiny-llama's o_proj at N=1 (decode) runs a "tuned" default
    write_tuned(path, [row(decode_problem(64, 64), "default:")])
    assert bench_latency("tiny-llama", input_len=4, output_len=3,
                         dtype="float32").tuned_gemm["problems_tuned"] == 0
    latency = bench_latency("tiny-llama", input_len=4, output_len=3, dtype="float32",
                            quantization="fp8", tuned_gemm=str(path))
    assert latency.tuned_gemm["tuned_file"].startswith(f"{path}: 1 rows loaded, 0 skipped")
    assert latency.tuned_gemm["problems_tuned"] == 0  # a default row is no tuned solution
    assert latency.tuned_gemm["problems_default"] > 0
    assert "tuned GEMMs (" in latency.summary() and "(misses)" in latency.summary()
    throughput = bench_throughput("tiny-llama", num_prompts=2, input_len=4, output_len=3,
                                  ignore_eos=True, dtype="float32", quantization="fp8")
    assert throughput.tuned_gemm["tuned_file"] == "no tuned file"
    assert "tuned GEMMs (no tuned file)" in throughput.summary()
