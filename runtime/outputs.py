"""What ``LLM.generate`` and ``LLMEngine.step`` return, with vLLM's names."""

from __future__ import annotations

from dataclasses import dataclass

from solidx.runtime.sequence import Logprob, Request, RequestMetrics, Sequence

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

    def add(self, later: RequestOutput) -> None:
        """Merge ``later``, the next DELTA output of the same request, into this one: texts,
        tokens and logprobs joined, the rest (finish reasons, ``finished``, metrics) ``later``'s."""
        for mine, new in zip(self.outputs, later.outputs):
            mine.text += new.text
            mine.token_ids = mine.token_ids + new.token_ids
            if mine.logprobs is not None and new.logprobs is not None:
                mine.logprobs = mine.logprobs + new.logprobs
            mine.cumulative_logprob = new.cumulative_logprob
            mine.finish_reason, mine.stop_reason = new.finish_reason, new.stop_reason
        if self.prompt_logprobs is None:
            self.prompt_logprobs = later.prompt_logprobs
        self.finished, self.metrics, self.error = later.finished, later.metrics, later.error

    @classmethod
    def from_request(cls, request: Request, delta: bool = False) -> RequestOutput:
        """``request``'s state; with ``delta`` only what no earlier delta output carried (the
        new tokens, text and logprobs of each sequence; prompt logprobs in the first one), and
        the sequences' ``sent_tokens`` and ``sent_chars`` advance."""
        first = request.seqs[0]
        prompt_logprobs = first.prompt_logprobs
        if delta and first.sent_tokens:
            prompt_logprobs = None
        completions = [_completion(seq, delta) for seq in request.seqs]
        return cls(
            request.request_id,
            request.prompt,
            request.prompt_token_ids,
            None if prompt_logprobs is None else list(prompt_logprobs),
            completions,
            request.finished,
            request.metrics(),
            first.num_cached_tokens,
            request.error,
        )


def _completion(seq: Sequence, delta: bool) -> CompletionOutput:
    tokens, chars = (seq.sent_tokens, seq.sent_chars) if delta else (0, 0)
    logprobs = None if seq.logprobs is None else seq.logprobs[tokens:]
    out = CompletionOutput(
        seq.index,
        seq.text[chars:],
        seq.token_ids[seq.num_prompt_tokens + tokens : seq.num_known_tokens],
        seq.cumulative_logprob,
        logprobs,
        seq.finish_reason,
        seq.stop_reason,
    )
    if delta:
        seq.sent_tokens += len(out.token_ids)
        seq.sent_chars = len(seq.text)
    return out
