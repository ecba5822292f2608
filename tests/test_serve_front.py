"""The async front in this process: requests through the engine thread, a failing step fails
its requests and not the loop, a closed stream aborts and frees its KV blocks; incremental
detokenization equals decoding the whole output."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from solidx.runtime.config import Config
from solidx.runtime.engine import LLMEngine
from solidx.runtime.sampling_params import SamplingParams
from solidx.runtime.serve.async_engine import AsyncLLMEngine, EngineStepError, QueueFullError
from solidx.runtime.serve.detokenize import IncrementalDetokenizer
from solidx.runtime.tokenizer import ByteTokenizer

from tests.checkpoints import train_tokenizer

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
    real = engine.model_runner.run
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected fault")
        return real(batch)

    monkeypatch.setattr(engine.model_runner, "run", flaky)

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


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_incremental_detokenization_equals_whole(kind, tmp_path: Path) -> None:
    tokenizer = (ByteTokenizer(300, 1, 2) if kind == "byte" else train_tokenizer(tmp_path))
    text = "Héllo wörld, the quick brown fox — 東京 jumps!"
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.update(ids[: i + 1]) for i in range(len(ids))]
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) + detok.finish(whole) == whole
    assert "".join(pieces) == whole  # nothing was held back to the end


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
