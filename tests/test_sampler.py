"""The sampler's settings against plain torch references written row by row, token by token
(vLLM's definitions), and its draws against the distribution they define."""

from __future__ import annotations

import pytest
import torch

from solidx.runtime.layers.sampler import (
    Sampler,
    SamplingTensors,
    apply_min_p,
    apply_penalties,
    apply_top_k_top_p,
    compute_logprobs,
    processed_logits,
)

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


def tensors(rows: int, **overrides) -> SamplingTensors:
    base = dict(
        temperatures=torch.ones(rows),
        top_k=torch.full((rows,), V),
        top_p=torch.ones(rows),
        generators=[None] * rows,
        all_greedy=False,
        use_top_k_top_p=False,
    )
    return SamplingTensors(**{**base, **overrides})


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
    assert Sampler(torch.Generator().manual_seed(0))(logits, params).tolist() == [1, 0]
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
    )
    drawn = Sampler(torch.Generator().manual_seed(3))(logits, params)
    probs = (logits[0] / temperature).softmax(-1)
    probs[probs < min_p * probs.max()] = 0
    probs[probs.argsort(descending=True)[top_k:]] = 0
    probs /= probs.sum()
    freq = torch.bincount(drawn, minlength=V).float() / rows
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_seeded_rows_draw_their_own_stream():
    logits = torch.zeros(3, V)
    gens = [torch.Generator().manual_seed(7), None, torch.Generator().manual_seed(7)]
    first = Sampler(torch.Generator().manual_seed(0))(logits, tensors(3, generators=gens))
    again = [torch.Generator().manual_seed(7), None, torch.Generator().manual_seed(8)]
    second = Sampler(torch.Generator().manual_seed(1))(logits, tensors(3, generators=again))
    assert first[0] == first[2] == second[0]


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
        return SamplingTensors(
            temperatures=torch.zeros(rows, device=device),
            top_k=torch.full((rows,), vocab, device=device),
            top_p=torch.ones(rows, device=device),
            generators=[None] * rows,
            all_greedy=True,
            use_top_k_top_p=False,
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

    sampler = Sampler(torch.Generator().manual_seed(0))
    cpu = processed_logits(logits, make("cpu"))
    gpu = processed_logits(logits.cuda(), make("cuda"))
    torch.testing.assert_close(gpu.cpu(), cpu)
    gpu_sampler = Sampler(torch.Generator("cuda").manual_seed(0))
    assert torch.equal(gpu_sampler(logits.cuda(), make("cuda")).cpu(), sampler(logits, make("cpu")))
