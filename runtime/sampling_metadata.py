"""A step's sampling inputs, built on the host from the scheduled sequences: the sampler's
per-row tensors, and which prompt positions need logprobs. Pure bookkeeping; the sampler
(``layers.sampler``) does the arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from solidx.runtime.layers.sampler import SamplingTensors, TokenLogprobs
from solidx.runtime.scheduler import ScheduledSeq
from solidx.runtime.sequence import Sequence


def device_tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` on ``device``, through pinned memory off the CPU (no host synchronisation)."""
    if device.type == "cpu":
        return torch.tensor(values, dtype=dtype)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def num_logprobs(requested: int | None, vocab_size: int) -> int | None:
    """How many top logprobs ``logprobs`` / ``prompt_logprobs`` asks for (-1: the vocabulary)."""
    if requested is None:
        return None
    return vocab_size if requested == -1 else min(requested, vocab_size)


def keep_top(entry: TokenLogprobs, k: int) -> TokenLogprobs:
    """``entry`` with its ``k`` most likely tokens only."""
    entry.top_ids, entry.top_logprobs = entry.top_ids[:k], entry.top_logprobs[:k]
    return entry


def sampling_tensors(
    seqs: list[Sequence], vocab_size: int, device: torch.device
) -> SamplingTensors:
    """Per-row sampling settings; gives each seeded sequence its generator on first use."""
    temperatures, top_k, top_p, min_p, generators = [], [], [], [], []
    presence, frequency, repetition = [], [], []
    prompts: list[list[int]] = []
    outputs: list[list[int]] = []
    rows: list[int] = []
    suppressed: list[int] = []
    for row, seq in enumerate(seqs):
        params = seq.params
        temperatures.append(params.temperature)
        top_k.append(params.top_k if params.top_k > 0 else vocab_size)
        top_p.append(params.top_p)
        min_p.append(params.min_p)
        if seq.seed is not None and seq.generator is None:
            seq.generator = torch.Generator(device).manual_seed(seq.seed)
        generators.append(seq.generator)
        presence.append(params.presence_penalty)
        frequency.append(params.frequency_penalty)
        repetition.append(params.repetition_penalty)
        penalized = params.has_penalties
        prompts.append(seq.prompt_token_ids if penalized else [])
        outputs.append(seq.output_token_ids if penalized else [])
        blocked = sorted(t for t in seq.suppressed_ids if t < vocab_size)
        rows.extend([row] * len(blocked))
        suppressed.extend(blocked)
    use_penalties = any(seq.params.has_penalties for seq in seqs)

    def floats(values: list[float]) -> torch.Tensor:
        return device_tensor(values, torch.float32, device)

    def longs(values: list) -> torch.Tensor:
        return device_tensor(values, torch.int64, device)

    return SamplingTensors(
        temperatures=floats(temperatures),
        top_k=longs(top_k),
        top_p=floats(top_p),
        generators=generators,
        all_greedy=all(t == 0 for t in temperatures),
        use_top_k_top_p=any(k < vocab_size for k in top_k) or any(p < 1.0 for p in top_p),
        min_p=floats(min_p) if any(min_p) else None,
        presence_penalties=floats(presence) if use_penalties else None,
        frequency_penalties=floats(frequency) if use_penalties else None,
        repetition_penalties=floats(repetition) if use_penalties else None,
        prompt_tokens=longs(_padded(prompts, vocab_size)) if use_penalties else None,
        output_tokens=longs(_padded(outputs, vocab_size)) if use_penalties else None,
        suppress=(longs(rows), longs(suppressed)) if rows else None,
    )


def _padded(lists: list[list[int]], pad: int) -> list[list[int]]:
    width = max(1, max(len(ids) for ids in lists))
    return [ids + [pad] * (width - len(ids)) for ids in lists]


@dataclass
class PromptLogprobRows:
    """The hidden-state ``rows`` of this step whose logits give prompt logprobs, the prompt
    token each predicts (``targets``), and per sequence (``owners``: seq id, number of rows,
    top-k wanted) in row order; ``k`` is the largest top-k."""

    rows: list[int]
    targets: list[int]
    owners: list[tuple[int, int, int]]
    k: int


def prompt_logprob_rows(batch: list[ScheduledSeq], vocab_size: int) -> PromptLogprobRows:
    """The prompt positions this step computes whose next prompt token has no logprobs yet
    (position p's logits give token p + 1; a recomputed position is not recorded twice)."""
    found = PromptLogprobRows([], [], [], 0)
    offset = 0
    for item in batch:
        seq = item.seq
        if seq.prompt_logprobs is not None:
            first = max(item.start, len(seq.prompt_logprobs) - 1)
            last = min(item.start + item.num_tokens, seq.num_prompt_tokens - 1)
            if last > first:
                found.rows.extend(range(offset + first - item.start, offset + last - item.start))
                found.targets.extend(seq.token_ids[first + 1 : last + 1])
                wanted = num_logprobs(seq.params.prompt_logprobs, vocab_size) or 0
                found.owners.append((seq.seq_id, last - first, wanted))
                found.k = max(found.k, wanted)
        offset += item.num_tokens
    return found
