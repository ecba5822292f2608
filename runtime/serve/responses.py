"""OpenAI response bodies, streamed chunks and logprobs, in vLLM's format."""

from __future__ import annotations

import json
import time
from typing import Any

from solidx.runtime.tokenizer import Tokenizer


def sse(chunk: dict[str, Any]) -> str:
    return f"data: {json.dumps(chunk)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Formatter:
    """Builds the bodies of one response (``kind`` "completion" or "chat")."""

    def __init__(self, kind: str, request_id: str, model: str, tokenizer: Tokenizer) -> None:
        self.kind, self.id, self.model, self.tokenizer = kind, request_id, model, tokenizer
        self.created = int(time.time())
        self._sse_head = sse(self.chunk([]))[: -len("]}\n\n")]  # ... "choices": [

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def choice(self, index: int, text: str, reason: str | None, logprobs: Any,
               delta: bool, first: bool = False) -> dict[str, Any]:
        """One choice, whole or as a streamed delta (``first``: the chat stream's role)."""
        if self.kind == "completion":
            return {"index": index, "text": text, "logprobs": logprobs,
                    "finish_reason": reason, "stop_reason": None}
        body: dict[str, Any] = {"content": text}
        if delta:
            if first:
                body["role"] = "assistant"
            return {"index": index, "delta": body, "logprobs": logprobs, "finish_reason": reason}
        body["role"] = "assistant"
        return {"index": index, "message": body, "logprobs": logprobs, "finish_reason": reason}

    def text_chunk(self, index: int, text: str, reason: str | None) -> str:
        """The event of a streamed chunk of one choice without logprobs, the same text as
        ``sse(self.chunk([self.choice(index, text, reason, None, True)]))`` at a fraction of
        its cost (most chunks of a stream are these)."""
        finish = "null" if reason is None else json.dumps(reason)
        if self.kind == "completion":
            body = (f'"text": {json.dumps(text)}, "logprobs": null, "finish_reason": {finish}, '
                    '"stop_reason": null')
        else:
            body = f'"delta": {{"content": {json.dumps(text)}}}, "logprobs": null, ' \
                   f'"finish_reason": {finish}'
        return f'{self._sse_head}{{"index": {index}, {body}}}]}}\n\n'

    def chunk(self, choices: list[dict[str, Any]], usage_body: Any = None) -> dict[str, Any]:
        obj = "text_completion" if self.kind == "completion" else "chat.completion.chunk"
        body = self._head(obj)
        body["choices"] = choices
        if usage_body is not None:
            body["usage"] = usage_body
        return body

    def response(self, choices: list[dict[str, Any]], usage_body: Any) -> dict[str, Any]:
        body = self._head("text_completion" if self.kind == "completion" else "chat.completion")
        body["choices"] = choices
        body["usage"] = usage_body
        return body

    def logprobs(self, token_ids: list[int], entries: list[dict[int, float]], top: int,
                 offset: int = 0) -> Any:
        """Logprobs of ``token_ids`` (legacy completion layout, or chat's ``content`` list);
        ``offset``: where the first token's text starts in the choice's text."""
        if self.kind == "completion":
            tokens, offsets, top_lists = [], [], []
            for token in token_ids:
                tokens.append(self._text(token))
                offsets.append(offset)
                offset += len(tokens[-1])
            for entry in entries:
                best = sorted(entry.items(), key=lambda kv: -kv[1])[:top]
                top_lists.append({self._text(t): lp for t, lp in best})
            return {"tokens": tokens, "text_offset": offsets, "top_logprobs": top_lists,
                    "token_logprobs": [e.get(t) for t, e in zip(token_ids, entries)]}
        content = []
        for token, entry in zip(token_ids, entries):
            best = sorted(entry.items(), key=lambda kv: -kv[1])[:top]
            content.append({**self._entry(token, entry.get(token)),
                            "top_logprobs": [self._entry(t, lp) for t, lp in best]})
        return {"content": content}

    def _text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _entry(self, token: int, logprob: float | None) -> dict[str, Any]:
        text = self._text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
