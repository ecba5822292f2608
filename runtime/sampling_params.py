"""Per-request sampling settings, with vLLM's names, meanings and ranges.

Every value is checked when the params are made: a bad one raises ValueError naming its field,
so that it never reaches an engine step. Integers must be ints (not bools, not floats), floats
must be finite real numbers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from enum import Enum

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


class RequestOutputKind(Enum):
    """What ``LLMEngine.step`` returns for a request, as vLLM: everything so far (CUMULATIVE),
    only what is new since its last output (DELTA), or one output once it finished
    (FINAL_ONLY: no text is decoded before then unless stop strings need it)."""

    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within ``[low, high]``, or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must be in {bounds}, got {number}")
    return number


def check_float(name: str, value: object) -> float:
    """``value`` as a finite float, or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


@dataclass
class SamplingParams:
    """``n`` sequences per prompt (seeded: sequence i uses ``seed + i``). ``temperature=0`` is
    greedy; ``top_k=-1`` (or 0), ``top_p=1`` and ``min_p=0`` turn those filters off.
    Penalties as vLLM: ``repetition_penalty`` (> 0, 1 off) divides positive and multiplies
    negative logits of every token in the prompt or the output; ``presence_penalty`` and
    ``frequency_penalty`` (in [-2, 2]) subtract once, and once per occurrence, for output tokens.
    ``max_tokens=None`` generates up to the model's length limit; before ``min_tokens`` output
    tokens no EOS or stop token can be drawn and no stop string ends the output. Generation stops
    at EOS (unless ``ignore_eos``), at any of ``stop_token_ids`` or at any ``stop`` string (left
    out of the text unless ``include_stop_str_in_output``). ``logprobs=k`` returns for each
    output token the ``k`` most likely tokens and the chosen one; ``prompt_logprobs=k`` the same
    for each prompt token after the first. ``output_kind`` shapes the outputs of
    ``LLMEngine.step`` (``LLM.generate`` returns finished requests whatever it is).
    """

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    stop_strings: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.n = check_int("n", self.n, 1)
        for name in ("presence_penalty", "frequency_penalty"):
            value = check_float(name, getattr(self, name))
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
            setattr(self, name, value)
        self.repetition_penalty = check_float("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        self.temperature = check_float("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        self.top_p = check_float("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self.top_k = check_int("top_k", self.top_k, -1)
        if self.top_k == 0:
            self.top_k = -1
        self.min_p = check_float("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.seed is not None:
            low, high = SEED_RANGE
            self.seed = check_int("seed", self.seed, low, high - (self.n - 1))
        if self.max_tokens is not None:
            self.max_tokens = check_int("max_tokens", self.max_tokens, 1)
        self.min_tokens = check_int("min_tokens", self.min_tokens, 0, self.max_tokens)
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                setattr(self, name, check_int(name, getattr(self, name), -1))
        for name in ("include_stop_str_in_output", "ignore_eos", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.output_kind, RequestOutputKind):
            raise ValueError(
                f"output_kind must be a RequestOutputKind, got {self.output_kind!r}"
            )
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        for i, s in enumerate(stop):
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop[{i}] must be a non-empty string, got {s!r}")
        self.stop_strings = tuple(stop)
        self.stop_token_ids = [
            check_int(f"stop_token_ids[{i}]", t, 0) for i, t in enumerate(self.stop_token_ids or [])
        ]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0
            or self.frequency_penalty != 0
            or self.repetition_penalty != 1
        )
