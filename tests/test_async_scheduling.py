"""Asynchronous scheduling (``async_scheduling=True``: step n+1 is launched before step n is read
back, its pending input tokens fed on the device) gives the tokens, texts, finish reasons and
logprobs of synchronous scheduling, on CPU: greedy and seeded sampling, stop tokens and strings,
``n`` samples, preemption, prefix caching, penalties (which force synchronous steps), and
aborts through the step API. ``@pytest.mark.gpu``: the same on CUDA with graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from solidx.runtime import LLM, SamplingParams
from tests.checkpoints import make_checkpoint

PROMPTS = [
    "The quick brown fox",
    "A paged KV cache stores keys and values",
    "The quick brown fox jumps",
    "Once upon a time",
    "The quick brown fox",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama-gqa"), "llama-gqa")


def _engines(checkpoint: Path, **options) -> tuple[LLM, LLM]:
    base = {"dtype": "float32", "max_model_len": 128, **options}
    if "num_gpu_blocks_override" not in base:
        base["kv_cache_memory_bytes"] = 1 << 26
    return LLM(str(checkpoint), async_scheduling=False, **base), LLM(
        str(checkpoint), async_scheduling=True, **base)


def _summary(outputs) -> list:
    return [
        [(c.token_ids, c.text, c.finish_reason, c.stop_reason,
          None if c.logprobs is None else [{t: round(v.logprob, 5) for t, v in d.items()}
                                           for d in c.logprobs])
         for c in out.outputs]
        for out in outputs
    ]


PARAMS = {
    "greedy": [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)],
    "seeded": [SamplingParams(temperature=0.9, top_k=20, top_p=0.9, seed=s, max_tokens=10,
                              ignore_eos=True) for s in range(len(PROMPTS))],
    "stops": [SamplingParams(temperature=0, max_tokens=16, stop=["e"], ignore_eos=True),
              SamplingParams(temperature=0.8, seed=3, max_tokens=16, stop_token_ids=[5, 7, 11])],
    "n_logprobs": [SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=6, logprobs=2,
                                  ignore_eos=True)],
    "penalties": [SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                  SamplingParams(temperature=0, max_tokens=8, repetition_penalty=1.5,
                                 frequency_penalty=0.4, ignore_eos=True)],
    "lengths": [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True)
                for m in (1, 2, 3, 17, 5)],
}


@pytest.mark.parametrize("case", list(PARAMS))
def test_async_equals_sync(checkpoint, case):
    sync, asynchronous = _engines(checkpoint)
    params = PARAMS[case]
    params = params * len(PROMPTS) if len(params) == 1 else (params * 5)[: len(PROMPTS)]
    expected = _summary(sync.generate(PROMPTS, params, use_tqdm=False))
    assert _summary(asynchronous.generate(PROMPTS, params, use_tqdm=False)) == expected
    assert asynchronous.llm_engine._in_flight is None
    bm = asynchronous.llm_engine.scheduler.block_manager
    assert bm.num_free_blocks == bm.num_blocks


@pytest.mark.parametrize("options", [
    {"num_gpu_blocks_override": 30, "block_size": 4, "max_model_len": 100},
    {"enable_prefix_caching": True, "block_size": 4},
], ids=["preemption", "prefix_caching"])
def test_async_equals_sync_with_preemption_and_prefix_caching(checkpoint, options):
    sync, asynchronous = _engines(checkpoint, **options)
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
              SamplingParams(temperature=0.7, seed=9, max_tokens=20, ignore_eos=True)]
    params = (params * 5)[: len(PROMPTS)]
    expected = _summary(sync.generate(PROMPTS, params, use_tqdm=False))
    assert _summary(asynchronous.generate(PROMPTS, params, use_tqdm=False)) == expected
    if "num_gpu_blocks_override" in options:
        assert asynchronous.llm_engine.scheduler.num_preemptions > 0
    else:  # the second run of the same prompts hits the cache, with the same tokens
        assert _summary(asynchronous.generate(PROMPTS, params, use_tqdm=False)) == expected


def test_step_and_abort_with_a_step_in_flight(checkpoint):
    _, asynchronous = _engines(checkpoint)
    engine = asynchronous.llm_engine
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    engine.add_request("a", PROMPTS[0], params)
    engine.add_request("b", PROMPTS[1], params)
    assert engine.step() == []  # the first batch is launched, nothing read yet
    seen = {out.request_id for out in engine.step()}
    assert seen == {"a", "b"}
    engine.abort_request("a")
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id == "b"
            last = out
    assert last.finished and len(last.outputs[0].token_ids) == 30
    bm = engine.scheduler.block_manager
    assert bm.num_free_blocks == bm.num_blocks


def test_default_is_synchronous(checkpoint):
    llm = LLM(str(checkpoint), dtype="float32", max_model_len=64, kv_cache_memory_bytes=1 << 24)
    assert llm.llm_engine.async_scheduling is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_async_equals_sync_on_the_gpu_with_graphs(checkpoint):
    options = {"dtype": "bfloat16", "max_model_len": 128, "kv_cache_memory_bytes": 1 << 26}
    sync = LLM(str(checkpoint), async_scheduling=False, **options)
    asynchronous = LLM(str(checkpoint), async_scheduling=True, **options)
    for params in PARAMS.values():
        params = params * len(PROMPTS) if len(params) == 1 else (params * 5)[: len(PROMPTS)]
        expected = [[c.token_ids for c in o.outputs]
                    for o in sync.generate(PROMPTS, params, use_tqdm=False)]
        got = [[c.token_ids for c in o.outputs]
               for o in asynchronous.generate(PROMPTS, params, use_tqdm=False)]
        assert got == expected
