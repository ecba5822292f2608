"""fp8 checkpoints of every layout, written by the tests from one tiny random Llama (float32):
Quark (by `solidx quantize`), Quark's "fp8" export, AMMO (TensorRT-LLM names), a separate
quantized-weights file, and dynamic quantization of the float32 checkpoint.

Each must load its weights and scales exactly (fused parts requantized to the largest scale),
and give first-token log-probabilities close to the float32 model's. Stated tolerance, per prompt:
mean |Δ logprob| ≤ 0.25 × the reference's standard deviation over the vocabulary and
KL(reference ‖ fp8) ≤ 0.1 nats (measured: ≤ 0.17 × and ≤ 0.06; bfloat16 weights give 0.015 ×).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from solidx.cli.main import main
from solidx.runtime import LLM, SamplingParams
from solidx.runtime.layers.linear import LinearBase
from solidx.runtime.models.llama import LlamaForCausalLM
from solidx.runtime.quantization.checkpoint_formats import fused_parts
from solidx.runtime.quantization.fp8_math import FP8_DTYPE, FP8_MAX, dequantize, quantize
from tests.checkpoints import CORPUS, make_checkpoint

PROMPTS = ["The quick brown fox", "A paged KV cache stores keys and values", "Greedy"]
LAYERS = 2
Tensors = dict[str, torch.Tensor]


# -- checkpoints -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("fp8") / "llama", "llama-gqa")


@pytest.fixture(scope="module")
def quark(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`solidx quantize` of ``base``, calibrated on the test prompts and the tokenizer corpus."""
    root = tmp_path_factory.mktemp("quark")
    prompts = root / "calib.txt"
    prompts.write_text("\n".join(PROMPTS + CORPUS) + "\n")
    out = root / "llama-fp8"
    result = CliRunner().invoke(
        main, ["quantize", "--model", str(base), "-o", str(out), "--calib-prompts", str(prompts),
               "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return out


def derived(src: Path, dst: Path, tensors: Tensors, quantization_config: dict | None) -> Path:
    """A copy of checkpoint ``src`` with other tensors and quantization_config."""
    shutil.copytree(src, dst)
    save_file(tensors, str(dst / "model.safetensors"))
    config = json.loads((dst / "config.json").read_text())
    config.pop("quantization_config", None)
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def fp8_export(quark: Path, dst: Path) -> Path:
    """Quark's quant_method "fp8" layout: self_attn.k_scale / v_scale, and an fp8 lm_head."""
    tensors = load_file(quark / "model.safetensors")
    for name in [n for n in tensors if n.endswith("output_scale")]:
        attn, proj, _ = name.rsplit(".", 2)
        tensors[f"{attn}.{proj[0]}_scale"] = tensors.pop(name)
    tensors["lm_head.weight"], tensors["lm_head.weight_scale"] = quantize(tensors["lm_head.weight"])
    return derived(quark, dst, tensors, {"quant_method": "fp8", "activation_scheme": "static",
                                         "ignored_layers": []})


def ammo_export(quark: Path, dst: Path) -> Path:
    """TensorRT-LLM names; q/k/v fused into one fp8 tensor with one scale, as AMMO writes it."""
    q = load_file(quark / "model.safetensors")
    tensors = {
        "transformer.vocab_embedding.weight": q["model.embed_tokens.weight"],
        "transformer.ln_f.weight": q["model.norm.weight"],
        "lm_head.weight": q["lm_head.weight"],
    }
    for i in range(LAYERS):
        hf, trt = f"model.layers.{i}", f"transformer.layers.{i}"
        tensors[f"{trt}.input_layernorm.weight"] = q[f"{hf}.input_layernorm.weight"]
        tensors[f"{trt}.post_layernorm.weight"] = q[f"{hf}.post_attention_layernorm.weight"]
        parts = [f"{hf}.self_attn.{p}_proj" for p in "qkv"]
        fused = torch.cat([dequantize(q[f"{p}.weight"], q[f"{p}.weight_scale"]) for p in parts])
        weight, scale = quantize(fused)
        tensors[f"{trt}.attention.qkv.weight"] = weight
        tensors[f"{trt}.attention.qkv.weights_scaling_factor"] = scale
        tensors[f"{trt}.attention.qkv.activation_scaling_factor"] = q[f"{parts[0]}.input_scale"]
        tensors[f"{trt}.attention.kv_cache_scaling_factor"] = torch.maximum(
            q[f"{parts[1]}.output_scale"], q[f"{parts[2]}.output_scale"]
        )
        for ammo, name in (("attention.dense", "self_attn.o_proj"), ("mlp.fc", "mlp.gate_proj"),
                           ("mlp.gate", "mlp.up_proj"), ("mlp.proj", "mlp.down_proj")):
            tensors[f"{trt}.{ammo}.weight"] = q[f"{hf}.{name}.weight"]
            tensors[f"{trt}.{ammo}.weights_scaling_factor"] = q[f"{hf}.{name}.weight_scale"]
            tensors[f"{trt}.{ammo}.activation_scaling_factor"] = q[f"{hf}.{name}.input_scale"]
    return derived(quark, dst, tensors, None)


def side_file_checkpoint(base: Path, quark: Path, dst: Path) -> Path:
    """The float32 folder plus fp8/llama.safetensors: the quantized linear layers, with Quark's
    module names (weight_quantizer.scale, ...), as the ROCm docs' side file."""
    shutil.copytree(base, dst)
    renames = {"weight_scale": "weight_quantizer.scale", "input_scale": "input_quantizer.scale",
               "output_scale": "output_quantizer.scale"}
    side = {}
    for name, tensor in load_file(quark / "model.safetensors").items():
        module, _, leaf = name.rpartition(".")
        if "_proj" in module:
            side[f"{module}.{renames.get(leaf, leaf)}"] = tensor
    (dst / "fp8").mkdir()
    save_file(side, str(dst / "fp8" / "llama.safetensors"))
    return dst


# -- what the engine computes ----------------------------------------------------------------


def first_logprobs(llm: LLM) -> torch.Tensor:
    """Log-probabilities [prompts, vocab] of the first generated token of each prompt."""
    vocab = llm.llm_engine.vocab_size
    params = SamplingParams(temperature=0, max_tokens=1, logprobs=vocab)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    return torch.stack(
        [torch.tensor([out.outputs[0].logprobs[0][t] for t in range(vocab)]) for out in outputs]
    )


def assert_close_to_reference(reference: torch.Tensor, got: torch.Tensor) -> None:
    mean_err = (got - reference).abs().mean(-1)
    kl = (reference.exp() * (reference - got)).sum(-1)
    assert (mean_err <= 0.25 * reference.std(-1)).all(), (mean_err, reference.std(-1))
    assert (kl <= 0.1).all(), kl


@pytest.fixture(scope="module")
def reference(base: Path) -> torch.Tensor:
    return first_logprobs(LLM(str(base), max_logprobs=-1))


def model_of(llm: LLM) -> torch.nn.Module:
    return llm.llm_engine.model_runner.model


def assert_weights_match(llm: LLM, stored: Callable[[str], tuple[torch.Tensor, torch.Tensor]],
                         input_scale: Callable[[str], torch.Tensor] | None) -> None:
    """Every fp8 layer holds its checkpoint parts (``stored(part) -> (weight, scale)``) under one
    scale, within the rounding of one (re)quantization, and the largest input scale."""
    for name, layer in model_of(llm).named_modules():
        if not isinstance(layer, LinearBase):
            continue
        parts = fused_parts(name, LlamaForCausalLM.packed_modules_mapping)
        expected = torch.cat([dequantize(*stored(part)) for part in parts])
        got = dequantize(layer.weight, layer.weight_scale)
        assert layer.weight.dtype == FP8_DTYPE and layer.weight_scale.shape == ()
        bound = expected.abs() * 2**-4 + float(layer.weight_scale) * 2**-9
        assert ((got - expected).abs() <= bound * (1 + 1e-6)).all(), name
        if input_scale is not None:
            assert float(layer.input_scale) == max(float(input_scale(p)) for p in parts), name


# -- the layouts -----------------------------------------------------------------------------


def test_quark_checkpoint_from_solidx_quantize(quark: Path, reference: torch.Tensor) -> None:
    config = json.loads((quark / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "quark" and config["exclude"] == ["lm_head"]
    stored = load_file(quark / "model.safetensors")
    assert stored["model.layers.0.self_attn.q_proj.weight"].dtype == FP8_DTYPE
    assert stored["lm_head.weight"].dtype == torch.float32
    llm = LLM(str(quark), max_logprobs=-1)  # quantization="fp8" from config.json
    assert llm.llm_engine.config.quantization == "fp8"
    assert_weights_match(
        llm,
        lambda p: (stored[f"{p}.weight"], stored[f"{p}.weight_scale"]),
        lambda p: stored[f"{p}.input_scale"],
    )
    assert_close_to_reference(reference, first_logprobs(llm))


def test_fused_parts_are_requantized_to_the_largest_scale(quark: Path) -> None:
    stored = load_file(quark / "model.safetensors")
    layer = model_of(LLM(str(quark), max_logprobs=-1)).model.layers[1].self_attn.qkv_proj
    names = [f"model.layers.1.self_attn.{p}_proj" for p in "qkv"]
    scales = [stored[f"{n}.weight_scale"] for n in names]
    assert len(set(map(float, scales))) == 3  # the parts really carry different scales
    shared = max(scales)
    expected = torch.cat([
        ((stored[f"{n}.weight"].float() * s) / shared).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        for n, s in zip(names, scales)
    ])
    assert float(layer.weight_scale) == float(shared)
    assert torch.equal(layer.weight.view(torch.uint8), expected.view(torch.uint8))


def test_quark_fp8_export(quark: Path, tmp_path: Path, reference: torch.Tensor,
                          caplog: pytest.LogCaptureFixture) -> None:
    folder = fp8_export(quark, tmp_path / "fp8-export")
    stored = load_file(folder / "model.safetensors")
    with caplog.at_level(logging.INFO):
        llm = LLM(str(folder), max_logprobs=-1, kv_cache_dtype="fp8")
    assert "lm_head is stored as fp8" in caplog.text
    head = model_of(llm).lm_head.weight
    assert head.dtype == torch.float32
    assert torch.equal(head, dequantize(stored["lm_head.weight"], stored["lm_head.weight_scale"]))
    assert_weights_match(
        llm,
        lambda p: (stored[f"{p}.weight"], stored[f"{p}.weight_scale"]),
        lambda p: stored[f"{p}.input_scale"],
    )
    attention = model_of(llm).model.layers[1].self_attn.attn
    assert attention.k_scale == float(stored["model.layers.1.self_attn.k_scale"])
    assert attention.v_scale == float(stored["model.layers.1.self_attn.v_scale"])
    assert_close_to_reference(reference, first_logprobs(llm))


def test_ammo_checkpoint(quark: Path, tmp_path: Path, reference: torch.Tensor,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    folder = ammo_export(quark, tmp_path / "ammo")
    stored = load_file(folder / "model.safetensors")
    monkeypatch.setenv("VLLM_FP8_USE_AMMO", "1")
    llm = LLM(str(folder), max_logprobs=-1, quantization="fp8", kv_cache_dtype="fp8")
    ammo = {"q_proj": "attention.qkv", "k_proj": "attention.qkv", "v_proj": "attention.qkv",
            "o_proj": "attention.dense", "gate_proj": "mlp.fc", "up_proj": "mlp.gate",
            "down_proj": "mlp.proj"}
    sizes = {"q_proj": (0, 64), "k_proj": (64, 96), "v_proj": (96, 128)}

    def trt(part: str) -> str:
        return f"transformer.layers.{part.split('.')[2]}.{ammo[part.rsplit('.', 1)[1]]}"

    def weight(part: str) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = stored[f"{trt(part)}.weight"]
        rows = sizes.get(part.rsplit(".", 1)[1])
        return ((tensor[rows[0]:rows[1]] if rows else tensor),
                stored[f"{trt(part)}.weights_scaling_factor"])

    assert_weights_match(llm, weight, lambda p: stored[f"{trt(p)}.activation_scaling_factor"])
    attention = model_of(llm).model.layers[0].self_attn.attn
    kv = float(stored["transformer.layers.0.attention.kv_cache_scaling_factor"])
    assert attention.k_scale == attention.v_scale == kv
    assert_close_to_reference(reference, first_logprobs(llm))


def test_quantization_param_path_side_file(base: Path, quark: Path, tmp_path: Path,
                                           reference: torch.Tensor) -> None:
    folder = side_file_checkpoint(base, quark, tmp_path / "side")
    stored = load_file(quark / "model.safetensors")
    llm = LLM(
        str(folder),
        max_logprobs=-1,
        quantization="fp8",
        quantization_param_path="fp8/llama.safetensors",
    )
    assert_weights_match(
        llm,
        lambda p: (stored[f"{p}.weight"], stored[f"{p}.weight_scale"]),
        lambda p: stored[f"{p}.input_scale"],
    )
    assert_close_to_reference(reference, first_logprobs(llm))
    with pytest.raises(FileNotFoundError, match="relative to the model folder"):
        LLM(str(folder), quantization="fp8", quantization_param_path="fp8/none.safetensors")
    with pytest.raises(ValueError, match="pass quantization='fp8'"):
        LLM(str(folder), quantization_param_path="fp8/llama.safetensors")


def test_dynamic_quantization_of_a_float_checkpoint(base: Path, reference: torch.Tensor) -> None:
    llm = LLM(str(base), max_logprobs=-1, quantization="fp8")
    stored = load_file(base / "model.safetensors")
    assert_weights_match(llm, lambda p: (stored[f"{p}.weight"], torch.tensor(1.0)), None)
    network = model_of(llm)
    assert not hasattr(network.model.layers[0].mlp.down_proj, "input_scale")
    assert network.lm_head.weight.dtype == network.model.embed_tokens.weight.dtype == torch.float32
    assert_close_to_reference(reference, first_logprobs(llm))


# -- refusals --------------------------------------------------------------------------------


def _set(name: str, value: torch.Tensor) -> Callable[[Tensors], None]:
    return lambda tensors: tensors.__setitem__(name, value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set("model.layers.0.self_attn.q_proj.weight_scale", torch.tensor(float("nan"))),
         r"'model\.layers\.0\.self_attn\.q_proj\.weight_scale' is nan"),
        (_set("model.layers.1.mlp.down_proj.input_scale", torch.tensor(0.0)),
         r"'model\.layers\.1\.mlp\.down_proj\.input_scale' is 0\.0"),
        (_set("model.layers.0.mlp.up_proj.weight_scale", torch.ones(128)),
         r"'model\.layers\.0\.mlp\.up_proj\.weight_scale' has shape \(128,\)"),
        (_set("model.layers.0.self_attn.v_proj.output_scale", torch.tensor(-1.0)),
         r"'model\.layers\.0\.self_attn\.v_proj\.output_scale' is -1\.0"),
        (lambda tensors: tensors.pop("model.layers.1.mlp.gate_proj.weight_scale"),
         r"missing tensors: model\.layers\.1\.mlp\.gate_proj\.weight_scale"),
        (lambda tensors: tensors.pop("model.layers.0.self_attn.o_proj.input_scale"),
         r"missing tensors: model\.layers\.0\.self_attn\.o_proj\.input_scale"),
        (_set("model.layers.0.self_attn.k_proj.weight", torch.zeros(32, 64)),
         r"qkv_proj fuses .*, but model\.layers\.0\.self_attn\.k_proj is not stored as fp8"),
    ],
    ids=["nan", "zero", "shape", "negative-kv", "missing-weight-scale", "missing-input-scale",
         "partly-fp8-fused-layer"],
)
def test_bad_scales_are_refused_naming_the_tensor(quark: Path, tmp_path: Path, edit, message):
    tensors = load_file(quark / "model.safetensors")
    edit(tensors)
    config = json.loads((quark / "config.json").read_text())["quantization_config"]
    folder = derived(quark, tmp_path / "broken", tensors, config)
    with pytest.raises(ValueError, match=message):
        LLM(str(folder), max_logprobs=-1)


def test_unsupported_quantization_configs_are_refused(quark: Path, tmp_path: Path) -> None:
    tensors = load_file(quark / "model.safetensors")
    with pytest.raises(ValueError, match="quant_method='awq'"):
        LLM(str(derived(quark, tmp_path / "awq", tensors, {"quant_method": "awq"})))
    config = json.loads((quark / "config.json").read_text())["quantization_config"]
    config["global_quant_config"]["weight"]["qscheme"] = "per_channel"
    with pytest.raises(ValueError, match="only fp8_e4m3 per_tensor is supported"):
        LLM(str(derived(quark, tmp_path / "per-channel", tensors, config)))


# -- KV cache --------------------------------------------------------------------------------

CHUNKED = {"max_num_batched_tokens": 3, "max_num_seqs": 1}  # later chunks read the cache


def test_fp8_kv_cache_with_the_checkpoints_scales(quark: Path) -> None:
    stored = load_file(quark / "model.safetensors")
    llm = LLM(str(quark), max_logprobs=-1, kv_cache_dtype="fp8", **CHUNKED)
    runner = llm.llm_engine.model_runner
    assert runner.kv_cache.dtype == FP8_DTYPE
    for i, attention in enumerate(runner.attention_layers):
        assert attention.k_scale == float(stored[f"model.layers.{i}.self_attn.k_proj.output_scale"])
        assert attention.v_scale == float(stored[f"model.layers.{i}.self_attn.v_proj.output_scale"])
    reference = first_logprobs(LLM(str(quark), max_logprobs=-1, **CHUNKED))
    assert_close_to_reference(reference, first_logprobs(llm))


def test_fp8_kv_cache_without_scales_uses_one(base: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO):
        llm = LLM(str(base), max_logprobs=-1, kv_cache_dtype="fp8", **CHUNKED)
    assert "no KV-cache scales, using 1.0" in caplog.text
    assert all(a.k_scale == a.v_scale == 1.0 for a in llm.llm_engine.model_runner.attention_layers)
    got = first_logprobs(llm)
    expected = first_logprobs(LLM(str(base), max_logprobs=-1, **CHUNKED))
    assert (got - expected).abs().max() > 0  # the cache really is read back from fp8
    assert_close_to_reference(expected, got)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    assert len(llm.generate(PROMPTS[:1], params, use_tqdm=False)[0].outputs[0].token_ids) == 8


def test_kv_scales_unused_with_an_auto_cache_said_once(quark: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        llm = LLM(str(quark), max_logprobs=-1)
    assert caplog.text.count("KV-cache scales are unused") == 1
    assert llm.llm_engine.model_runner.kv_cache.dtype == torch.float32


def test_kv_scales_of_only_some_layers_are_refused(quark: Path, tmp_path: Path) -> None:
    tensors = load_file(quark / "model.safetensors")
    del tensors["model.layers.1.self_attn.v_proj.output_scale"]
    config = json.loads((quark / "config.json").read_text())["quantization_config"]
    folder = derived(quark, tmp_path / "partial-kv", tensors, config)
    with pytest.raises(ValueError, match=r"not 'model\.layers\.1\.self_attn\.v_scale'"):
        LLM(str(folder), max_logprobs=-1, kv_cache_dtype="fp8")


@pytest.mark.gpu
def test_quark_checkpoint_on_the_gpu(base: Path, quark: Path) -> None:
    """Static scales, requantized fused parts and the fp8 KV cache through the GPU kernels."""
    kwargs = {"device": "cuda", "dtype": "bfloat16", "kv_cache_memory_bytes": 1 << 26}
    reference = first_logprobs(LLM(str(base), max_logprobs=-1, **kwargs))
    for extra in ({}, {"kv_cache_dtype": "fp8", **CHUNKED}):
        llm = LLM(str(quark), max_logprobs=-1, **kwargs, **extra)
        assert_close_to_reference(reference, first_logprobs(llm))
        params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
        outputs = llm.generate(PROMPTS, params, use_tqdm=False)
        assert all(len(out.outputs[0].token_ids) == 16 for out in outputs)
