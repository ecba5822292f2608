"""CUDA graphs for decode: buckets, padding, eager fallback, and the graphs' sampling against the
eager sampler for each setting, with graphs that re-run their step at each replay (CPU); graphs
against eager (GPU)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import random
import types
from collections import Counter

import pytest
import torch

from solidx.gradlib.problem import GemmProblem
from solidx.runtime import LLM, SamplingParams, attention, cuda_graphs
from solidx.runtime.cuda_graphs import (
    GRAPH_MODES,
    DecodeGraphs,
    _report,
    bucket_for,
    capture_sizes,
)
from solidx.runtime.model_runner import ModelRunner
from solidx.shape_capture.recorder import ShapeRecorder, recording

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)

# 2 layers, head size 128, GQA 2: the custom paged decode kernel's envelope (in bf16)
HEAD128_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "vocab_size": 512,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@pytest.mark.parametrize(
    "max_num_seqs, sizes",
    [
        (1, [1]),
        (3, [1, 2, 4]),
        (8, [1, 2, 4, 8]),
        (20, [1, 2, 4, 8, 16, 24]),
        (64, [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]),
        (100, [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112]),
    ],
)
def test_capture_sizes(max_num_seqs, sizes):
    assert capture_sizes(max_num_seqs) == sizes


def test_capture_sizes_up_to_256_and_refuses_zero():
    sizes = capture_sizes(256)
    assert sizes[:4] == [1, 2, 4, 8] and sizes[-1] == 256
    steps = [b - a for a, b in itertools.pairwise(sizes[3:])]
    assert steps == [8] * 7 + [16] * 12
    with pytest.raises(ValueError, match="max_num_seqs"):
        capture_sizes(0)


def test_bucket_for_picks_the_smallest_that_holds():
    sizes = [1, 2, 4, 8]
    assert [bucket_for(sizes, n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]


def test_replayed_problems_report_as_the_forward_did():
    problems = [GemmProblem.for_linear(128, 4, 64), GemmProblem.for_linear(64, 4, 128)]
    original = ShapeRecorder()
    for i in range(3):
        original.record(problems[0], f"model.layers.{i}.self_attn.qkv_proj")
        original.record(problems[1], f"model.layers.{i}.mlp.down_proj")
    original.record(problems[1], "model.layers.0.self_attn.o_proj")
    again = ShapeRecorder()
    _report(again, original.rows())
    assert again.rows() == original.rows()


def _cpu_llm(**kwargs) -> LLM:
    return LLM(
        "tiny-llama",
        load_format="dummy",
        dtype="float32",
        max_model_len=64,
        max_num_seqs=8,
        **kwargs,
    )


def _graphs(runner: ModelRunner, sizes: list[int], max_blocks: int = 4, max_model_len: int = 64):
    """Decode graphs for ``runner`` over ``sizes``, not captured."""
    return DecodeGraphs(
        runner._run_model, runner.model.compute_logits, sizes, max_blocks, max_model_len,
        runner.vocab_size, runner.device,
    )


def _prompts(count: int, length: int = 5, offset: int = 0) -> list[dict]:
    return [
        {"prompt_token_ids": [(7 * i + 3 * j + offset) % 500 + 3 for j in range(length + i)]}
        for i in range(count)
    ]


def _decode_batch(llm: LLM, count: int):
    """The scheduled decode batch of ``count`` sequences after their prefill step (scheduled
    synchronously: the prefill's tokens are read back before the decode batch is built)."""
    engine = llm.llm_engine
    engine.async_scheduling = False
    for i, prompt in enumerate(_prompts(count)):
        engine.add_request(f"decode-{i}", prompt, GREEDY)
    engine.step()
    batch = engine.scheduler.schedule()
    assert [item.num_tokens for item in batch] == [1] * count
    return batch


@pytest.mark.parametrize("enforce_eager", [False, True])
def test_cpu_runs_eagerly_without_padding(enforce_eager):
    llm = _cpu_llm(enforce_eager=enforce_eager)
    runner = llm.llm_engine.model_runner
    assert runner.graphs is None
    inputs = runner.prepare(_decode_batch(llm, 3))
    assert inputs.input_ids.shape == (3,) and inputs.context.block_tables.shape[0] == 3


def test_decode_batch_is_padded_to_its_bucket_with_harmless_rows():
    llm = _cpu_llm()
    runner = llm.llm_engine.model_runner
    batch = _decode_batch(llm, 3)
    eager = runner.prepare(batch)
    hidden_eager = runner.forward(eager).clone()

    # the buckets of a GPU runner, not captured: prepare pads, forward runs eagerly
    runner.graphs = _graphs(runner, [1, 2, 4, 8])
    padded = runner.prepare(batch)
    ctx = padded.context
    assert padded.input_ids.tolist() == eager.input_ids.tolist() + [0]
    assert padded.positions.tolist() == eager.positions.tolist() + [0]
    assert ctx.slot_mapping.tolist() == eager.context.slot_mapping.tolist() + [-1]
    assert ctx.context_lens.tolist() == eager.context.context_lens.tolist() + [0]
    assert ctx.block_tables.shape == (4, eager.context.block_tables.shape[1])
    assert ctx.block_tables[:3].tolist() == eager.context.block_tables.tolist()
    assert set(ctx.block_tables[3].tolist()) == {-1}
    assert ctx.cu_seqlens_q.tolist() == [0, 1, 2, 3, 4]
    assert ctx.cu_seqlens_k.tolist() == eager.context.cu_seqlens_k.tolist() + [
        eager.context.cu_seqlens_k[-1].item()
    ]
    assert padded.sample_indices.tolist() == [0, 1, 2]
    assert ctx.decode_only and ctx.max_context_len == eager.context.max_context_len

    cache_before = runner.kv_cache.clone()
    hidden_padded = runner.forward(padded)
    assert hidden_padded.shape[0] == 4
    torch.testing.assert_close(hidden_padded[:3], hidden_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runner.kv_cache, cache_before, rtol=1e-5, atol=1e-5)


def test_padded_generation_gives_the_eager_tokens():
    llm = _cpu_llm()
    prompts = _prompts(3)
    eager = [out.outputs[0].token_ids for out in llm.generate(prompts, GREEDY, use_tqdm=False)]
    runner = llm.llm_engine.model_runner
    runner.graphs = _graphs(runner, [1, 2, 4, 8])
    padded = [out.outputs[0].token_ids for out in llm.generate(prompts, GREEDY, use_tqdm=False)]
    assert padded == eager


class _StandInGraph:
    """Records nothing and replays nothing: lets the capture bookkeeping run on a CPU."""

    def replay(self) -> None:
        return None


def test_capture_and_replays_report_kernels_and_problems_once_each(monkeypatch):
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _StandInGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph, pool=None: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    llm = _cpu_llm()
    runner = llm.llm_engine.model_runner
    graphs = _graphs(runner, [1, 2, 4])
    with recording() as recorder:
        before_capture = Counter(attention.KERNEL_COUNTS)
        graphs.capture()
        warm_ups = Counter(attention.KERNEL_COUNTS) - before_capture
        runner.graphs = graphs
        before = Counter(attention.KERNEL_COUNTS)
        params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
        llm.generate([{"prompt_token_ids": [5 + i] * 5} for i in range(3)], params, use_tqdm=False)
    assert warm_ups == Counter(decode_reference=3 * 2, store_reference=3 * 2)  # captures: none
    ran = Counter(attention.KERNEL_COUNTS) - before
    assert ran["decode_reference"] == 2 * 2  # 2 replayed decode steps, 2 layers
    assert ran["store_reference"] == 2 + 2 * 2  # the prefill, then the replays
    qkv = {
        row.problem.N: row.count
        for row in recorder.rows()
        if "model.layers.*.self_attn.qkv_proj" in row.layers
    }
    assert qkv == {1: 2, 2: 2, 4: 2 * (1 + 2), 15: 2}  # captures once, replays, the prefill


class _Rerun:
    """A stand-in graph that runs its step again at each replay: every output of a decode graph
    is a static buffer, so this replays what a CUDA graph would, on a CPU."""

    def __init__(self, step) -> None:
        self.step, self.replays = step, 0

    def replay(self) -> None:
        self.replays += 1
        self.step()


@pytest.fixture(scope="module")
def rerun_llm():
    """A CPU engine with rerunning decode graphs over buckets 1, 2, 4, 8 (``graphs``: set as the
    runner's ``graphs`` to use them)."""
    llm = _cpu_llm()
    runner = llm.llm_engine.model_runner
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cuda_graphs, "record_graph", lambda step, pool: _Rerun(step))
        patch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
        patch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        graphs = _graphs(runner, [1, 2, 4, 8])
        graphs.capture()
    llm.graphs = graphs
    return llm


