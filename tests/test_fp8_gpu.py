"""fp8 on the GPU: a Llama-3-8B-shaped model (2 layers, dummy weights) quantized at load, and the
whole pipeline on a small dummy model: TUNE_FP8 capture -> solidx tune -> generate with the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from solidx.gradlib.dtypes import FP8
from solidx.gradlib.shapes_file import read_shapes
from solidx.gradlib.tuned_file import read_tuned
from solidx.runtime import LLM, SamplingParams
from solidx.runtime.layers.linear import tuned_gemms
from solidx.shape_capture.presets import PRESETS

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).parents[1]
CACHE = 1 << 30  # KV cache bytes: the engines of a test fit beside each other


def dummy_folder(folder: Path, **overrides: object) -> Path:
    """A checkpoint folder with only config.json (the llama-3-8b preset with ``overrides``)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**PRESETS["llama-3-8b"], **overrides}))
    return folder


def first_logprobs(llm: LLM, prompts: list[dict]) -> torch.Tensor:
    vocab = llm.llm_engine.vocab_size
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=1, logprobs=vocab),
                        use_tqdm=False)
    return torch.stack(
        [torch.tensor([o.outputs[0].logprobs[0][t] for t in range(vocab)]) for o in outs]
    )


def test_dynamic_fp8_llama3_8b_shaped_generates(tmp_path: Path) -> None:
    folder = dummy_folder(tmp_path / "llama-3-8b-2l", num_hidden_layers=2)
    kwargs = {"load_format": "dummy", "max_model_len": 512, "max_num_seqs": 4,
              "kv_cache_memory_bytes": CACHE, "max_logprobs": -1}
    prompts = [{"prompt_token_ids": list(range(100 + 7 * i, 164 + 7 * i))} for i in range(3)]
    reference = first_logprobs(LLM(str(folder), **kwargs), prompts)
    llm = LLM(str(folder), quantization="fp8", **kwargs)
    qkv = llm.llm_engine.model_runner.model.model.layers[0].self_attn.qkv_proj
    assert qkv.weight.dtype == FP8 and qkv.weight_scale.shape == ()
    got = first_logprobs(llm, prompts)
    kl = (reference.exp() * (reference - got)).sum(-1)
    assert (kl <= 0.1).all(), kl
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    for engine in (llm, LLM(str(folder), quantization="fp8", enforce_eager=True, **kwargs)):
        outputs = engine.generate(prompts, params, use_tqdm=False)  # CUDA graphs, then eager
        assert all(len(out.outputs[0].token_ids) == 32 for out in outputs)


def test_capture_tune_generate_pipeline(tmp_path: Path) -> None:
    folder = dummy_folder(tmp_path / "small", hidden_size=512, intermediate_size=1536,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                          num_hidden_layers=2, vocab_size=1024, bos_token_id=1, eos_token_id=2)
    shapes, tuned = tmp_path / "fp8_shapes.csv", tmp_path / "tuned_fp8.csv"
    engine = {"load_format": "dummy", "quantization": "fp8", "max_num_seqs": 4,
              "max_model_len": 256, "kv_cache_memory_bytes": 1 << 28}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in engine.items()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p), "TUNE_FP8": "1",
           "SOLIDX_SHAPES_FILE": str(shapes)}
    solidx = [sys.executable, "-m", "solidx.cli.main"]
    subprocess.run(solidx + ["generate", "--model", str(folder), "--max-tokens", "8",
                             "--ignore-eos", *flags],
                   check=True, env=env, cwd=ROOT, timeout=600)
    captured = {row.problem for row in read_shapes(shapes)}
    assert captured and all(problem.dtype == FP8 for problem in captured)
    env.pop("TUNE_FP8")
    subprocess.run(solidx + ["tune", "--input-file", str(shapes), "--tuned-file", str(tuned),
                             "--backends", "triton,cublaslt", "--max-candidates", "2",
                             "--no-progress"], check=True, env=env, cwd=ROOT, timeout=600)
    assert {row.problem for row in read_tuned(tuned)} == captured

    from solidx.cli.generate import EXAMPLE_PROMPTS

    llm = LLM(str(folder), tuned_gemm=str(tuned), **engine)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    outputs = llm.generate(list(EXAMPLE_PROMPTS), params, use_tqdm=False)
    assert all(len(out.outputs[0].token_ids) == 8 for out in outputs)
    model = llm.llm_engine.model_runner.model
    report = tuned_gemms(model).report()
    assert f"{len(captured)} rows loaded, 0 skipped" in report["tuned_file"], report
    decisions = tuned_gemms(model).decisions
    issued = {p for kind, problems in decisions.items() if kind != "lm_head" for p in problems}
    assert issued == captured  # the same N values: every problem has its exact row
    print(report)
