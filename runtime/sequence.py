"""One request as the scheduler sees it: its sequences (``SamplingParams.n`` of them), each with
its tokens, how many of them are in the KV cache, and the cache blocks that hold them."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from enum import Enum, auto

from solidx.runtime.detokenizer import IncrementalDetokenizer
from solidx.runtime.sampling_params import SamplingParams


PENDING_TOKEN = -1
"""Stands for a token sampled on the device but not yet read on the host (asynchronous
scheduling); the step that sampled it resolves it."""


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


class Logprob(float):
    """vLLM's ``Logprob``: a token's log-probability (``logprob``), its rank in the vocabulary
    (``rank``, 1 is the most likely) and its text (``decoded_token``). It is also a float equal
    to ``logprob``, so that code written for plain float logprobs keeps working."""

    rank: int | None
    decoded_token: str | None

    def __new__(
        cls, logprob: float, rank: int | None = None, decoded_token: str | None = None
    ) -> Logprob:
        self = super().__new__(cls, logprob)
        self.rank, self.decoded_token = rank, decoded_token
        return self

    @property
    def logprob(self) -> float:
        return float(self)

    def __repr__(self) -> str:
        return (
            f"Logprob(logprob={float(self)!r}, rank={self.rank!r}, "
            f"decoded_token={self.decoded_token!r})"
        )


class Sequence:
    """``token_ids`` is the prompt followed by the generated tokens. The first
    ``num_computed_tokens`` have their keys/values in the cache, in the blocks of ``block_table``.
    ``block_hashes[i]`` is the chained hash of full block i (filled as blocks fill, kept across
    preemption since the tokens do not change); ``num_cached_blocks`` counts the leading blocks
    already offered to the prefix cache; ``num_cached_tokens`` how many prompt tokens the prefix
    cache (or ``parent``) supplied at the latest admission. ``parent`` is sequence 0 of the same
    request, whose computed prompt blocks this one shares (None for sequence 0).
    ``stop_ids`` are the tokens that end it (stop tokens, and EOS unless ``ignore_eos``).
    ``text`` is its output text: final once it finished, else what ``detokenizer`` (made by the
    engine when text is needed before the end) has read, less what a stop string may still cut.
    ``sent_tokens`` and ``sent_chars`` count the output that DELTA outputs have carried."""

    _ids = itertools.count()

    def __init__(
        self,
        token_ids: list[int],
        params: SamplingParams,
        prompt: str | None = None,
        index: int = 0,
        parent: Sequence | None = None,
        eos_token_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.seq_id = next(Sequence._ids)
        self.index = index
        self.parent = parent
        self.prompt = prompt
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.params = params
        self.stop_ids = frozenset(params.stop_token_ids or ()) | (
            frozenset() if params.ignore_eos else eos_token_ids
        )
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []
        self.num_cached_blocks = 0
        self.num_cached_tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.text = ""
        self.detokenizer: IncrementalDetokenizer | None = None
        self.num_text_checked = 0  # characters of text already searched for stop strings
        self.sent_tokens = 0
        self.sent_chars = 0
        wants_logprobs = params.logprobs is not None
        self.logprobs: list[dict[int, Logprob]] | None = [] if wants_logprobs else None
        self.cumulative_logprob: float | None = 0.0 if wants_logprobs else None
        wants_prompt = params.prompt_logprobs is not None and index == 0
        self.prompt_logprobs: list[dict[int, Logprob] | None] | None = (
            [None] if wants_prompt else None
        )
        # its sampling settings packed (``sampling_metadata.ROW``; its seed keys its noise),
        # made when it is first sampled
        self.sampling_row: bytes | None = None
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
    def num_known_tokens(self) -> int:
        """Tokens known on the host: all but a pending last one."""
        pending = bool(self.token_ids) and self.token_ids[-1] == PENDING_TOKEN
        return len(self.token_ids) - pending

    @property
    def known_token_ids(self) -> list[int]:
        """``token_ids`` without a pending last token (the list itself when there is none)."""
        end = self.num_known_tokens
        return self.token_ids if end == len(self.token_ids) else self.token_ids[:end]

    @property
    def output_token_ids(self) -> list[int]:
        """The output tokens known on the host (a pending last token is left out)."""
        return self.known_token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        """Output tokens sampled, a pending one included."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    @property
    def seed(self) -> int | None:
        """This sequence's seed: the request's plus its index, as vLLM's parallel sampling."""
        return None if self.params.seed is None else self.params.seed + self.index

    @property
    def suppressed_ids(self) -> frozenset[int]:
        """Tokens that may not be drawn now: ``stop_ids`` before ``min_tokens`` outputs."""
        if self.num_output_tokens < self.params.min_tokens:
            return self.stop_ids
        return frozenset()

    def append_token(self, token_id: int) -> None:
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = time.perf_counter()
        self.token_ids.append(token_id)

    def append_pending(self) -> int:
        """Append ``PENDING_TOKEN`` for a token sampled but not yet read; its index."""
        self.token_ids.append(PENDING_TOKEN)
        return len(self.token_ids) - 1

    def resolve(self, index: int, token_id: int) -> None:
        """The pending token at ``index`` is ``token_id``."""
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = time.perf_counter()
        self.token_ids[index] = token_id

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, "
            f"blocks={self.block_table}, {self.status.name})"
        )


class Request:
    """A prompt with its sampling params and its ``params.n`` sequences (sequence 0 first)."""

    def __init__(self, request_id: str, seqs: list[Sequence]) -> None:
        self.request_id = request_id
        self.seqs = seqs
        self.error: str | None = None

    @property
    def prompt(self) -> str | None:
        return self.seqs[0].prompt

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.seqs[0].prompt_token_ids

    @property
    def params(self) -> SamplingParams:
        return self.seqs[0].params

    @property
    def finished(self) -> bool:
        return all(seq.is_finished for seq in self.seqs)

    def metrics(self) -> RequestMetrics:
        """Arrival, the first sequence's first token, and the last sequence's end."""
        if len(self.seqs) == 1:  # most requests, at every step: a copy
            m = self.seqs[0].metrics
            return RequestMetrics(m.arrival_time, m.first_token_time, m.finished_time)
        firsts = [s.metrics.first_token_time for s in self.seqs if s.metrics.first_token_time]
        ends = [s.metrics.finished_time for s in self.seqs]
        return RequestMetrics(
            self.seqs[0].metrics.arrival_time,
            min(firsts) if firsts else None,
            max(ends) if self.finished and None not in ends else None,  # type: ignore[type-var]
        )
