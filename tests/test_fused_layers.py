"""Fused layer kernels (RMSNorm + residual, rotary, SiLU-and-mul) against the layers' torch code.

CPU tests call the Triton kernels explicitly under TRITON_INTERPRET=1 on small, odd shapes (the
interpreter truncates float32 -> bfloat16 instead of rounding, so bfloat16 is compared within
a few of its ulps there); ``-m gpu`` tests run them at Llama-3-8B sizes and compare an engine with
and without fusion.
"""

from __future__ import annotations

import pytest
import torch

from solidx.runtime import LLM, SamplingParams
from solidx.runtime.layers import fused
from solidx.runtime.layers.activation import SiluAndMul
from solidx.runtime.layers.fused.rms_norm import rms_norm
from solidx.runtime.layers.fused.rotary import rotary_embedding
from solidx.runtime.layers.fused.silu_mul import silu_and_mul
from solidx.runtime.layers.layernorm import RMSNorm
from solidx.runtime.layers.rotary import RotaryEmbedding

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _tolerance(dtype: torch.dtype, device: str) -> dict[str, float]:
    """Room for the reference's and the kernel's float32 sums to round apart by one ulp; on the
    CPU (the interpreter) bfloat16 may be truncated up to three times in a row (4 ulps)."""
    if dtype == torch.float32:
        return {"rtol": 1e-5, "atol": 1e-5}
    if dtype == torch.float16:
        return {"rtol": 2e-3, "atol": 2e-3}
    ulps = 4 if device == "cpu" else 1
    return {"rtol": ulps * 2**-7, "atol": ulps * 2**-7}


def _norm(hidden: int, dtype: torch.dtype, device: str) -> RMSNorm:
    norm = RMSNorm(hidden, eps=1e-5, params_dtype=dtype).to(device)
    norm.weight.copy_(torch.rand(hidden) + 0.5)
    return norm


def _rotary(head_dim: int, max_position: int, device: str) -> RotaryEmbedding:
    return RotaryEmbedding(head_dim, max_position, 500000.0, LLAMA3_SCALING).to(device)


def _qkv(tokens: int, q_heads: int, kv_heads: int, head_dim: int, dtype, device: str):
    """q/k/v views of one fused qkv output, as LlamaAttention splits it."""
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, dtype=dtype, device=device)
    return qkv.split([q_heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)


def check_rms_norm(tokens: int, hidden: int, dtype: torch.dtype, device: str) -> None:
    norm = _norm(hidden, dtype, device)
    x = torch.randn(tokens, hidden, dtype=dtype, device=device) * 3
    residual = torch.randn(tokens, hidden, dtype=dtype, device=device)
    x_before, residual_before = x.clone(), residual.clone()
    tol = _tolerance(dtype, device)

    torch.testing.assert_close(rms_norm(x, norm.weight, norm.eps), norm.forward_native(x), **tol)
    out, new_residual = rms_norm(x, norm.weight, norm.eps, residual)
    ref_out, ref_residual = norm.forward_native(x, residual)
    torch.testing.assert_close(new_residual, ref_residual, **tol)
    torch.testing.assert_close(out, ref_out, **tol)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)


def check_rotary(tokens: int, q_heads: int, kv_heads: int, head_dim: int, dtype, device) -> None:
    rotary = _rotary(head_dim, 4096, device)
    q, k, v = _qkv(tokens, q_heads, kv_heads, head_dim, dtype, device)
    positions = torch.randint(0, 4096, (tokens,), device=device)
    ref_q, ref_k = rotary.forward_native(positions, q, k)
    v_before = v.clone()

    out_q, out_k = rotary_embedding(positions, q, k, rotary.cos_sin_cache, head_dim)
    assert out_q.data_ptr() == q.data_ptr() and out_k.data_ptr() == k.data_ptr()  # in place
    tol = _tolerance(dtype, device)
    torch.testing.assert_close(q, ref_q, **tol)
    torch.testing.assert_close(k, ref_k, **tol)
    assert torch.equal(v, v_before)


def check_silu_mul(tokens: int, d: int, dtype: torch.dtype, device: str) -> None:
    x = torch.randn(tokens, 2 * d, dtype=dtype, device=device) * 4
    tol = _tolerance(dtype, device)
    torch.testing.assert_close(silu_and_mul(x), SiluAndMul().forward_native(x), **tol)


# -- CPU: the kernels under the Triton interpreter -------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens, hidden", [(1, 5), (3, 67), (7, 160)])
def test_rms_norm_kernel_matches_the_torch_code(tokens, hidden, dtype):
    torch.manual_seed(tokens + hidden)
    check_rms_norm(tokens, hidden, dtype, "cpu")


def test_rms_norm_kernel_takes_any_leading_shape_and_no_tokens():
    norm = _norm(12, torch.float32, "cpu")
    x, residual = torch.randn(2, 3, 12), torch.randn(2, 3, 12)
    out, new_residual = rms_norm(x, norm.weight, norm.eps, residual)
    ref_out, ref_residual = norm.forward_native(x, residual)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(new_residual, ref_residual)
    assert rms_norm(torch.empty(0, 12), norm.weight, norm.eps).shape == (0, 12)


