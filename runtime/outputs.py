"""What ``LLM.generate`` and ``LLMEngine.step`` return, with vLLM's names."""

from __future__ import annotations

from dataclasses import dataclass

from solidx.runtime.sequence import Logprob, Request, RequestMetrics

__all__ = ["CompletionOutput", "Logprob", "RequestOutput"]


@dataclass
class CompletionOutput:
    """Sequence ``index`` of a request (``SamplingParams.n`` of them). ``finish_reason``:
    "stop" (EOS, a stop token or string), "length" (max_tokens or max_model_len), "error" (the
    request failed; see ``RequestOutput.error``), None while it runs. ``stop_reason``: the stop
    string or stop token id that ended it (None for EOS, length or error). ``logprobs`` and
    ``cumulative_logprob`` are set when the request asked for ``logprobs``."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """One request's state: complete when ``finished``, else what it has produced so far.
    ``prompt_logprobs[0]`` is None (the first token has no context), as in vLLM."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int = 0
    error: str | None = None

    @classmethod
    def from_request(cls, request: Request) -> RequestOutput:
        completions = [
            CompletionOutput(
                seq.index,
                seq.text,
                seq.output_token_ids,
                seq.cumulative_logprob,
                None if seq.logprobs is None else list(seq.logprobs),
                seq.finish_reason,
                seq.stop_reason,
            )
            for seq in request.seqs
        ]
        first = request.seqs[0]
        return cls(
            request.request_id,
            request.prompt,
            request.prompt_token_ids,
            None if first.prompt_logprobs is None else list(first.prompt_logprobs),
            completions,
            request.finished,
            request.metrics(),
            first.num_cached_tokens,
            request.error,
        )
