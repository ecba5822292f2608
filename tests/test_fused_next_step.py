"""Kernels that do the next step's work too: RMSNorm and SiLU-and-mul quantizing their output for
the fp8 linear layer they feed, rotary writing the KV cache; the layers and the Llama wiring.

Each fused kernel is compared bit for bit with the separate kernels it replaces (on the CPU both
under TRITON_INTERPRET=1) and within rounding with the torch reference (the interpreter truncates
float32 to bfloat16, and the kernels' float32 sums run in another order than torch's). Every
path of the dynamic scale (one program, partial maxima, the separate quantization) runs on small
shapes by lowering its thresholds. ``-m gpu`` tests run Llama-3-8B sizes, a decoder layer, and
engines with and without the fusion.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import triton

import solidx.runtime.layers.fused.rms_norm as rms_norm_module
import solidx.runtime.layers.fused.silu_mul as silu_mul_module
import solidx.runtime.quantization.input_quant as iq
from solidx.runtime import LLM, SamplingParams
from solidx.runtime.attention import reference, triton_store
from solidx.runtime.context import ForwardContext, forward_context
from solidx.runtime.layers import fused
from solidx.runtime.layers.activation import SiluAndMul
from solidx.runtime.layers.attention import Attention
from solidx.runtime.layers.fused.rms_norm import rms_norm
from solidx.runtime.layers.fused.rotary import rotary_embedding, rotary_embedding_store_kv
from solidx.runtime.layers.fused.silu_mul import silu_and_mul
from solidx.runtime.layers.layernorm import RMSNorm
from solidx.runtime.layers.linear import LinearBase, UnquantizedLinearMethod
from solidx.runtime.layers.rotary import RotaryEmbedding
from solidx.runtime.models.llama import LlamaDecoderLayer
from solidx.runtime.quantization.fp8 import Fp8LinearMethod
from solidx.runtime.quantization.fp8_math import FP8_DTYPE, FP8_MAX, quantize
from solidx.runtime.quantization.input_quant import InputQuant, QuantizedInput
from solidx.shape_capture.model_args import ModelArgs
from solidx.shape_capture.presets import PRESETS

PATHS = ["static", "one_program", "partials", "separate"]


def dynamic_path(monkeypatch: pytest.MonkeyPatch, module, path: str) -> InputQuant:
    """The InputQuant of ``path``, with ``module``'s thresholds lowered so that small inputs
    (more than 64 elements, more than 2 partial maxima) take it."""
    if path in ("partials", "separate"):
        monkeypatch.setattr(module, "ONE_PROGRAM_MAX", 64)
    if path == "separate":
        monkeypatch.setattr(module, "PARTIALS_MAX", 2)
    scale = torch.tensor(0.01) if path == "static" else None
    return InputQuant(scale, FP8_DTYPE)


@contextmanager
def refusing_separate_quantization(refuse: bool) -> Iterator[None]:
    """With ``refuse``, make any launch of the separate input quantization fail."""
    def fail(*args, **kwargs):
        raise AssertionError("the fused path launched the separate quantization")
    saved = iq.quantize_input
    if refuse:
        iq.quantize_input = fail
    try:
        yield
    finally:
        iq.quantize_input = saved


def fused_in_one(module, quant: InputQuant, numel: int, partials: int) -> bool:
    """Whether the kernel of ``module`` quantizes without the separate launch (static, or a
    dynamic scale by one program or from at most ``PARTIALS_MAX`` partial maxima)."""
    return (quant.scale is not None or numel <= module.ONE_PROGRAM_MAX
            or partials <= module.PARTIALS_MAX)


def separate_quantize(out: torch.Tensor, scale: torch.Tensor | None) -> QuantizedInput:
    """What a linear layer's own quantization launch makes of ``out`` (rows) on a GPU: its Triton
    kernels (on the CPU called directly, since ``quantize_input`` takes the torch path there)."""
    if out.is_cuda:
        return InputQuant(scale, FP8_DTYPE).quantize(out)
    flat, numel = out.reshape(-1), out.numel()
    q = torch.empty(numel, dtype=FP8_DTYPE)
    grid = (triton.cdiv(numel, iq.BLOCK),)
    if scale is not None:
        iq._quantize_blocks[grid](flat, q, scale, scale, numel, False, FP8_MAX, iq.MIN_SCALE,
                                  iq.BLOCK, PDL=False)
        return QuantizedInput(q.view(out.shape), scale, out.dtype)
    new_scale = torch.empty((), dtype=torch.float32)
    if numel <= iq.ONE_PROGRAM_MAX:
        iq._quantize_one_program[(1,)](flat, q, new_scale, numel, FP8_MAX, iq.MIN_SCALE,
                                       triton.next_power_of_2(numel), PDL=False)
    else:
        amax = flat.float().abs().amax()
        iq._quantize_blocks[grid](flat, q, amax, new_scale, numel, True, FP8_MAX, iq.MIN_SCALE,
                                  iq.BLOCK, PDL=False)
    return QuantizedInput(q.view(out.shape), new_scale, out.dtype)


def assert_same(got: QuantizedInput, want: QuantizedInput) -> None:
    assert got.q.shape == want.q.shape and got.dtype == want.dtype
    assert got.q.dtype == want.q.dtype == FP8_DTYPE and got.scale.shape == ()
    assert torch.equal(got.q.view(torch.uint8), want.q.view(torch.uint8))
    assert float(got.scale) == float(want.scale)


def assert_close(got: QuantizedInput, want: QuantizedInput) -> None:
    """Within one e4m3 step (and the model dtype's rounding before it) of the reference."""
    assert got.q.shape == want.q.shape and got.dtype == want.dtype
    torch.testing.assert_close(got.scale, want.scale, rtol=2**-6, atol=0)
    torch.testing.assert_close(got.q.float() * got.scale, want.q.float() * want.scale,
                               rtol=2**-3 + 2**-6, atol=float(want.scale) * 2**-8)


# -- RMSNorm + quantization ------------------------------------------------------------------


def check_norm_quant(tokens: int, hidden: int, dtype: torch.dtype, device: str,
                     quant: InputQuant, with_residual: bool) -> None:
    torch.manual_seed(tokens + hidden)
    norm = RMSNorm(hidden, eps=1e-5, params_dtype=dtype).to(device)
    norm.weight.copy_(torch.rand(hidden) + 0.5)
    x = torch.randn(tokens, hidden, dtype=dtype, device=device) * 3
    residual = torch.randn(tokens, hidden, dtype=dtype, device=device) if with_residual else None
    quant = InputQuant(None if quant.scale is None else quant.scale.to(device), quant.dtype)
    one_launch = fused_in_one(rms_norm_module, quant, x.numel(), partials=tokens)
    with refusing_separate_quantization(one_launch):
        got = rms_norm(x, norm.weight, norm.eps, residual, quant)
    plain = rms_norm(x, norm.weight, norm.eps, residual)
    want = norm.forward_native(x, residual, quant)
    if residual is not None:
        (got, got_residual), (plain, plain_residual), (want, want_residual) = got, plain, want
        assert torch.equal(got_residual, plain_residual)
        torch.testing.assert_close(got_residual, want_residual, rtol=2**-6, atol=2**-6)
    assert isinstance(got, QuantizedInput) and got.q.shape == (tokens, hidden)
    assert_same(got, separate_quantize(plain, quant.scale) if one_launch else quant.quantize(plain))
    assert_close(got, want)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("tokens", [1, 3])  # one row: quantized from registers
def test_rms_norm_quantizes_as_the_separate_kernel_does(path, dtype, with_residual, tokens,
                                                        monkeypatch):
    quant = dynamic_path(monkeypatch, rms_norm_module, path)
    check_norm_quant(tokens, 40, dtype, "cpu", quant, with_residual)


def test_rms_norm_separate_flag_quantizes_in_a_launch_of_its_own(monkeypatch):
    x, weight = torch.randn(2, 24), torch.rand(24) + 0.5
    calls = []
    monkeypatch.setattr(iq, "quantize_input",
                        lambda t, scale, dtype: calls.append(t.shape) or quantize(t, scale, dtype))
    out = rms_norm(x, weight, 1e-5, quant=InputQuant(None, FP8_DTYPE), separate=True)
    assert isinstance(out, QuantizedInput) and calls == [(2, 24)]


def test_rms_norm_layer_on_the_cpu_hands_over_the_torch_quantization():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    norm.weight.copy_(torch.rand(16) + 0.5)
    x, residual = torch.randn(3, 16), torch.randn(3, 16)
    got, new_residual = norm(x, residual, InputQuant(None, FP8_DTYPE))
    want, want_residual = norm.forward_native(x, residual)
    q, scale = quantize(want)
    assert isinstance(got, QuantizedInput) and got.dtype == torch.float32
    assert torch.equal(got.q.view(torch.uint8), q.view(torch.uint8)) and got.scale == scale
    assert torch.equal(new_residual, want_residual)
    assert torch.equal(norm(x), norm.forward_native(x))  # no quant: the plain tensor


# -- SiLU-and-mul + quantization -------------------------------------------------------------


def check_silu_quant(tokens: int, d: int, dtype: torch.dtype, device: str,
                     quant: InputQuant) -> None:
    torch.manual_seed(tokens + d)
    x = torch.randn(tokens, 2 * d, dtype=dtype, device=device) * 4
    quant = InputQuant(None if quant.scale is None else quant.scale.to(device), quant.dtype)
    partials = tokens * triton.cdiv(d, silu_mul_module.BLOCK)
    one_launch = fused_in_one(silu_mul_module, quant, tokens * d, partials)
    with refusing_separate_quantization(one_launch):
        got = silu_and_mul(x, quant)
    assert isinstance(got, QuantizedInput) and got.q.shape == (tokens, d)
    plain = silu_and_mul(x)
    assert_same(got, separate_quantize(plain, quant.scale) if one_launch else quant.quantize(plain))
    assert_close(got, SiluAndMul().forward_native(x, quant))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens, d", [(1, 37), (3, 37), (2, 1100)])  # 1100: two blocks
def test_silu_mul_quantizes_as_the_separate_kernel_does(path, dtype, tokens, d, monkeypatch):
    quant = dynamic_path(monkeypatch, silu_mul_module, path)
    check_silu_quant(tokens, d, dtype, "cpu", quant)


def test_silu_mul_layer_on_the_cpu_hands_over_the_torch_quantization():
    x = torch.randn(2, 20)
    got = SiluAndMul()(x, InputQuant(torch.tensor(0.02), FP8_DTYPE))
    q, _ = quantize(SiluAndMul().forward_native(x), torch.tensor(0.02))
    assert isinstance(got, QuantizedInput) and float(got.scale) == pytest.approx(0.02)
    assert torch.equal(got.q.view(torch.uint8), q.view(torch.uint8))


# -- quantization from partial maxima --------------------------------------------------------


def test_quantize_with_partials_matches_the_torch_quantization():
    numel = 2 * iq.PARTIALS_BLOCK + 7
    grid = torch.randn(numel, generator=torch.Generator().manual_seed(1)) * 60
    x = grid.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float() * 2.0**-3  # exact: no rounding
    x[numel // 3] = -FP8_MAX * 2.0**-3
    partials = torch.stack([part.abs().max() for part in x.split(100)])
    q, scale = iq.quantize_with_partials(x, partials, FP8_DTYPE)
    q_ref, s_ref = quantize(x)
    assert float(scale) == float(s_ref) == 2.0**-3
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    with pytest.raises(ValueError, match="at most"):
        iq.quantize_with_partials(x, torch.zeros(iq.PARTIALS_MAX + 1), FP8_DTYPE)


# -- rotary + KV-cache write -----------------------------------------------------------------


def _num_slots(tokens: int) -> int:
    """Cache slots for a step of ``tokens`` (blocks of 4): room for some never written."""
    return 4 * max(6, triton.cdiv(2 * tokens, 4))


def _rotary_inputs(tokens: int, q_heads: int, kv_heads: int, head_dim: int, dtype, device):
    rotary = RotaryEmbedding(head_dim, 256, 10000.0).to(device)
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, dtype=dtype, device=device)
    positions = torch.randint(0, 256, (tokens,), device=device)
    slots = torch.randperm(_num_slots(tokens))[:tokens].int().to(device)
    slots[tokens // 2] = -1  # a padding token: rotated, not cached
    return rotary, qkv, positions, slots


def check_rotary_store(tokens: int, q_heads: int, kv_heads: int, head_dim: int,
                       dtype: torch.dtype, cache_dtype: torch.dtype, device: str) -> None:
    torch.manual_seed(tokens * 7 + head_dim)
    rotary, qkv, positions, slots = _rotary_inputs(tokens, q_heads, kv_heads, head_dim, dtype,
                                                   device)
    sizes = [q_heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    num_slots = _num_slots(tokens)
    shape = (num_slots // 4, 4, kv_heads, head_dim)
    caches = [torch.zeros(shape, dtype=cache_dtype, device=device) for _ in range(6)]
    k_scale, v_scale = (0.5, 0.25) if cache_dtype == FP8_DTYPE else (1.0, 1.0)

    fused_qkv = qkv.clone()
    q, k, v = fused_qkv.split(sizes, dim=-1)
    rotary_embedding_store_kv(positions, q, k, v, rotary.cos_sin_cache, head_dim, caches[0],
                              caches[1], slots, k_scale, v_scale)

    separate_qkv = qkv.clone()  # the kernels it replaces
    q2, k2, v2 = separate_qkv.split(sizes, dim=-1)
    rotary_embedding(positions, q2, k2, rotary.cos_sin_cache, head_dim)
    triton_store.store_kvcache(k2.view(tokens, kv_heads, head_dim),
                               v2.view(tokens, kv_heads, head_dim), caches[2], caches[3], slots,
                               k_scale, v_scale)
    assert torch.equal(fused_qkv, separate_qkv)
    assert torch.equal(caches[0].view(torch.uint8), caches[2].view(torch.uint8))
    assert torch.equal(caches[1].view(torch.uint8), caches[3].view(torch.uint8))

    q3, k3, v3 = qkv.split(sizes, dim=-1)  # the torch reference
    q3, k3 = rotary.forward_native(positions, q3, k3)
    reference.store_kvcache(k3.reshape(tokens, kv_heads, head_dim),
                            v3.reshape(tokens, kv_heads, head_dim), caches[4], caches[5], slots,
                            k_scale, v_scale)
    tol = {"rtol": 2**-6, "atol": 2**-6} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(q, q3, **tol)
    torch.testing.assert_close(k, k3, **tol)
    assert torch.equal(v, v3)
    cache_tol = {"rtol": 2**-3, "atol": 2**-6} if cache_dtype == FP8_DTYPE else tol
    for got, want in ((caches[0], caches[4]), (caches[1], caches[5])):
        torch.testing.assert_close(got.float(), want.float(), **cache_tol)
    written = set(slots.tolist())
    unwritten = torch.tensor([s for s in range(num_slots) if s not in written], device=device)
    for cache in caches[:2]:  # slots nobody writes stay empty
        assert not cache.view(num_slots, -1)[unwritten].float().any()


@pytest.mark.parametrize("dtype, cache_dtype", [(torch.float32, torch.float32),
                                                (torch.bfloat16, torch.bfloat16),
                                                (torch.bfloat16, FP8_DTYPE)])
@pytest.mark.parametrize("tokens, q_heads, kv_heads, head_dim", [(5, 4, 2, 16), (3, 3, 1, 12)])
def test_rotary_store_kernel_matches_the_separate_kernels(tokens, q_heads, kv_heads, head_dim,
                                                          dtype, cache_dtype):
    check_rotary_store(tokens, q_heads, kv_heads, head_dim, dtype, cache_dtype, "cpu")


def test_rotary_store_kernel_refuses_mismatched_caches():
    rotary, qkv, positions, slots = _rotary_inputs(3, 2, 1, 8, torch.float32, "cpu")
    q, k, v = qkv.split([16, 8, 8], dim=-1)
    cache = torch.zeros(2, 4, 1, 8)
    with pytest.raises(ValueError, match="does not hold keys"):
        rotary_embedding_store_kv(positions, q, k, v, rotary.cos_sin_cache, 8,
                                  torch.zeros(2, 4, 2, 8), cache, slots)
    with pytest.raises(ValueError, match="slot_mapping"):
        rotary_embedding_store_kv(positions, q, k, v, rotary.cos_sin_cache, 8, cache, cache,
                                  slots[:2])


def _prefill_context(slots: torch.Tensor) -> ForwardContext:
    """One sequence of ``len(slots)`` new tokens, nothing cached before."""
    tokens = slots.shape[0]
    cu = torch.tensor([0, tokens], dtype=torch.int32, device=slots.device)
    return ForwardContext(slots, cu, cu, tokens, tokens, cu[1:], tokens, None, False)


def _attention(kv_heads: int, head_dim: int, device: str, dtype) -> Attention:
    layer = Attention(4, head_dim, head_dim**-0.5, kv_heads,
                      RotaryEmbedding(head_dim, 256, 10000.0).to(device))
    shape = (6, 4, kv_heads, head_dim)
    layer.k_cache = torch.zeros(shape, dtype=dtype, device=device)
    layer.v_cache = torch.zeros(shape, dtype=dtype, device=device)
    return layer


def test_attention_layer_rotates_in_place_and_caches_on_the_cpu():
    torch.manual_seed(3)
    layer = _attention(2, 16, "cpu", torch.float32)
    rotary, qkv, positions, _ = _rotary_inputs(5, 4, 2, 16, torch.float32, "cpu")
    slots = torch.tensor([9, 3, 4, 20, 0], dtype=torch.int32)
    q, k, v = qkv.split([64, 32, 32], dim=-1)
    want_q, want_k = layer.rotary_emb.forward_native(positions, q, k)
    with forward_context(_prefill_context(slots)):
        out = layer(q, k, v, positions)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)  # what calibration hooks read
    k_cache, v_cache = torch.zeros_like(layer.k_cache), torch.zeros_like(layer.v_cache)
    reference.store_kvcache(want_k.view(5, 2, 16), v.view(5, 2, 16), k_cache, v_cache, slots)
    assert torch.equal(layer.k_cache, k_cache) and torch.equal(layer.v_cache, v_cache)
    cu = torch.tensor([0, 5], dtype=torch.int32)
    want = reference.prefill_attention(want_q.view(5, 4, 16), want_k.view(5, 2, 16),
                                       v.view(5, 2, 16), cu, cu, 5, 5, 16**-0.5)
    assert torch.equal(out, want.reshape(5, 64))


# -- the Llama wiring ------------------------------------------------------------------------


def _decoder_layer(device: str, dtype: torch.dtype, static: bool) -> LlamaDecoderLayer:
    """A tiny-llama decoder layer in fp8 (dynamic, or static input scales 0.05) whose
    ``down_proj`` is left unquantized, as a checkpoint may exclude a layer."""
    args = ModelArgs.from_hf(PRESETS["tiny-llama"])

    def method(prefix: str):
        if prefix.endswith("down_proj"):
            return UnquantizedLinearMethod()
        return Fp8LinearMethod(serialized=static, static_input=static)

    rotary = RotaryEmbedding(args.head_dim, 256, args.rope_theta)
    layer = LlamaDecoderLayer(args, rotary, dtype, method, "model.layers.0")
    generator = torch.Generator().manual_seed(0)
    for name, param in layer.named_parameters():
        if name.endswith("input_scale"):
            param.data.fill_(0.05)
        elif name.endswith("weight_scale"):
            param.data.fill_(2**-7)
        elif name.endswith("layernorm.weight"):
            param.data.copy_(torch.rand(param.shape, generator=generator) + 0.5)
        else:
            values = torch.randn(param.shape, generator=generator) * 0.1
            param.data.copy_(values * 2**7 if param.dtype == FP8_DTYPE else values)
    for module in layer.modules():
        if isinstance(module, LinearBase):
            module.linear_method.process_weights_after_loading(module)
    return layer.to(device)


@pytest.mark.parametrize("static", [False, True])
def test_norms_and_activation_hand_quantized_inputs_to_fp8_layers(static, monkeypatch):
    layer = _decoder_layer("cpu", torch.float32, static)
    seen: dict[str, type] = {}
    for name in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
        layer.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: seen.__setitem__(name, type(args[0]))
        )
    positions = torch.arange(5)
    hidden, residual = torch.randn(5, 64), torch.randn(5, 64)
    with forward_context(_prefill_context(torch.full((5,), -1, dtype=torch.int32))):
        got = layer(positions, hidden, residual)
        assert seen == {"self_attn.qkv_proj": QuantizedInput, "self_attn.o_proj": torch.Tensor,
                        "mlp.gate_up_proj": QuantizedInput, "mlp.down_proj": torch.Tensor}
        monkeypatch.setattr(LinearBase, "input_quant", lambda self: None)
        want = layer(positions, hidden, residual)  # each fp8 layer quantizes its own input
    assert seen["self_attn.qkv_proj"] is torch.Tensor
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_unquantized_layers_refuse_a_quantized_input():
    layer = _decoder_layer("cpu", torch.float32, False).mlp.down_proj
    assert layer.input_quant() is None
    with pytest.raises(TypeError, match="down_proj is not quantized"):
        layer(QuantizedInput(torch.zeros(1, 128, dtype=FP8_DTYPE), torch.tensor(1.0),
                             torch.float32))


# -- GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["static", "dynamic"])
@pytest.mark.parametrize("tokens", [1, 4, 32, 300, 2000])  # one program, partials, separate
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_fused_quantization_at_llama3_8b_sizes(path, tokens, dtype):
    quant = InputQuant(torch.tensor(0.02) if path == "static" else None, FP8_DTYPE)
    check_norm_quant(tokens, 4096, dtype, "cuda", quant, with_residual=True)
    check_silu_quant(tokens, 14336, dtype, "cuda", quant)


@pytest.mark.gpu
@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, FP8_DTYPE])
@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_gpu_rotary_store_at_llama3_8b_sizes(tokens, cache_dtype):
    check_rotary_store(tokens, 32, 8, 128, torch.bfloat16, cache_dtype, "cuda")


