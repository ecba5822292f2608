"""The sampler's settings against plain torch references written row by row, token by token
(vLLM's definitions), its draws against the distribution they define, its counter-based noise
against a Python-integer reference (and the Triton kernel against the torch code), and the
packing of a step's settings."""

from __future__ import annotations

import math
import random

import pytest
import torch

from solidx.runtime.layers import fused
from solidx.runtime.layers.noise import (
    exponential_noise,
    exponential_noise_triton,
    uniform_noise_native,
)
from solidx.runtime.layers.sampler import (
    SamplingTensors,
    apply_min_p,
    apply_penalties,
    apply_top_k_top_p,
    compute_logprobs,
    processed_logits,
    sample,
)
from solidx.runtime.sampling_metadata import (
    ROW_WORDS,
    SamplingMode,
    pack_rows,
    sampling_tensors,
    unpack,
)
from solidx.runtime.sampling_params import SamplingParams
from solidx.runtime.sequence import Sequence

V = 12


def reference_penalties(logits, prompts, outputs, presence, frequency, repetition):
    out = logits.clone()
    for row in range(logits.shape[0]):
        for token in range(V):
            seen = token in prompts[row] or token in outputs[row]
            if seen:
                value = out[row, token]
                out[row, token] = value / repetition[row] if value > 0 else value * repetition[row]
            count = outputs[row].count(token)
            out[row, token] -= frequency[row] * count + presence[row] * (count > 0)
    return out


def padded(rows: list[list[int]]) -> torch.Tensor:
    width = max(1, max(map(len, rows)))
    return torch.tensor([r + [V] * (width - len(r)) for r in rows])


def tensors(rows: int, device: str = "cpu", **settings) -> SamplingTensors:
    """Rows at temperature 1 with every filter off (and flags off) and seeds 0, 1, ..., then
    ``settings`` (field name -> value, or per-row values written into the packed rows)."""
    packed = torch.zeros(rows, ROW_WORDS, dtype=torch.int32, device=device)
    params = unpack(packed, SamplingMode(False, False, False))
    params.temperatures.fill_(1.0)
    params.top_k.fill_(V)
    params.top_p.fill_(1.0)
    params.seeds[:, 0] = torch.arange(rows)
    for name, value in settings.items():
        field = getattr(params, name)
        if isinstance(field, torch.Tensor) and field.dtype in (torch.int32, torch.float32):
            field.copy_(torch.as_tensor(value))
        else:
            setattr(params, name, value)
    return params


def test_penalties_match_vllm_definition():
    torch.manual_seed(0)
    logits = torch.randn(3, V) * 3
    prompts = [[1, 2, 2], [], [5]]
    outputs = [[2, 3, 3, 3], [0, 11], []]
    presence, frequency, repetition = [0.5, -1.0, 2.0], [0.25, 1.5, -2.0], [1.3, 0.7, 2.0]
    got = apply_penalties(
        logits,
        padded(prompts),
        padded(outputs),
        torch.tensor(presence),
        torch.tensor(frequency),
        torch.tensor(repetition),
    )
    want = reference_penalties(logits, prompts, outputs, presence, frequency, repetition)
    torch.testing.assert_close(got, want)


def test_min_p_keeps_tokens_above_its_share_of_the_top():
    torch.manual_seed(1)
    logits = torch.randn(4, V)
    min_p = torch.tensor([0.0, 0.1, 0.5, 1.0])
    got = apply_min_p(logits, min_p)
    probs = logits.softmax(-1)
    for row in range(4):
        for token in range(V):
            kept = probs[row, token] >= min_p[row] * probs[row].max()
            assert torch.isfinite(got[row, token]) == kept


def test_top_k_top_p_keep_the_smallest_nucleus():
    torch.manual_seed(2)
    logits = torch.randn(3, V)
    top_k, top_p = torch.tensor([3, V, V]), torch.tensor([1.0, 0.5, 1e-6])
    got = apply_top_k_top_p(logits, top_k, top_p)
    for row in range(3):
        probs = logits[row].softmax(-1)
        order = probs.argsort(descending=True)
        kept, mass = set(), 0.0
        for rank, token in enumerate(order.tolist()):
            if rank >= top_k[row] or mass >= top_p[row]:
                break
            kept.add(token)
            mass += probs[token].item()
        assert {t for t in range(V) if torch.isfinite(got[row, t])} == kept


