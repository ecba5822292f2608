"""The async front in this process: requests through the engine thread, a failing step fails
its requests and not the loop, a closed stream aborts and frees its KV blocks, and a client
gone before its first chunk leaves nothing behind in the front, and outputs handed over while
the next batch runs arrive whole and in order; the fast text chunk is the dict chunk's text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading

import pytest
from solidx.runtime.config import Config
from solidx.runtime.engine import LLMEngine
from solidx.runtime.sampling_params import RequestOutputKind, SamplingParams
from solidx.runtime.serve.async_engine import AsyncLLMEngine, EngineStepError, QueueFullError
from solidx.runtime.serve.engine_loop import Add, EngineLoop, Stop
from solidx.runtime.serve.responses import Formatter, sse

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    config = Config(model="tiny-llama", load_format="dummy", device="cpu", dtype="float32",
                    max_model_len=64)
    return LLMEngine(config)


def _used_blocks(engine: LLMEngine) -> int:
    blocks = engine.scheduler.block_manager
    return blocks.num_blocks - blocks.num_free_blocks


async def _collect(front: AsyncLLMEngine, request_id: str) -> list[int]:
    last = None
    async for out in front.add_request(request_id, [1, 50, 60, 70], GREEDY):
        last = out
    return last.outputs[0].token_ids


def test_failing_step_fails_its_requests_not_the_loop(engine, monkeypatch) -> None:
    real = engine.model_runner.launch
    calls = {"n": 0}

    def flaky(batch, previous=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected fault")
        return real(batch, previous)

    monkeypatch.setattr(engine.model_runner, "launch", flaky)

    async def main() -> tuple[str, list[int]]:
        front = AsyncLLMEngine(engine, "m", max_waiting_requests=4)
        front.start()
        try:
            with pytest.raises(EngineStepError, match="injected fault"):
                await _collect(front, "a")
            tokens = await _collect(front, "b")
            return "ok", tokens
        finally:
            front.stop()

    status, tokens = asyncio.run(main())
    assert status == "ok" and len(tokens) == 6
    assert _used_blocks(engine) == 0 and not engine.has_unfinished_requests()


def test_closed_stream_aborts_and_frees_blocks_and_queue_limit(engine) -> None:
    async def main() -> None:
        front = AsyncLLMEngine(engine, "m", max_waiting_requests=1)
        front.start()
        try:
            long = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)
            stream = front.add_request("long", [1, 40, 41], long)
            first = await stream.__anext__()
            assert len(first.outputs[0].token_ids) >= 1 and _used_blocks(engine) > 0
            front.add_request("queued", [1, 40, 41], long)  # counts as waiting at once
            with pytest.raises(QueueFullError, match="max-waiting-requests 1"):
                front.add_request("refused", [1, 2], GREEDY)
            await stream.aclose()
            for _ in range(200):
                if front.stats.running == 0 and _used_blocks(engine) == 0:
                    break
                await asyncio.sleep(0.01)
        finally:
            front.stop()

    asyncio.run(main())
    # "queued" was never iterated: it ran to completion in the engine and freed its blocks too
    assert _used_blocks(engine) == 0 and not engine.has_unfinished_requests()


@pytest.mark.parametrize("stream", [True, False])
def test_client_gone_before_the_first_chunk_aborts_and_forgets(engine, stream) -> None:
    pytest.importorskip("fastapi")
    from solidx.runtime.serve.api_server import ServerSettings, build_app
    from solidx.runtime.serve.chat import ChatPrompter

    front = AsyncLLMEngine(engine, "m", max_waiting_requests=4)
    app = build_app(front, ServerSettings(["m"], None, 64, engine.vocab_size),
                    ChatPrompter(engine.tokenizer, None))
    body = json.dumps({"prompt": [1, 40, 41], "max_tokens": 60, "stream": stream,
                       "ignore_eos": True}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
             "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}

    async def main() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False},
                    {"type": "http.disconnect"}]

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:  # the client left: the first send fails
            raise OSError("the client is gone")

        front.start()
        try:
            with contextlib.suppress(Exception):
                await app(scope, receive, send)
            for _ in range(500):
                if not engine.has_unfinished_requests() and front.num_waiting == 0:
                    break
                await asyncio.sleep(0.01)
        finally:
            front.stop()

    asyncio.run(main())
    assert not front._streams and front.num_waiting == 0
    assert front.metrics.finished == {"abort": 1}  # aborted, not run to its 60 tokens
    assert _used_blocks(engine) == 0 and not engine.has_unfinished_requests()


def test_async_scheduling_keeps_every_output_in_order(engine, monkeypatch) -> None:
    monkeypatch.setattr(engine, "async_scheduling", True)  # as on a GPU
    got = []
    done = threading.Event()

    def on_step(outputs, failed, stats) -> None:
        assert not failed
        got.extend(outputs)
        if sum(out.finished for out in got) == 2:
            done.set()

    loop = EngineLoop(engine, on_step)
    loop.start()
    prompts = [[1, 40, 41], [1, 50]]
    delta = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                           output_kind=RequestOutputKind.DELTA)
    for request_id, prompt in zip("xy", prompts):
        loop.submit(Add(request_id, prompt, delta))
    assert done.wait(60)
    loop.submit(Stop())
    loop.join(30)
    assert engine._in_flight is None
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    expected = engine.generate(prompts, [greedy] * 2, use_tqdm=False)
    for request_id, want in zip("xy", expected):
        outs = [out for out in got if out.request_id == request_id]
        assert [t for out in outs for t in out.outputs[0].token_ids] == want.outputs[0].token_ids
        assert "".join(out.outputs[0].text for out in outs) == want.outputs[0].text
        assert [out.finished for out in outs] == [False] * (len(outs) - 1) + [True]


def test_engine_abort_request_frees_blocks_of_running_and_waiting(engine) -> None:
    engine.add_request("run", [1, 40, 41, 42], GREEDY)
    outputs = engine.step()
    assert [out.request_id for out in outputs] == ["run"] and _used_blocks(engine) > 0
    engine.add_request("wait", [1, 43], GREEDY)  # queued, not scheduled yet
    assert len(engine.scheduler.waiting) == 1
    with pytest.raises(ValueError, match="request_id .run. is already running"):
        engine.add_request("run", [1, 2], GREEDY)
    engine.abort_request(["run", "wait", "unknown"])
    assert _used_blocks(engine) == 0 and not engine.has_unfinished_requests()
    assert not engine.scheduler.waiting and engine.step() == []
    assert engine.get_num_unfinished_requests() == 0


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_text_chunks_are_the_dict_chunks(kind) -> None:
    fmt = Formatter(kind, "cmpl-1", 'a "model"', None)
    for text, reason in [("hello", None), ('q"b\\c\n東京\ufffd', "stop"), ("", "length")]:
        whole = sse(fmt.chunk([fmt.choice(2, text, reason, None, True)]))
        assert fmt.text_chunk(2, text, reason) == whole