def test_rms_norm_kernel_refuses_mismatched_inputs():
    weight = torch.ones(8)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(2, 6), weight, 1e-5)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(torch.randn(2, 8), weight, 1e-5, torch.randn(2, 8, dtype=torch.float16))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "tokens, q_heads, kv_heads, head_dim", [(1, 4, 2, 16), (3, 3, 1, 12), (5, 4, 4, 8)]
)
def test_rotary_kernel_matches_the_torch_code_in_place(tokens, q_heads, kv_heads, head_dim, dtype):
    torch.manual_seed(tokens * 10 + head_dim)
    check_rotary(tokens, q_heads, kv_heads, head_dim, dtype, "cpu")


def test_rotary_kernel_refuses_what_it_cannot_rotate_in_place():
    rotary = _rotary(8, 16, "cpu")
    q, k, positions = torch.randn(2, 16), torch.randn(2, 8), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="heads of 8"):
        rotary_embedding(positions, q[:, :12], k, rotary.cos_sin_cache, 8)
    with pytest.raises(ValueError, match="positions"):
        rotary_embedding(positions[:1], q, k, rotary.cos_sin_cache, 8)
    with pytest.raises(ValueError, match="unit column stride"):
        rotary_embedding(positions, q, k.t().contiguous().t(), rotary.cos_sin_cache, 8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens, d", [(1, 1), (3, 37), (2, 1100)])  # 1100: two column blocks
def test_silu_mul_kernel_matches_the_torch_code(tokens, d, dtype):
    torch.manual_seed(tokens + d)
    check_silu_mul(tokens, d, dtype, "cpu")


def test_silu_mul_kernel_refuses_an_odd_width():
    with pytest.raises(ValueError, match="even width"):
        silu_and_mul(torch.randn(2, 7))


def test_cpu_layers_run_the_torch_code():
    torch.manual_seed(0)
    norm, x, residual = _norm(16, torch.float32, "cpu"), torch.randn(3, 16), torch.randn(3, 16)
    assert not fused.use_triton(x)
    for got, want in zip(norm(x, residual), norm.forward_native(x, residual), strict=True):
        assert torch.equal(got, want)
    rotary = _rotary(8, 32, "cpu")
    q, k, v = _qkv(3, 2, 1, 8, torch.float32, "cpu")
    positions = torch.tensor([0, 5, 31])
    want_q, want_k = rotary.forward_native(positions, q, k)
    assert not torch.equal(want_q, q)  # the torch code leaves its inputs alone
    v_before = v.clone()
    rotary(positions, q, k)  # the layer rotates in place on every device
    assert torch.equal(q, want_q) and torch.equal(k, want_k) and torch.equal(v, v_before)
    assert torch.equal(SiluAndMul()(x), SiluAndMul().forward_native(x))


def test_torch_only_and_separate_kernels_turn_fusion_off_and_back_on():
    x = torch.empty(1, device="meta")
    assert not fused.use_triton(x) and not fused.use_fusion(x)  # not a CUDA tensor
    with fused.torch_only():
        assert not fused._enabled
    with fused.separate_kernels():
        assert not fused._fuse_next
    assert fused._enabled and fused._fuse_next


# -- GPU: Llama-3-8B sizes and the engine ----------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_gpu_kernels_at_llama3_8b_sizes(tokens, dtype):
    torch.manual_seed(tokens)
    check_rms_norm(tokens, 4096, dtype, "cuda")
    check_rotary(tokens, 32, 8, 128, dtype, "cuda")
    check_silu_mul(tokens, 14336, dtype, "cuda")


@pytest.mark.gpu
def test_gpu_layers_dispatch_to_the_kernels_unless_torch_only():
    x = torch.randn(2, 64, device="cuda")
    assert fused.use_triton(x) and fused.use_fusion(x)
    with fused.torch_only():
        assert not fused.use_triton(x) and not fused.use_fusion(x)
    with fused.separate_kernels():
        assert fused.use_triton(x) and not fused.use_fusion(x)
    q, k, _ = _qkv(2, 4, 2, 16, torch.bfloat16, "cuda")
    positions = torch.tensor([3, 9], device="cuda")
    rotary = _rotary(16, 32, "cuda")
    want_q, want_k = rotary.forward_native(positions, q, k)
    with fused.torch_only():
        rotary(positions, q, k)  # the torch code, copied back: exactly its result
    assert torch.equal(q, want_q) and torch.equal(k, want_k)


def _greedy_tokens(enforce_eager: bool) -> list[list[int]]:
    llm = LLM(
        "tiny-llama",
        load_format="dummy",
        dtype="bfloat16",
        enforce_eager=enforce_eager,
        max_model_len=256,
        max_num_seqs=8,
        kv_cache_memory_bytes=64 << 20,
        seed=0,
    )
    prompts = [{"prompt_token_ids": [(7 * i + 3 * j) % 500 + 3 for j in range(5 + 3 * i)]}
               for i in range(4)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    return [out.outputs[0].token_ids for out in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.gpu
@pytest.mark.parametrize("enforce_eager", [False, True])
def test_gpu_engine_gives_the_unfused_greedy_tokens(enforce_eager):
    with fused.torch_only():
        unfused = _greedy_tokens(enforce_eager)
    assert _greedy_tokens(enforce_eager) == unfused