def test_suppressed_tokens_and_greedy_after_penalties():
    logits = torch.tensor([[5.0, 4.0, 1.0] + [0.0] * (V - 3)] * 2)
    params = tensors(
        2,
        temperatures=torch.zeros(2),
        all_greedy=True,
        suppress=(torch.tensor([0]), torch.tensor([0])),
        presence_penalties=torch.zeros(2),
        frequency_penalties=torch.zeros(2),
        repetition_penalties=torch.tensor([1.0, 4.0]),
        prompt_tokens=padded([[], [0, 1]]),
        output_tokens=padded([[], []]),
    )
    out = processed_logits(logits, params)
    assert out[0, 0] == float("-inf") and out[1, 0] == 5.0 / 4.0
    # row 0: token 0 may not be drawn; row 1: 5 / 4 still beats 4 / 4
    assert sample(logits, params).tolist() == [1, 0]
    assert logits[0, 0] == 5.0  # the caller's logits are untouched


def test_draws_follow_temperature_min_p_and_top_k():
    rows = 20000
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0] + [-3.0] * (V - 6)).repeat(rows, 1)
    temperature, min_p, top_k = 0.8, 0.15, 4
    params = tensors(
        rows,
        temperatures=torch.full((rows,), temperature),
        top_k=torch.full((rows,), top_k),
        min_p=torch.full((rows,), min_p),
        use_top_k_top_p=True,
        use_min_p=True,
    )
    drawn = sample(logits, params)
    probs = (logits[0] / temperature).softmax(-1)
    probs[probs < min_p * probs.max()] = 0
    probs[probs.argsort(descending=True)[top_k:]] = 0
    probs /= probs.sum()
    freq = torch.bincount(drawn, minlength=V).float() / rows
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_a_row_draws_by_its_seed_and_position_in_any_batch():
    torch.manual_seed(5)
    logits = torch.randn(1, V).repeat(4, 1)
    seeds = torch.tensor([[7, 0], [7, 0], [8, 0], [7, 0]], dtype=torch.int32)
    positions = torch.tensor([3, 3, 3, 4], dtype=torch.int32)
    noise = exponential_noise(seeds, positions, V)
    assert torch.equal(noise[0], noise[1])  # same seed and position, another row
    assert not torch.equal(noise[0], noise[2]) and not torch.equal(noise[0], noise[3])
    alone = exponential_noise(seeds[1:2], positions[1:2], V)
    assert torch.equal(alone[0], noise[0])  # same seed and position, another batch
    drawn = sample(logits, tensors(4, seeds=seeds, positions=positions))
    assert drawn[0] == drawn[1] == sample(logits[:1], tensors(1, seeds=[[7, 0]], positions=[3]))


M32 = 0xFFFFFFFF


