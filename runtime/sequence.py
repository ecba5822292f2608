"""One request as the scheduler sees it: its tokens, how many of them are in the KV cache, and
the cache blocks that hold them."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from enum import Enum, auto

import torch

from solidx.runtime.sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass
class RequestMetrics:
    """Wall-clock times (``time.perf_counter``) of a request's life."""

    arrival_time: float
    first_token_time: float | None = None
    finished_time: float | None = None


class Sequence:
    """``token_ids`` is the prompt followed by the generated tokens. The first
    ``num_computed_tokens`` have their keys/values in the cache, in the blocks of ``block_table``.
    ``block_hashes[i]`` is the chained hash of full block i (filled as blocks fill, kept across
    preemption since the tokens do not change); ``num_cached_blocks`` counts the leading blocks
    already offered to the prefix cache; ``num_cached_tokens`` how many prompt tokens the prefix
    cache supplied at the latest admission."""

    _ids = itertools.count()

    def __init__(
        self, token_ids: list[int], params: SamplingParams, prompt: str | None = None
    ) -> None:
        self.seq_id = next(Sequence._ids)
        self.prompt = prompt
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.params = params
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []
        self.num_cached_blocks = 0
        self.num_cached_tokens = 0
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.text = ""
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        self.generator: torch.Generator | None = None
        self.metrics = RequestMetrics(arrival_time=time.perf_counter())

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = time.perf_counter()
        self.token_ids.append(token_id)

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, "
            f"blocks={self.block_table}, {self.status.name})"
        )
