"""A step's sampling inputs, built on the host from the scheduled sequences: the sampler's
per-row tensors, and which prompt positions need logprobs. Pure bookkeeping; the sampler
(``layers.sampler``) does the arithmetic."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from solidx.runtime.layers.sampler import SamplingTensors, TokenLogprobs
from solidx.runtime.scheduler import ScheduledSeq
from solidx.runtime.sequence import Sequence

ROW = struct.Struct("<2I2i3f")
"""One sampled row's settings as 7 int32 words: the low and high 32 bits of its seed, its output
position (tokens its sequence has generated), ``top_k``, then the float32 bits of
``temperature``, ``top_p`` and ``min_p``. A step's rows go to the device in one transfer."""
ROW_WORDS = ROW.size // 4
POSITION, POSITION_OFFSET = struct.Struct("<i"), 8  # the output position's word in a ROW


class SamplingMode(NamedTuple):
    """A step's host flags for the sampler (``SamplingTensors``'s of the same names)."""

    all_greedy: bool
    use_top_k_top_p: bool
    use_min_p: bool


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


def graph_samples(seq: Sequence) -> bool:
    """Whether the decode graphs' sampler covers ``seq``'s settings now (it has no penalties
    and no ``min_tokens`` masking; logprobs are computed after sampling on either path)."""
    return not seq.params.has_penalties and not seq.suppressed_ids


def pack_rows(
    seqs: list[Sequence | None], vocab_size: int, seeds: random.Random, out: np.ndarray
) -> SamplingMode:
    """Write one ``ROW`` per entry of ``seqs`` into ``out`` (int32, C-contiguous, at least
    ``len(seqs)`` rows; None: a padding row, greedy with every filter off) and return the rows'
    flags. Per row only the output position is packed anew each step."""
    if not seqs:
        return SamplingMode(all_greedy=True, use_top_k_top_p=False, use_min_p=False)
    padding = _row(None, vocab_size, seeds)
    rows = [
        padding if seq is None else seq.sampling_row or _row(seq, vocab_size, seeds)
        for seq in seqs
    ]
    buffer = memoryview(out).cast("B")
    buffer[: len(seqs) * ROW.size] = b"".join(rows)
    for row, seq in enumerate(seqs):
        if seq is not None:
            POSITION.pack_into(buffer, row * ROW.size + POSITION_OFFSET, seq.num_output_tokens)
    params = [seq.params for seq in seqs if seq is not None]
    return SamplingMode(
        all_greedy=all(p.temperature == 0 for p in params),
        use_top_k_top_p=any(0 < p.top_k < vocab_size or p.top_p < 1 for p in params),
        use_min_p=any(p.min_p > 0 for p in params),
    )


def _row(seq: Sequence | None, vocab_size: int, seeds: random.Random) -> bytes:
    """``seq``'s ``ROW`` at output position 0, kept as its ``sampling_row``. Its seed is its
    request's (plus its index), else a draw from ``seeds`` (the engine's generator, seeded with
    ``config.seed``), made here: when the sequence is first sampled."""
    if seq is None:
        return ROW.pack(0, 0, 0, vocab_size, 0.0, 1.0, 0.0)
    seed = (seeds.getrandbits(64) if seq.seed is None else seq.seed) & 0xFFFFFFFFFFFFFFFF
    params = seq.params
    top_k = params.top_k if 0 < params.top_k < vocab_size else vocab_size
    seq.sampling_row = ROW.pack(
        seed & 0xFFFFFFFF, seed >> 32, 0, top_k, params.temperature, params.top_p, params.min_p
    )
    return seq.sampling_row


def unpack(packed: torch.Tensor, mode: SamplingMode) -> SamplingTensors:
    """The sampler's per-row tensors as views of ``packed`` [B, ROW_WORDS] (int32), without
    penalties or masking."""
    words = packed.unbind(1)
    floats = packed.view(torch.float32).unbind(1)
    return SamplingTensors(
        temperatures=floats[4],
        top_k=words[3],
        top_p=floats[5],
        min_p=floats[6],
        seeds=packed.narrow(1, 0, 2),
        positions=words[2],
        all_greedy=mode.all_greedy,
        use_top_k_top_p=mode.use_top_k_top_p,
        use_min_p=mode.use_min_p,
    )


def sampling_tensors(
    seqs: list[Sequence], vocab_size: int, device: torch.device, seeds: random.Random
) -> SamplingTensors:
    """Every setting of ``seqs``' rows, for the eager sampler: the packed rows in one transfer,
    the penalties' and masks' tensors in a few more where a row has them."""
    on_cpu = device.type == "cpu"
    packed = torch.empty(len(seqs), ROW_WORDS, dtype=torch.int32, pin_memory=not on_cpu)
    mode = pack_rows(seqs, vocab_size, seeds, packed.numpy())
    params = unpack(packed if on_cpu else packed.to(device, non_blocking=True), mode)
    if any(seq.params.has_penalties for seq in seqs):
        penalties = device_tensor(
            [
                [seq.params.presence_penalty for seq in seqs],
                [seq.params.frequency_penalty for seq in seqs],
                [seq.params.repetition_penalty for seq in seqs],
            ],
            torch.float32,
            device,
        )
        params.presence_penalties, params.frequency_penalties = penalties[0], penalties[1]
        params.repetition_penalties = penalties[2]
        penalized = [seq.params.has_penalties for seq in seqs]
        prompts = [seq.prompt_token_ids if p else [] for seq, p in zip(seqs, penalized)]
        outputs = [seq.output_token_ids if p else [] for seq, p in zip(seqs, penalized)]
        params.prompt_tokens = device_tensor(_padded(prompts, vocab_size), torch.int64, device)
        params.output_tokens = device_tensor(_padded(outputs, vocab_size), torch.int64, device)
    rows: list[int] = []
    suppressed: list[int] = []
    for row, seq in enumerate(seqs):
        blocked = sorted(t for t in seq.suppressed_ids if t < vocab_size)
        rows.extend([row] * len(blocked))
        suppressed.extend(blocked)
    if rows:
        mask = device_tensor([rows, suppressed], torch.int64, device)
        params.suppress = (mask[0], mask[1])
    return params


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