def reference_mix(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def reference_uniform(seed: int, position: int, index: int) -> float:
    """``layers.noise``'s formula in Python integers, for one element."""
    lo, hi = seed & M32, (seed >> 32) & M32
    key = reference_mix(reference_mix(reference_mix(lo ^ 0x9E3779B9) ^ hi) ^ position)
    h = reference_mix(key ^ reference_mix(index ^ 0x85EBCA6B))
    return ((h >> 9) * 2 + 1) / 2**24


SEEDS = [0, 1, 2**32 - 1, 2**32, 2**63 + 12345, 2**64 - 1, 987654321987654321]


def seed_words(seeds: list[int]) -> torch.Tensor:
    words = [[s & M32, s >> 32 & M32] for s in seeds]
    return torch.tensor(words, dtype=torch.int64).to(torch.int32)  # wraps to the int32 bits


def test_uniform_noise_matches_the_integer_reference():
    positions = [0, 1, 5, 2**31 - 1, 100, 7, 3]
    vocab = 3000
    got = uniform_noise_native(seed_words(SEEDS), torch.tensor(positions, dtype=torch.int32), vocab)
    for row, (seed, position) in enumerate(zip(SEEDS, positions)):
        for index in (0, 1, 2, 1023, 1024, vocab - 1):
            assert got[row, index].item() == reference_uniform(seed, position, index)
    assert 0 < got.min() and got.max() < 1


def test_noise_kernel_matches_the_torch_code():
    positions = torch.arange(len(SEEDS), dtype=torch.int32) * 37
    seeds = seed_words(SEEDS)
    for vocab in (1, 1000, 2100):  # two column blocks and a tail
        uniform = uniform_noise_native(seeds, positions, vocab)
        kernel = exponential_noise_triton(seeds, positions, vocab)
        torch.testing.assert_close(kernel, -uniform.log(), rtol=1e-6, atol=0)
    strided = torch.zeros(len(SEEDS), 5, dtype=torch.int32)
    strided[:, 1:3], strided[:, 4] = seeds, positions
    torch.testing.assert_close(  # views of a packed row, as the sampler passes them
        exponential_noise_triton(strided[:, 1:3], strided[:, 4], 50),
        exponential_noise(seeds, positions, 50),
        rtol=1e-6,
        atol=0,
    )


def test_noise_is_exponential():
    rows, vocab = 64, 4096
    seeds = torch.stack([torch.arange(rows), torch.zeros(rows, dtype=torch.int64)], 1).int()
    noise = exponential_noise(seeds, torch.full((rows,), 9, dtype=torch.int32), vocab).flatten()
    for x in (0.01, 0.1, 0.5, 1.0, 2.0, 4.0):  # CDF 1 - exp(-x), within 4 sigma of 262144 draws
        assert abs((noise < x).float().mean().item() - (1 - math.exp(-x))) < 4e-3
    assert abs(noise.mean().item() - 1.0) < 1e-2


def test_packed_rows_hold_each_setting_and_the_flags():
    vocab = 50
    seqs = [
        Sequence([1, 2], SamplingParams(temperature=0)),
        Sequence([1], SamplingParams(temperature=0.7, top_k=5, seed=-3)),
        Sequence([1], SamplingParams(top_p=0.5, min_p=0.25, seed=2**64 - 2, n=2), index=1),
        Sequence([3], SamplingParams(top_k=vocab + 10)),  # no seed: drawn from the generator
    ]
    seqs[1].token_ids.extend([4, 5])  # two tokens generated: position 2
    out = torch.zeros(len(seqs) + 1, ROW_WORDS, dtype=torch.int32)
    mode = pack_rows([*seqs, None], vocab, random.Random(11), out.numpy())
    assert mode == SamplingMode(all_greedy=False, use_top_k_top_p=True, use_min_p=True)
    params = unpack(out, mode)
    assert params.temperatures.tolist() == pytest.approx([0, 0.7, 1, 1, 0])
    assert params.top_k.tolist() == [vocab, 5, vocab, vocab, vocab]
    assert params.top_p.tolist() == [1, 1, 0.5, 1, 1]
    assert params.min_p.tolist() == [0, 0, 0.25, 0, 0]
    assert params.positions.tolist() == [0, 2, 0, 0, 0]
    seeds = [lo | hi << 32 for lo, hi in (params.seeds.long() & M32).tolist()]
    drawn = random.Random(11)  # the unseeded rows draw in row order: row 0, then row 3
    assert seeds == [drawn.getrandbits(64), (-3) & (2**64 - 1), 2**64 - 1, drawn.getrandbits(64), 0]
    again = torch.zeros(1, ROW_WORDS, dtype=torch.int32)
    pack_rows([seqs[3]], vocab, random.Random(0), again.numpy())  # the seed is kept
    assert torch.equal(again[0], out[3])
    greedy = pack_rows([seqs[0]], vocab, random.Random(0), again.numpy())
    assert greedy == SamplingMode(all_greedy=True, use_top_k_top_p=False, use_min_p=False)


def test_eager_tensors_add_penalties_and_masks_only_where_asked():
    plain = [Sequence([1, 2], SamplingParams(seed=1))]
    params = sampling_tensors(plain, 10, torch.device("cpu"), random.Random(0))
    assert params.prompt_tokens is None and params.suppress is None
    assert sampling_tensors([], 10, torch.device("cpu"), random.Random(0)).seeds.shape == (0, 2)
    seqs = plain + [
        Sequence([3, 3], SamplingParams(presence_penalty=0.5, min_tokens=2, stop_token_ids=[7]))
    ]
    params = sampling_tensors(seqs, 10, torch.device("cpu"), random.Random(0))
    assert params.presence_penalties.tolist() == [0, 0.5]
    assert params.prompt_tokens.tolist() == [[10, 10], [3, 3]]
    assert [t.tolist() for t in params.suppress] == [[1], [7]]


def test_logprob_ranks_and_top_k():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0, 5.0]])
    top = compute_logprobs(logits, torch.tensor([2, 4]), 2)
    reference = logits.log_softmax(-1)
    torch.testing.assert_close(top.token_logprobs, reference[[0, 1], [2, 4]])
    assert top.token_ranks.tolist() == [3, 1]  # ties count above, as vLLM counts them
    assert top.top_ids[1, 0] == 4 and set(top.top_ids[0].tolist()) == {1, 3}
    torch.testing.assert_close(top.top_logprobs, reference.topk(2).values)