def _run(llm: LLM, prompts, params, graphs: DecodeGraphs | None):
    """Outputs of ``prompts`` with the runner's graphs set to ``graphs``, from the same engine
    seed each time; and how often each sampler graph mode replayed."""
    runner = llm.llm_engine.model_runner
    runner.graphs, runner.seeds = graphs, random.Random(0)
    before = {key: g.graph.replays for key, g in llm.graphs.samplers.items()}
    outputs = llm.generate(prompts, params, use_tqdm=False)
    runner.graphs = None
    modes = Counter()
    for key, g in llm.graphs.samplers.items():
        modes[key[1]] += g.graph.replays - before[key]
    return outputs, modes


def _samples(outputs) -> list[list[list[int]]]:
    return [[sample.token_ids for sample in out.outputs] for out in outputs]


GREEDY_MODE, RANDOM_MODE, TOP_MODE = GRAPH_MODES
STOP = 300  # a stop token for min_tokens
DECODE_STEPS = 5  # of 6 tokens per sequence, after the prefill step
SETTINGS = {  # name: (params, the sampler graphs that run the decode steps: none is eager)
    "greedy": (SamplingParams(temperature=0), {GREEDY_MODE: DECODE_STEPS}),
    "temperature": (SamplingParams(temperature=0.8, seed=1), {RANDOM_MODE: DECODE_STEPS}),
    "top_k": (SamplingParams(top_k=20, seed=2), {TOP_MODE: DECODE_STEPS}),
    "top_p": (SamplingParams(top_p=0.7, seed=3), {TOP_MODE: DECODE_STEPS}),
    "min_p": (SamplingParams(min_p=0.3, seed=4), {RANDOM_MODE: DECODE_STEPS}),
    "unseeded": (SamplingParams(temperature=1.2), {RANDOM_MODE: DECODE_STEPS}),
    # the requests are admitted a step apart: 3 steps mix prompts with decode rows, which replay
    "n": (SamplingParams(n=2, temperature=1.5, seed=5), {RANDOM_MODE: DECODE_STEPS + 3}),
    "logprobs": (SamplingParams(seed=6, logprobs=3, top_k=50), {TOP_MODE: DECODE_STEPS}),
    "penalties": (SamplingParams(seed=7, presence_penalty=1.5, repetition_penalty=1.3), {}),
    # masked while fewer than 4 tokens are out: eager for 3 decode steps, then the graphs
    "min_tokens": (SamplingParams(seed=8, min_tokens=4, stop_token_ids=[STOP]), {RANDOM_MODE: 2}),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_graph_sampling_gives_the_eager_tokens(rerun_llm, name):
    params, modes = SETTINGS[name]
    params = dataclasses.replace(params, max_tokens=6, ignore_eos=True)
    prompts = _prompts(3, offset=11)
    eager, _ = _run(rerun_llm, prompts, params, None)
    graphed, replayed = _run(rerun_llm, prompts, params, rerun_llm.graphs)
    assert _samples(graphed) == _samples(eager)
    assert replayed == Counter(modes)
    for ours, theirs in zip(graphed, eager):
        for a, b in zip(ours.outputs, theirs.outputs):
            assert (a.logprobs is None) == (params.logprobs is None)
            for step_a, step_b in zip(a.logprobs or [], b.logprobs or []):
                assert step_a.keys() == step_b.keys()
                for token, logprob in step_a.items():
                    assert logprob.logprob == pytest.approx(step_b[token].logprob, abs=1e-4)


def test_sampled_tokens_are_not_the_greedy_ones(rerun_llm):
    prompts = _prompts(3, offset=11)
    greedy, _ = _run(rerun_llm, prompts, SamplingParams(temperature=0, max_tokens=6), None)
    params = SamplingParams(temperature=1.5, seed=1, max_tokens=6)
    graphed, _ = _run(rerun_llm, prompts, params, rerun_llm.graphs)
    assert _samples(graphed) != _samples(greedy)


def test_seeded_requests_draw_the_same_tokens_in_any_batch(rerun_llm):
    """A seeded request alone, or beside others (other settings, other buckets), eagerly or in
    the graphs: the same tokens; sequence i of a request draws with seed + i."""
    seeded = SamplingParams(temperature=1.3, seed=42, max_tokens=8, ignore_eos=True)
    prompt = _prompts(1, offset=5)
    others = _prompts(5, offset=20)
    other_params = [SamplingParams(temperature=t, top_k=k, max_tokens=8, ignore_eos=True)
                    for t, k in [(0, -1), (1.0, 5), (0.7, -1), (1.1, 100), (0.9, -1)]]
    runs = []
    for graphs in (None, rerun_llm.graphs):
        alone, _ = _run(rerun_llm, prompt, seeded, graphs)
        mixed, _ = _run(rerun_llm, others[:2] + prompt + others[2:],
                        other_params[:2] + [seeded] + other_params[2:], graphs)
        runs += [alone[0].outputs[0].token_ids, mixed[2].outputs[0].token_ids]
    assert all(run == runs[0] for run in runs), runs
    pair, _ = _run(rerun_llm, prompt, dataclasses.replace(seeded, n=2, seed=41), rerun_llm.graphs)
    assert pair[0].outputs[1].token_ids == runs[0]  # seed 41 + index 1
    assert pair[0].outputs[0].token_ids != runs[0]


# -- GPU -------------------------------------------------------------------------------------


def _gpu_llm(model: str, enforce_eager: bool, **kwargs) -> LLM:
    options = {
        "max_model_len": 256,  # one decode partition, as in eager runs of these short prompts
        "max_num_seqs": 8,
        "kv_cache_memory_bytes": 64 << 20,  # two engines fit at once; no profiling run
        **kwargs,
    }
    return LLM(model, load_format="dummy", dtype="bfloat16", enforce_eager=enforce_eager, **options)


@pytest.fixture(params=["tiny-llama", "head128"])
def gpu_model(request, tmp_path) -> tuple[str, str]:
    """(model, the decode kernel it runs): tiny-llama (head 16: PagedAttention v2) and a
    2-layer model with head size 128 (the custom paged kernel)."""
    if request.param == "tiny-llama":
        return "tiny-llama", "paged_v2"
    (tmp_path / "config.json").write_text(json.dumps(HEAD128_CONFIG))
    return str(tmp_path), "paged_custom"


def _tokens(llm: LLM, prompts: list[dict]) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in llm.generate(prompts, GREEDY, use_tqdm=False)]


