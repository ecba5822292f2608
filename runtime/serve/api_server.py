"""The OpenAI-compatible HTTP API over an ``AsyncLLMEngine``: ``/v1/completions``,
``/v1/chat/completions`` (whole or streamed as server-sent events ending ``data: [DONE]``),
``/v1/models``, ``/health`` and ``/metrics``.

Each request's prompts are checked and turned into engine requests (``n`` per prompt, ids
``<response id>-<prompt>-<i>``) before any reaches the engine; a streamed response gets DELTA
outputs, a whole one a single FINAL_ONLY output. However a response ends (done, the client
disconnected, even before the first chunk) its engine requests' streams are closed, aborting the
unfinished ones; a full waiting queue answers 503.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from solidx.runtime.outputs import RequestOutput
from solidx.runtime.serve.async_engine import (
    AsyncLLMEngine,
    EngineStepError,
    QueueFullError,
    RequestStream,
)
from solidx.runtime.serve.chat import ChatPrompter
from solidx.runtime.serve.protocol import (
    MAX_N,
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    check_prompt,
    parse,
    sampling_params,
)
from solidx.runtime.serve.responses import SSE_DONE, Formatter, sse, usage


@dataclass
class Child:
    """One engine request of a response: choice ``index`` of its prompt's ``n``."""

    index: int
    prompt_len: int
    top_logprobs: int | None
    stream: RequestStream


@dataclass
class ServerSettings:
    served_model_names: list[str]
    api_key: str | None
    max_model_len: int
    vocab_size: int