@pytest.mark.gpu
def test_sampler_on_the_gpu_matches_the_cpu():
    torch.manual_seed(4)
    rows, vocab = 64, 32000
    logits = torch.randn(rows, vocab) * 4
    prompts = [torch.randint(0, vocab, (50,)).tolist() for _ in range(rows)]
    outputs = [torch.randint(0, vocab, (20,)).tolist() for _ in range(rows)]

    def make(device: str) -> SamplingTensors:
        pad = vocab
        width = 50
        return tensors(
            rows,
            device,
            temperatures=torch.zeros(rows),
            all_greedy=True,
            top_k=torch.full((rows,), vocab),
            presence_penalties=torch.full((rows,), 0.5, device=device),
            frequency_penalties=torch.full((rows,), 0.2, device=device),
            repetition_penalties=torch.full((rows,), 1.3, device=device),
            prompt_tokens=torch.tensor(prompts, device=device),
            output_tokens=torch.tensor(
                [o + [pad] * (width - len(o)) for o in outputs], device=device
            ),
            suppress=(
                torch.arange(rows, device=device),
                torch.zeros(rows, dtype=torch.long, device=device),
            ),
        )

    cpu = processed_logits(logits, make("cpu"))
    gpu = processed_logits(logits.cuda(), make("cuda"))
    torch.testing.assert_close(gpu.cpu(), cpu)
    assert torch.equal(sample(logits.cuda(), make("cuda")).cpu(), sample(logits, make("cpu")))


@pytest.mark.gpu
def test_noise_kernel_on_the_gpu_matches_the_torch_code():
    rows, vocab = 1024, 128256  # 1.3e8 draws: u = 1 - 2**-24 (the smallest E) about 16 times
    seeds = torch.stack([torch.arange(rows), torch.zeros(rows, dtype=torch.int64)], 1).int().cuda()
    positions = torch.full((rows,), 3, dtype=torch.int32, device="cuda")
    kernel = exponential_noise(seeds, positions, vocab)
    with fused.torch_only():
        reference = exponential_noise(seeds, positions, vocab)
        assert (uniform_noise_native(seeds, positions, vocab) == 1 - 2**-24).any()
    assert kernel.min() > 0
    torch.testing.assert_close(kernel, reference, rtol=2e-6, atol=0)
    seeds, positions = seed_words(SEEDS), torch.arange(len(SEEDS), dtype=torch.int32) * 1000
    torch.testing.assert_close(
        exponential_noise(seeds.cuda(), positions.cuda(), vocab).cpu(),
        exponential_noise(seeds, positions, vocab),
        rtol=2e-6,
        atol=0,
    )


@pytest.mark.gpu
def test_seeded_draws_on_the_gpu_match_the_cpu():
    torch.manual_seed(6)
    rows, vocab = 16, 32000
    logits = torch.randn(rows, vocab) * 2
    settings = dict(temperatures=torch.full((rows,), 0.9), top_k=torch.full((rows,), 200),
                    top_p=torch.full((rows,), 0.95), use_top_k_top_p=True)
    cpu = sample(logits, tensors(rows, **settings))
    gpu = sample(logits.cuda(), tensors(rows, "cuda", **settings))
    assert (gpu.cpu() == cpu).float().mean() >= 0.9  # equal but for near-ties of p / E