@pytest.mark.gpu
def test_graphs_give_the_eager_greedy_tokens(gpu_model):
    model, kernel = gpu_model
    graphs = _gpu_llm(model, enforce_eager=False)
    eager = _gpu_llm(model, enforce_eager=True)
    assert graphs.llm_engine.model_runner.graphs.sizes == [1, 2, 4, 8]
    assert eager.llm_engine.model_runner.graphs is None
    for count in (1, 4):  # bucket sizes: the very same GEMM shapes eagerly
        prompts = _prompts(count, offset=count)
        before = Counter(attention.KERNEL_COUNTS)
        assert _tokens(graphs, prompts) == _tokens(eager, prompts)
        ran = Counter(attention.KERNEL_COUNTS) - before
        assert ran[kernel] == 2 * 2 * 7  # 2 layers, 7 decode steps, graphs and eager alike

    # batch 3 in bucket 4: the same as an eager run padded the same way
    runner = eager.llm_engine.model_runner
    runner.graphs = _graphs(runner, [1, 2, 4, 8], 16, 256)
    prompts = _prompts(3, offset=3)
    assert _tokens(graphs, prompts) == _tokens(eager, prompts)


@pytest.mark.gpu
def test_padded_replay_matches_the_unpadded_eager_step(gpu_model):
    model, _ = gpu_model
    llm = _gpu_llm(model, enforce_eager=False)
    runner = llm.llm_engine.model_runner
    batch = _decode_batch(llm, 3)
    with torch.inference_mode():
        padded = runner.prepare(batch)
        assert padded.input_ids.shape == (4,)
        replayed = runner.forward(padded)[:3].float().clone()
        graphs, runner.graphs = runner.graphs, None
        eager = runner.forward(runner.prepare(batch)).float()
        runner.graphs = graphs
    torch.testing.assert_close(replayed, eager, rtol=3e-2, atol=3e-2)