class ClosingStreamingResponse(StreamingResponse):
    """A streamed response that closes its children's streams however it ends: sent in full,
    the client gone mid-stream, or gone before the first chunk (when the body never starts)."""

    def __init__(self, content: AsyncIterator[str], kids: list[Child]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.kids = kids

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            _close(self.kids)


def _close(kids: list[Child]) -> None:
    for kid in kids:
        kid.stream.close()


async def _merge(children: list[Child]) -> AsyncIterator[tuple[Child, RequestOutput]]:
    """Every child's outputs as they come (the caller closes the children's streams)."""
    if len(children) == 1:
        child = children[0]
        async for out in child.stream:
            yield child, out
        return
    queue: asyncio.Queue[tuple[Child, Any]] = asyncio.Queue()

    async def pump(child: Child) -> None:
        try:
            async for out in child.stream:
                queue.put_nowait((child, out))
        except Exception as exc:
            queue.put_nowait((child, exc))

    tasks = [asyncio.ensure_future(pump(child)) for child in children]
    try:
        done = 0
        while done < len(children):
            child, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            done += item.finished
            yield child, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until_disconnect(request: Request, work: Any) -> Any:
    """Await ``work``; cancel it (aborting its requests) if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return Response(status_code=499)
    return task.result()


def build_app(front: AsyncLLMEngine, settings: ServerSettings, chat: ChatPrompter) -> FastAPI:
    tokenizer = front.engine.tokenizer

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        front.start()
        yield
        front.stop()

    app = FastAPI(title="solidx", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    def check_key(request: Request) -> None:
        key = settings.api_key
        if key is not None:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
                raise ApiError(401, "invalid API key (Authorization: Bearer KEY)", None,
                               "invalid_api_key")

    async def body_of(request: Request) -> Any:
        check_key(request)
        try:
            return json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", None,
                           "invalid_json") from None

    def check_model(name: str | None) -> str:
        if name is None:
            return settings.served_model_names[0]
        if name not in settings.served_model_names:
            raise ApiError(404, f"The model `{name}` does not exist.", "model",
                           "model_not_found")
        return name

    def children(request_id: str, req: Any, prompts: list[list[int]], param: str,
                 max_tokens: int | None, logprobs: int | None) -> list[Child]:
        if not 1 <= req.n <= MAX_N:
            raise ApiError(400, f"n must be in [1, {MAX_N}], got {req.n}", "n")
        params = []
        for ids in prompts:
            check_prompt(ids, settings.max_model_len, settings.vocab_size, param)
            params.append([sampling_params(
                req, len(ids), settings.max_model_len, max_tokens, logprobs,
                None if req.seed is None else req.seed + i) for i in range(req.n)])
        try:
            front.check_capacity(len(prompts) * req.n)
        except QueueFullError as exc:
            raise ApiError(503, str(exc), None, "queue_full") from None
        out: list[Child] = []
        try:
            for p, (ids, per_prompt) in enumerate(zip(prompts, params)):
                for i, sp in enumerate(per_prompt):
                    stream = front.add_request(f"{request_id}-{p}-{i}", ids, sp)
                    out.append(Child(p * req.n + i, len(ids), logprobs, stream))
        except BaseException:
            _close(out)
            raise
        return out

    async def respond(request: Request, fmt: Formatter, req: Any,
                      kids: list[Child]) -> Response:
        prompt_tokens = sum(k.prompt_len for k in kids if k.index % req.n == 0)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return ClosingStreamingResponse(_stream(fmt, kids, prompt_tokens, include_usage),
                                            kids)
        try:
            return await _until_disconnect(request, _whole(fmt, kids, prompt_tokens))
        finally:
            _close(kids)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = parse(CompletionRequest, await body_of(request))
        model = check_model(req.model)
        if req.echo:
            raise ApiError(400, "echo is not supported", "echo")
        prompt = req.prompt
        if isinstance(prompt, str):
            prompts = [tokenizer.encode(prompt)]
        elif prompt and all(isinstance(t, int) for t in prompt):
            prompts = [list(prompt)]
        else:
            prompts = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompt]
        if not prompts:
            raise ApiError(400, "the prompt is empty", "prompt")
        fmt = Formatter("completion", f"cmpl-{secrets.token_hex(16)}", model, tokenizer)
        kids = children(fmt.id, req, prompts, "prompt", req.max_tokens, req.logprobs)
        return await respond(request, fmt, req, kids)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse(ChatCompletionRequest, await body_of(request))
        model = check_model(req.model)
        if not req.messages:
            raise ApiError(400, "messages must not be empty", "messages")
        ids = chat.token_ids([m.model_dump(exclude_none=True) for m in req.messages])
        top = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", "top_logprobs")
        max_tokens = req.max_tokens if req.max_completion_tokens is None else (
            req.max_completion_tokens)
        fmt = Formatter("chat", f"chatcmpl-{secrets.token_hex(16)}", model, tokenizer)
        kids = children(fmt.id, req, [ids], "messages", max_tokens, top)
        return await respond(request, fmt, req, kids)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        check_key(request)
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "solidx",
             "root": settings.served_model_names[0], "max_model_len": settings.max_model_len}
            for name in settings.served_model_names]})

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(front.render_metrics(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


async def _stream(fmt: Formatter, kids: list[Child], prompt_tokens: int,
                  include_usage: bool) -> AsyncIterator[str]:
    """The chunks of a streamed response: each child's DELTA outputs as they come."""
    completion_tokens = 0
    try:
        if fmt.kind == "chat":
            yield sse(fmt.chunk([fmt.choice(k.index, "", None, None, True, True) for k in kids]))
        async for child, out in _merge(kids):
            comp = out.outputs[0]
            logprobs = None
            if child.top_logprobs is not None and comp.logprobs is not None:
                logprobs = fmt.logprobs(comp.token_ids, comp.logprobs, child.top_logprobs)
            completion_tokens += len(comp.token_ids)
            reason = comp.finish_reason if out.finished else None
            if not (comp.token_ids or comp.text or reason):
                continue
            if logprobs is None:
                yield fmt.text_chunk(child.index, comp.text, reason)
            else:
                yield sse(fmt.chunk([fmt.choice(child.index, comp.text, reason, logprobs, True)]))
        if include_usage:
            yield sse(fmt.chunk([], usage(prompt_tokens, completion_tokens)))
    except EngineStepError as exc:
        yield sse(ApiError(500, str(exc), None, "engine_error").body())
    yield SSE_DONE


async def _whole(fmt: Formatter, kids: list[Child], prompt_tokens: int) -> Response:
    final: dict[int, RequestOutput] = {}
    try:
        async for child, out in _merge(kids):
            if out.finished:
                final[child.index] = out
    except EngineStepError as exc:
        raise ApiError(500, str(exc), None, "engine_error") from None
    choices, completion_tokens = [], 0
    for kid in sorted(kids, key=lambda k: k.index):
        comp = final[kid.index].outputs[0]
        completion_tokens += len(comp.token_ids)
        logprobs = None
        if kid.top_logprobs is not None and comp.logprobs is not None:
            logprobs = fmt.logprobs(comp.token_ids, comp.logprobs, kid.top_logprobs)
        choices.append(fmt.choice(kid.index, comp.text, comp.finish_reason, logprobs, False))
    return JSONResponse(fmt.response(choices, usage(prompt_tokens, completion_tokens)))