def _gpu_decoder_outputs(static: bool, tokens: int) -> list[torch.Tensor]:
    """A decoder layer's output, residual, keys and values cache after one step on CUDA."""
    layer = _decoder_layer("cuda", torch.bfloat16, static)
    layer.self_attn.attn.k_cache = torch.zeros(6, 4, 2, 16, dtype=torch.bfloat16, device="cuda")
    layer.self_attn.attn.v_cache = torch.zeros_like(layer.self_attn.attn.k_cache)
    generator = torch.Generator().manual_seed(tokens)
    hidden = torch.randn(tokens, 64, generator=generator).to("cuda", torch.bfloat16)
    residual = torch.randn(tokens, 64, generator=generator).to("cuda", torch.bfloat16)
    slots = torch.randperm(24, generator=generator)[:tokens].int().cuda()
    with forward_context(_prefill_context(slots)):
        out = layer(torch.arange(tokens, device="cuda"), hidden, residual)
    return [*out, layer.self_attn.attn.k_cache, layer.self_attn.attn.v_cache]


@pytest.mark.gpu
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("tokens", [1, 20])
def test_gpu_decoder_layer_fused_is_bitwise_the_separate_kernels(static, tokens):
    with fused.separate_kernels():
        separate = _gpu_decoder_outputs(static, tokens)
    for got, want in zip(_gpu_decoder_outputs(static, tokens), separate, strict=True):
        assert torch.equal(got, want)


