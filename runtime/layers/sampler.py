"""Next-token sampling as vLLM defines it, on tensors only: no per-row Python work and no
branch on device data, so that the decode CUDA graphs capture it (``runtime.cuda_graphs``); the
same function called eagerly is the reference the graphs are tested against.

Order: tokens that may not be drawn yet (``min_tokens``) are masked, then the penalties are
applied to the logits (repetition over prompt and output tokens, presence and frequency over
output tokens); greedy rows take the argmax of these logits. The other rows are divided by their
temperature, then filtered by ``min_p``, ``top_k`` and ``top_p`` and drawn with the exponential
race (``argmax(p / E)`` with ``E ~ Exp(1)`` is a draw from ``p``). ``E`` is counter-based noise
(``layers.noise``) keyed by each row's seed and output position, so a seeded request draws the
same tokens in any batch, eagerly or in a graph. Logprobs are those of the model's raw logits, as
vLLM returns them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from solidx.runtime.layers.noise import exponential_noise


@dataclass
class SamplingTensors:
    """One row per sequence being sampled, on the logits' device (views of one packed tensor:
    ``sampling_metadata.unpack``).

    ``top_k`` uses the vocabulary size (or more) for "off", ``top_p`` 1.0, ``min_p`` 0.0.
    ``seeds`` [B, 2] (int32) are the low and high words of each row's 64-bit seed, ``positions``
    [B] the number of tokens its sequence has generated: together they key its noise.
    ``prompt_tokens`` / ``output_tokens`` [B, L] (int64) are padded with the vocabulary size;
    None when no row has penalties. ``suppress`` (rows, token ids), two int64 vectors, names the
    logits set to -inf. The host flags ``all_greedy`` / ``use_*`` choose which steps run (fixed
    in a captured graph).
    """

    temperatures: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    seeds: torch.Tensor
    positions: torch.Tensor
    all_greedy: bool
    use_top_k_top_p: bool
    use_min_p: bool
    presence_penalties: torch.Tensor | None = None
    frequency_penalties: torch.Tensor | None = None
    repetition_penalties: torch.Tensor | None = None
    prompt_tokens: torch.Tensor | None = None
    output_tokens: torch.Tensor | None = None
    suppress: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class TopLogprobs:
    """Per row: the chosen token's logprob and rank (1 = most likely; ties count as above it,
    as vLLM), and the ``k`` most likely tokens' ids and logprobs, most likely first."""

    token_logprobs: torch.Tensor
    token_ranks: torch.Tensor
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor


@dataclass
class TokenLogprobs:
    """One position's logprobs on the host: the chosen token's, and the top ones'."""

    token_id: int
    logprob: float
    rank: int
    top_ids: list[int]
    top_logprobs: list[float]


def host_logprobs(token_ids: torch.Tensor, top: TopLogprobs) -> list[TokenLogprobs]:
    """``top`` as one ``TokenLogprobs`` per row (one transfer per tensor)."""
    return [
        TokenLogprobs(*row)
        for row in zip(
            token_ids.tolist(),
            top.token_logprobs.tolist(),
            top.token_ranks.tolist(),
            top.top_ids.tolist(),
            top.top_logprobs.tolist(),
        )
    ]


def token_counts(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, V] float counts of each token id in each row of ``tokens`` (padding id V ignored)."""
    counts = torch.zeros(tokens.shape[0], vocab_size + 1, device=tokens.device)
    counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=counts.dtype))
    return counts[:, :vocab_size]


def apply_penalties(
    logits: torch.Tensor,
    prompt_tokens: torch.Tensor,
    output_tokens: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
    repetition: torch.Tensor,
) -> torch.Tensor:
    """vLLM's penalties: a logit of a token seen in the prompt or output is divided by the
    repetition penalty when positive, multiplied when not; then ``frequency * count`` and
    ``presence * (count > 0)`` over the output tokens are subtracted."""
    vocab_size = logits.shape[-1]
    output_counts = token_counts(output_tokens, vocab_size)
    in_output = output_counts > 0
    seen = (token_counts(prompt_tokens, vocab_size) > 0) | in_output
    factor = torch.where(seen, repetition[:, None], torch.ones_like(logits))
    logits = torch.where(logits > 0, logits / factor, logits * factor)
    return logits - frequency[:, None] * output_counts - presence[:, None] * in_output


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf every logit whose probability is below ``min_p`` times its row's largest."""
    probs = logits.softmax(dim=-1)
    threshold = min_p[:, None] * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Set to -inf every logit outside its row's top-k, then outside its smallest top-p nucleus
    (the most likely token always stays; a row with ``top_p`` 1 loses none to rounding)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device)
    sorted_logits.masked_fill_(rank[None, :] >= top_k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    outside = (mass_before >= top_p[:, None]) & (top_p[:, None] < 1)
    sorted_logits.masked_fill_(outside, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(-1, order, sorted_logits)


def processed_logits(logits: torch.Tensor, params: SamplingTensors) -> torch.Tensor:
    """The logits after ``min_tokens`` masking and the penalties (float32, a new tensor)."""
    logits = logits.float()
    if params.suppress is not None:
        minus_inf = torch.tensor(float("-inf"), device=logits.device)
        logits = logits.index_put(params.suppress, minus_inf)
    if params.prompt_tokens is not None and params.output_tokens is not None:
        logits = apply_penalties(
            logits,
            params.prompt_tokens,
            params.output_tokens,
            params.presence_penalties,  # type: ignore[arg-type]
            params.frequency_penalties,  # type: ignore[arg-type]
            params.repetition_penalties,  # type: ignore[arg-type]
        )
    return logits


def compute_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, k: int) -> TopLogprobs:
    """Logprobs of ``token_ids`` [B] under ``logits`` [B, V], with their ranks and the top ``k``."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, token_ids[:, None].long()).squeeze(1)
    ranks = (logprobs >= chosen[:, None]).sum(dim=-1)
    top_logprobs, top_ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return TopLogprobs(chosen, ranks, top_ids, top_logprobs)


def sample(logits: torch.Tensor, params: SamplingTensors) -> torch.Tensor:
    """Token ids [B] (int64, on the logits' device) for logits [B, V]."""
    logits = processed_logits(logits, params)
    greedy = logits.argmax(dim=-1)
    if params.all_greedy:
        return greedy
    scaled = logits / params.temperatures.clamp(min=1e-5).unsqueeze(1)
    if params.use_min_p:
        scaled = apply_min_p(scaled, params.min_p)
    if params.use_top_k_top_p:
        scaled = apply_top_k_top_p(scaled, params.top_k, params.top_p)
    probs = scaled.softmax(dim=-1)
    noise = exponential_noise(params.seeds, params.positions, probs.shape[-1])
    sampled = (probs / noise).argmax(dim=-1)
    return torch.where(params.temperatures == 0, greedy, sampled)
