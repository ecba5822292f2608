"""The async front of the engine: requests arrive and leave at any time, each a stream of
``RequestOutput``s, while one background thread (``EngineLoop``) steps the engine.

The engine thread hands each step's outputs to the event loop in one call. A request's stream
holds at most one output: the deltas of steps its reader has not caught up with are merged, so a
busy event loop sends fewer, larger chunks rather than falling behind the engine. A stream
closed before its request finished (the client disconnected, even before reading anything) aborts
the request, which frees its KV blocks. At most ``max_waiting_requests`` requests may wait for
the scheduler (in its queue, or on their way to it); one more raises ``QueueFullError`` (the
server answers 503) instead of queueing.
"""

from __future__ import annotations

import asyncio
import time

from solidx.runtime.engine import LLMEngine
from solidx.runtime.layers.linear import tuned_gemms
from solidx.runtime.outputs import RequestOutput
from solidx.runtime.sampling_params import RequestOutputKind, SamplingParams
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
    """Too many requests are waiting for the scheduler."""


class EngineStepError(RuntimeError):
    """The engine failed this request (a step raised, or it refused the request)."""


class RequestStream:
    """One request's outputs, the last one ``finished``, as its ``output_kind`` shapes them: with
    DELTA each holds what is new (merged over the steps since the previous one was read), with
    CUMULATIVE the latest state, with FINAL_ONLY there is one. Iterating raises EngineStepError
    if the engine failed the request. ``close()`` (at any time, before the first output too;
    again is a no-op) ends it and aborts an unfinished request; the stream closes itself after
    the last output."""

    def __init__(
        self, front: AsyncLLMEngine, request_id: str, prompt_len: int, params: SamplingParams
    ) -> None:
        self.request_id = request_id
        self._delta = params.output_kind is RequestOutputKind.DELTA
        self._front = front
        self._prompt_len = prompt_len
        self._arrival = time.perf_counter()
        self._pending: RequestOutput | None = None
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._last: RequestOutput | None = None
        self._num_tokens = 0
        self._closed = False

    def put(self, item: RequestOutput | Exception) -> None:
        """On the event loop: the engine's next output for this request, or its error."""
        if isinstance(item, Exception):
            self._error = item
        elif self._pending is not None and self._delta:
            self._pending.add(item)
        else:
            self._pending = item
        self._wake()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        while self._pending is None and self._error is None:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None:
            self.close()
            raise self._error
        out, self._pending = self._pending, None
        if out.error is not None:
            self._error = EngineStepError(f"the engine refused the request: {out.error}")
            self.close()
            raise self._error
        self._last = out
        tokens = sum(len(c.token_ids) for c in out.outputs)
        self._num_tokens = self._num_tokens + tokens if self._delta else tokens
        if out.finished:
            self.close()
        return out

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        finished = self._last is not None and self._last.finished
        self._front._forget(self.request_id, abort=not finished and self._error is None)
        reason = "error" if self._error is not None else None
        ttft = tpot = None
        if self._last is not None:
            reason = reason or self._last.outputs[0].finish_reason
            metrics = self._last.metrics
            if metrics.first_token_time is not None:
                ttft = metrics.first_token_time - self._arrival
            if finished and metrics.finished_time is not None and self._num_tokens > 1:
                tpot = (metrics.finished_time - metrics.first_token_time) / (self._num_tokens - 1)
        self._front.metrics.request_done(self._prompt_len, self._num_tokens, reason, ttft, tpot)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class AsyncLLMEngine:
    """``start()`` on the event loop, then ``add_request`` from any coroutine on it."""

    def __init__(self, engine: LLMEngine, model_name: str, max_waiting_requests: int) -> None:
        self.engine = engine
        self.max_waiting_requests = max_waiting_requests
        self.metrics = ServeMetrics(model_name)
        self.stats: EngineStats = engine_stats(engine, 0)
        self._streams: dict[str, RequestStream] = {}
        self._num_submitted = 0  # Add commands sent to the engine thread
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

    @property
    def num_waiting(self) -> int:
        """Requests in the scheduler's queue (as of the last step) or on their way to it."""
        return self._num_submitted - self.stats.num_added + self.stats.waiting

    def check_capacity(self, count: int) -> None:
        """QueueFullError unless ``count`` more requests may wait for the scheduler."""
        waiting = self.num_waiting
        if waiting + count > self.max_waiting_requests:
            raise QueueFullError(
                f"{waiting} requests are waiting to be scheduled "
                f"(--max-waiting-requests {self.max_waiting_requests}); retry later"
            )

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
    ) -> RequestStream:
        """Queue a request at once and return its stream (DELTA or FINAL_ONLY outputs cost the
        least: see ``SamplingParams.output_kind``). Raises QueueFullError instead of queueing."""
        if self._loop is None or not self._thread.is_alive():
            raise RuntimeError("the engine loop is not running")
        self.check_capacity(1)
        stream = RequestStream(self, request_id, len(prompt_token_ids), params)
        self._streams[request_id] = stream
        self._num_submitted += 1
        self._thread.submit(Add(request_id, prompt_token_ids, params))
        return stream

    def render_metrics(self) -> str:
        report = tuned_gemms(self.engine.model_runner.model).report()
        problems = {"tuned": report["problems_tuned"], "default": report["problems_default"]}
        s = self.stats
        return self.metrics.render(s.running, s.waiting, s.kv_cache_usage, s.num_preemptions,
                                   problems)

    def _forget(self, request_id: str, abort: bool) -> None:
        self._streams.pop(request_id, None)
        if abort:
            self._thread.submit(Abort((request_id,)))

    def _on_step(
        self, outputs: list[RequestOutput], failed: dict[str, str], stats: EngineStats
    ) -> None:
        """On the engine thread: hand the step's results to the event loop in one call."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, outputs, failed, stats)

    def _dispatch(
        self, outputs: list[RequestOutput], failed: dict[str, str], stats: EngineStats
    ) -> None:
        self.stats = stats
        streams = self._streams
        for out in outputs:
            stream = streams.get(out.request_id)
            if stream is not None:
                stream.put(out)
        for request_id, error in failed.items():
            stream = streams.get(request_id)
            if stream is not None:
                stream.put(EngineStepError(error))