def _engine(quantization: str | None, enforce_eager: bool) -> LLM:
    return LLM("tiny-llama", load_format="dummy", dtype="bfloat16", quantization=quantization,
               enforce_eager=enforce_eager, max_model_len=256, max_num_seqs=8,
               kv_cache_memory_bytes=64 << 20, seed=0)


def _greedy(llm: LLM) -> list[list[int]]:
    prompts = [{"prompt_token_ids": [(7 * i + 3 * j) % 500 + 3 for j in range(5 + 3 * i)]}
               for i in range(4)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    return [out.outputs[0].token_ids for out in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", [None, "fp8"])
@pytest.mark.parametrize("enforce_eager", [False, True])
def test_gpu_engine_gives_the_separate_kernels_greedy_tokens(quantization, enforce_eager):
    with fused.separate_kernels():
        separate = _greedy(_engine(quantization, enforce_eager))
    assert _greedy(_engine(quantization, enforce_eager)) == separate


def _decode_step_kernels(llm: LLM) -> int:
    """CUDA kernels launched by one eager decode step of one sequence (the profiler's count)."""
    engine = llm.llm_engine
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    engine.add_request("launches", {"prompt_token_ids": [5, 9, 13]}, params)
    engine.step()  # the prefill
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        engine.step()
        torch.cuda.synchronize()
    engine.abort_request("launches")
    return sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)


@pytest.mark.gpu
@pytest.mark.parametrize("quantization, saved", [(None, 1), ("fp8", 4)])
def test_gpu_decode_step_launches_fewer_kernels_per_layer(quantization, saved):
    """bf16: rotary + store is one launch; fp8 (dynamic, batch 1) also both norms and the
    SiLU-and-mul quantize for qkv, gate_up and down."""
    llm = _engine(quantization, enforce_eager=True)
    with fused.separate_kernels():
        separate = _decode_step_kernels(llm)
    launched = _decode_step_kernels(llm)
    layers = llm.llm_engine.model_runner.model.args.num_layers
    print(f"{quantization or 'bf16'} decode step: {launched} kernels fused, {separate} separate, "
          f"{layers} layers")
    assert separate - launched == saved * layers
