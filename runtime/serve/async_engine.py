"""The async front of the engine: requests arrive and leave at any time, each a stream of
``RequestOutput``s, while one background thread (``EngineLoop``) steps the engine.

A request whose stream is closed before it finished (the client disconnected) is aborted and
its KV blocks are freed. At most ``max_waiting_requests`` requests may wait for their first
token; one more raises ``QueueFullError`` (the server answers 503) instead of queueing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from solidx.runtime.engine import LLMEngine
from solidx.runtime.outputs import RequestOutput
from solidx.runtime.layers.linear import tuned_gemms
from solidx.runtime.sampling_params import SamplingParams
from solidx.runtime.serve.engine_loop import (
    Abort,
    Add,
    EngineLoop,
    EngineStats,
    Stop,
    engine_stats,
)
from solidx.runtime.serve.metrics import ServeMetrics

STOP_TIMEOUT_S = 30.0


class QueueFullError(RuntimeError):
    """Too many requests are waiting for their first token."""


class EngineStepError(RuntimeError):
    """The engine failed this request (a step raised, or it refused the request)."""


class AsyncLLMEngine:
    """``start()`` on the event loop, then ``add_request`` from any coroutine on it."""

    def __init__(self, engine: LLMEngine, model_name: str, max_waiting_requests: int) -> None:
        self.engine = engine
        self.max_waiting_requests = max_waiting_requests
        self.metrics = ServeMetrics(model_name)
        self.stats: EngineStats = engine_stats(engine)
        self._streams: dict[str, asyncio.Queue[RequestOutput | Exception]] = {}
        self._waiting: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = EngineLoop(engine, self._on_step)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop (and the following ranks) after the current step."""
        if self._thread.is_alive():
            self._thread.submit(Stop())
            self._thread.join(STOP_TIMEOUT_S)

    def check_capacity(self, count: int) -> None:
        """QueueFullError unless ``count`` more requests may wait for their first token."""
        if len(self._waiting) + count > self.max_waiting_requests:
            raise QueueFullError(
                f"{len(self._waiting)} requests are waiting for their first token "
                f"(--max-waiting-requests {self.max_waiting_requests}); retry later"
            )

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """Queue a request at once and return its stream of outputs, the last one
        ``finished``; the stream raises EngineStepError if a step fails the request. Closing
        the stream early aborts the request. Raises QueueFullError instead of queueing."""
        if self._loop is None or not self._thread.is_alive():
            raise RuntimeError("the engine loop is not running")
        self.check_capacity(1)
        stream: asyncio.Queue[RequestOutput | Exception] = asyncio.Queue()
        self._streams[request_id] = stream
        self._waiting.add(request_id)
        self._thread.submit(Add(request_id, prompt_token_ids, params))
        return self._outputs(request_id, len(prompt_token_ids), stream)

    async def _outputs(
        self, request_id: str, prompt_len: int, stream: asyncio.Queue[RequestOutput | Exception]
    ) -> AsyncIterator[RequestOutput]:
        arrival, first, last, count = time.perf_counter(), None, 0.0, 0
        finished, reason = False, None
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, Exception):
                    finished = True
                    raise item
                if item.error is not None:
                    finished = True
                    raise EngineStepError(f"the engine refused the request: {item.error}")
                finished, reason = item.finished, item.outputs[0].finish_reason
                count = len(item.outputs[0].token_ids)
                if count and first is None:
                    first = time.perf_counter()
                last = time.perf_counter()
                yield item
        finally:
            self._streams.pop(request_id, None)
            self._waiting.discard(request_id)
            if not finished:
                self._thread.submit(Abort((request_id,)))
            ttft = None if first is None else first - arrival
            tpot = None if first is None or count < 2 else (last - first) / (count - 1)
            self.metrics.request_done(prompt_len, count, reason, ttft, tpot)

    def render_metrics(self) -> str:
        report = tuned_gemms(self.engine.model_runner.model).report()
        problems = {"tuned": report["problems_tuned"], "default": report["problems_default"]}
        s = self.stats
        return self.metrics.render(s.running, s.waiting, s.kv_cache_usage, s.num_preemptions,
                                   problems)

    def _on_step(
        self, outputs: list[RequestOutput], failed: dict[str, str], stats: EngineStats
    ) -> None:
        """On the engine thread: hand the step's results to the event loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, outputs, failed, stats)

    def _dispatch(
        self, outputs: list[RequestOutput], failed: dict[str, str], stats: EngineStats
    ) -> None:
        self.stats = stats
        for out in outputs:
            self._waiting.discard(out.request_id)
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put_nowait(out)
        for request_id, error in failed.items():
            self._waiting.discard(request_id)
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.put_nowait(EngineStepError(error))
