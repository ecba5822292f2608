"""Shape capture: from a running Hugging Face model, from a config, and the recorder itself."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.shapes_file import read_shapes
from solidx.shape_capture import problems_from_config, record_linears, recording
from solidx.shape_capture.presets import PRESETS, load_model_config
from solidx.shape_capture.recorder import layer_pattern

BF16 = torch.bfloat16
FP8 = torch.float8_e4m3fn


def test_capture_from_hf_llama(tmp_path: Path) -> None:
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                         max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    with record_linears(model) as recorder, torch.no_grad():
        model(torch.randint(0, 100, (2, 5)))  # 2 sequences x 5 tokens = 10 tokens
    got = {(r.problem.M, r.problem.N, r.problem.K): (r.count, r.layers) for r in recorder.rows()}
    f32 = torch.float32
    assert all(r.problem.dtype == f32 and r.problem.outdtype == f32 for r in recorder.rows())
    assert got == {
        (64, 10, 64): (4, ("model.layers.*.self_attn.q_proj", "model.layers.*.self_attn.o_proj")),
        (32, 10, 64): (4, ("model.layers.*.self_attn.k_proj", "model.layers.*.self_attn.v_proj")),
        (96, 10, 64): (4, ("model.layers.*.mlp.gate_proj", "model.layers.*.mlp.up_proj")),
        (64, 10, 96): (2, ("model.layers.*.mlp.down_proj",)),
        (100, 10, 64): (1, ("lm_head",)),
    }
    # Hooks are gone after the block.
    with recording() as outer:
        model(torch.randint(0, 100, (1, 3)))
    assert outer.rows() == []


def by_layer(rows) -> dict[tuple[str, int], GemmProblem]:
    return {(r.layers[0], r.problem.N): r.problem for r in rows}


def test_llama_3_8b_from_config_tp1_by_hand() -> None:
    rows = by_layer(problems_from_config(PRESETS["llama-3-8b"], tp=1, batch_sizes=[1, 16],
                                         prefill_tokens=[2048]))
    # hidden 4096, 32 heads x 128, 8 KV heads, intermediate 14336, vocab 128256
    assert rows[("model.layers.*.self_attn.qkv_proj", 1)] == GemmProblem(6144, 1, 4096)
    assert rows[("model.layers.*.self_attn.o_proj", 16)] == GemmProblem(4096, 16, 4096)
    assert rows[("model.layers.*.mlp.gate_up_proj", 2048)] == GemmProblem(28672, 2048, 4096)
    assert rows[("model.layers.*.mlp.down_proj", 1)] == GemmProblem(4096, 1, 14336)
    assert rows[("lm_head", 16)] == GemmProblem(128256, 16, 4096, False, BF16, BF16)
    assert ("lm_head", 2048) not in rows
    counts = {r.layers[0]: r.count
              for r in problems_from_config(PRESETS["llama-3-8b"], batch_sizes=[1])}
    assert counts["model.layers.*.mlp.down_proj"] == 32 and counts["lm_head"] == 1


def test_llama_3_8b_from_config_tp8_by_hand() -> None:
    rows = by_layer(problems_from_config(PRESETS["llama-3-8b"], tp=8, batch_sizes=[4]))
    # per rank: 4 query heads, 1 KV head, intermediate 1792, vocab 16032
    assert rows[("model.layers.*.self_attn.qkv_proj", 4)] == GemmProblem((4 + 2) * 128, 4, 4096)
    assert rows[("model.layers.*.self_attn.o_proj", 4)] == GemmProblem(4096, 4, 512)
    assert rows[("model.layers.*.mlp.gate_up_proj", 4)] == GemmProblem(2 * 1792, 4, 4096)
    assert rows[("model.layers.*.mlp.down_proj", 4)] == GemmProblem(4096, 4, 1792)
    assert rows[("lm_head", 4)] == GemmProblem(16032, 4, 4096, False, BF16, BF16)


def test_llama_3_70b_tp8_and_qwen_bias() -> None:
    rows = by_layer(problems_from_config(PRESETS["llama-3-70b"], tp=8, batch_sizes=[1]))
    assert rows[("model.layers.*.self_attn.qkv_proj", 1)] == GemmProblem(1280, 1, 8192)
    assert rows[("model.layers.*.mlp.down_proj", 1)] == GemmProblem(8192, 1, 3584)
    qwen = by_layer(problems_from_config(PRESETS["qwen2-7b"], tp=1, batch_sizes=[1]))
    assert qwen[("model.layers.*.self_attn.qkv_proj", 1)] == GemmProblem(3584 + 2 * 512, 1, 3584,
                                                                          bias=True)
    assert not qwen[("model.layers.*.self_attn.o_proj", 1)].bias


def test_bad_tp_and_architecture() -> None:
    with pytest.raises(ValueError, match="not divisible by the tensor-parallel size 3"):
        problems_from_config(PRESETS["llama-3-8b"], tp=3)
    with pytest.raises(ValueError, match="unsupported architecture 'GPT2LMHeadModel'"):
        problems_from_config({**PRESETS["tiny-llama"], "architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        load_model_config("no-such-model")


def test_recording_flushes_and_merges(tmp_path: Path) -> None:
    path = tmp_path / "fp8_shapes.csv"
    problem = GemmProblem(64, 1, 32)
    for _ in range(2):
        with recording(str(path)) as recorder:
            recorder.record(problem, "model.layers.3.mlp.down_proj")
            recorder.record(problem, "model.layers.4.mlp.down_proj")
    (row,) = read_shapes(path)
    assert (row.problem == problem and row.count == 4
            and row.layers == ("model.layers.*.mlp.down_proj",))


def test_layer_pattern() -> None:
    assert (layer_pattern("model.layers.12.self_attn.qkv_proj")
            == "model.layers.*.self_attn.qkv_proj")
    assert layer_pattern("lm_head") == "lm_head"


def test_recorder_dtype_filter() -> None:
    from solidx.shape_capture.recorder import ShapeRecorder

    recorder = ShapeRecorder(frozenset({FP8}))
    recorder.record(GemmProblem(64, 1, 32, dtype=FP8), "a")
    recorder.record(GemmProblem(64, 1, 32, dtype=BF16), "lm_head")
    assert [r.problem.dtype for r in recorder.rows()] == [FP8]