@pytest.mark.gpu
def test_shape_capture_sees_the_bucket_sizes_as_decode_n():
    with recording() as recorder:
        llm = _gpu_llm("tiny-llama", enforce_eager=False, max_num_seqs=4)
        params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
        llm.generate([{"prompt_token_ids": [5 + i] * 5} for i in range(3)], params, use_tqdm=False)
    qkv = {
        row.problem.N: row.count
        for row in recorder.rows()
        if "model.layers.*.self_attn.qkv_proj" in row.layers
    }
    # prefill (3 x 5 tokens), captures of buckets 1, 2, 4; decode of 3 padded to 4 (never N=3)
    assert set(qkv) == {15, 1, 2, 4}
    assert qkv[4] == 2 * (1 + 2)  # 2 layers: the capture, then 2 replayed decode steps


SAMPLED = [
    SamplingParams(temperature=0),
    SamplingParams(temperature=0.9, seed=1),
    SamplingParams(temperature=1.0),  # unseeded: both engines draw seeds from seed=0
    SamplingParams(top_k=40, top_p=0.9, seed=2),
    SamplingParams(min_p=0.05, seed=3, logprobs=2),
    SamplingParams(seed=4, presence_penalty=1.0, repetition_penalty=1.2),  # eager sampling
]


def _split_as(eager: LLM, graphs: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``eager`` run a step that mixes prompt chunks with decode rows as ``graphs`` does
    (the chunks, then the decode rows, as two forwards), so the two compute every row with the
    same kernels at the same shapes; otherwise a near tie among the sampled tokens may part
    them (the eager decode rows run inside the mixed forward)."""
    stand_in = types.SimpleNamespace(graphs=graphs.llm_engine.model_runner.graphs)
    monkeypatch.setattr(eager.llm_engine.model_runner, "_split",
                        lambda batch: ModelRunner._split(stand_in, batch))


@pytest.mark.gpu
def test_graphs_give_the_eager_sampled_tokens(gpu_model, monkeypatch):
    model, _ = gpu_model
    graphs = _gpu_llm(model, enforce_eager=False)
    eager = _gpu_llm(model, enforce_eager=True)
    _split_as(eager, graphs, monkeypatch)
    for params in SAMPLED:
        params = dataclasses.replace(params, max_tokens=8, ignore_eos=True)
        for count, n in ((1, 1), (4, 1), (2, 2)):  # bucket sizes: the same GEMM shapes eagerly
            prompts = _prompts(count, offset=count + n)
            params_n = dataclasses.replace(params, n=n)
            ours = _samples(graphs.generate(prompts, params_n, use_tqdm=False))
            theirs = _samples(eager.generate(prompts, params_n, use_tqdm=False))
            assert ours == theirs, params_n


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_mixed_steps_replay_their_decode_rows(rerun_llm, monkeypatch, async_scheduling):
    """A small token budget chunks the long prompts beside the short ones' decoding: those
    steps run the chunks eagerly and the decode rows by replay, with the tokens of an eager
    run."""
    engine = rerun_llm.llm_engine
    monkeypatch.setattr(engine.scheduler, "max_num_batched_tokens", 16)
    monkeypatch.setattr(engine, "async_scheduling", async_scheduling)
    runner = engine.model_runner
    splits = []
    real_split = runner._split
    monkeypatch.setattr(runner, "_split", lambda batch: splits.append(real_split(batch))
                        or splits[-1])
    prompts = [{"prompt_token_ids": [3 + (7 * j) % 400 for j in range(n)]} for n in (3, 40, 5, 50)]
    params = SamplingParams(temperature=0.8, seed=1, max_tokens=8, ignore_eos=True)
    eager, _ = _run(rerun_llm, prompts, params, None)
    splits.clear()
    graphed, _ = _run(rerun_llm, prompts, params, rerun_llm.graphs)
    assert _samples(graphed) == _samples(eager)
    assert sum(parts is not None for parts in splits) >= 3
