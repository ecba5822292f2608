"""The OpenAI request bodies the server accepts, their checks, and OpenAI-style errors.

Every check runs before a request reaches the engine, so nothing a client sends can break the
engine loop for the others. An ``ApiError`` carries the HTTP status and the offending field
(``param``), rendered as ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from solidx.runtime.sampling_params import RequestOutputKind, SamplingParams

MAX_N = 128
MAX_LOGPROBS = 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or _KINDS.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


_KINDS = {401: "authentication_error", 404: "invalid_request_error", 500: "server_error",
          503: "server_busy"}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by both endpoints (OpenAI's, plus vLLM's ``top_k`` and ``ignore_eos``)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    n: int = 1
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


def parse(model: type[BaseModel], body: Any) -> Any:
    """``body`` (parsed JSON) as ``model``, or ApiError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}", where) from None


def sampling_params(
    request: _Sampling, prompt_len: int, max_model_len: int, max_tokens: int | None,
    logprobs: int | None, seed: int | None,
) -> SamplingParams:
    """The request's SamplingParams for a prompt of ``prompt_len`` tokens (DELTA outputs when it
    streams, else FINAL_ONLY); ApiError(400) names the field that is out of range."""
    room = max_model_len - prompt_len
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
    if max_tokens is not None and max_tokens > room:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the prompt, "
            f"{max_tokens} in the completion).", "max_tokens",
        )
    if not math.isfinite(request.temperature) or not 0 <= request.temperature <= 100:
        raise ApiError(400, f"temperature must be in [0, 100], got {request.temperature}",
                       "temperature")
    if not math.isfinite(request.top_p) or not 0 < request.top_p <= 1:
        raise ApiError(400, f"top_p must be in (0, 1], got {request.top_p}", "top_p")
    if not -1 <= request.top_k < 2**31:
        raise ApiError(400, f"top_k must be -1 (off), 0 (off) or in [1, 2**31), got "
                       f"{request.top_k}", "top_k")
    if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        raise ApiError(400, f"logprobs must be in [0, {MAX_LOGPROBS}], got {logprobs}",
                       "logprobs")
    if seed is not None and not 0 <= seed < 2**63:
        raise ApiError(400, f"seed must be in [0, 2**63), got {seed}", "seed")
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if any(not s for s in stop):
        raise ApiError(400, "stop strings must not be empty", "stop")
    return SamplingParams(
        temperature=request.temperature, top_p=request.top_p, top_k=request.top_k,
        max_tokens=room if max_tokens is None else max_tokens, stop=stop,
        stop_token_ids=request.stop_token_ids, ignore_eos=request.ignore_eos, seed=seed,
        logprobs=logprobs,
        output_kind=RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY,
    )


def check_prompt(token_ids: list[int], max_model_len: int, vocab_size: int, param: str) -> None:
    """ApiError(400) for an empty prompt, one longer than the context, or unknown token ids."""
    if not token_ids:
        raise ApiError(400, "the prompt is empty", param)
    if len(token_ids) >= max_model_len:
        raise ApiError(
            400, f"the prompt has {len(token_ids)} tokens; this model's maximum context length "
            f"is {max_model_len} tokens, which must also hold at least one new token", param,
        )
    bad = next((t for t in token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ApiError(400, f"token id {bad} is outside the vocabulary (0..{vocab_size - 1})",
                       param)
