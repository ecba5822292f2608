"""What ``LLM.generate`` returns, with vLLM's names."""

from __future__ import annotations

from dataclasses import dataclass

from solidx.runtime.sequence import RequestMetrics, Sequence


@dataclass
class CompletionOutput:
    """``finish_reason``: "stop" (EOS, a stop token or string), "length" (max_tokens or
    max_model_len), or "error" (the request was refused; see ``RequestOutput.error``)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[dict[int, float]] | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int = 0
    error: str | None = None

    @classmethod
    def from_seq(cls, seq: Sequence) -> RequestOutput:
        completion = CompletionOutput(
            0, seq.text, seq.output_token_ids, seq.finish_reason, seq.logprobs
        )
        return cls(
            str(seq.seq_id),
            seq.prompt,
            seq.prompt_token_ids,
            [completion],
            seq.is_finished,
            seq.metrics,
            seq.num_cached_tokens,
            seq.error,
        )
