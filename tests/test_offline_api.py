"""vLLM's offline API on a tiny checkpoint: penalties against a torch reference on the model's
own logits, n samples sharing prefix blocks, seeds, Logprob objects, prompt logprobs, stop
reasons, min_tokens, LLM.chat, stepping and aborting, and requests that fail alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from solidx.cli.generate import generate
from solidx.runtime import LLM, SamplingParams
from tests.checkpoints import make_checkpoint

PROMPTS = ["The quick brown fox", "A paged KV cache stores keys and values"]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama-gqa"), "llama-gqa")


@pytest.fixture(scope="module")
def llm(checkpoint) -> LLM:
    return LLM(str(checkpoint), dtype="float32", max_model_len=128, kv_cache_memory_bytes=1 << 26)


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(checkpoint).float().eval()


def greedy(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, ignore_eos=True, **kwargs)


def test_penalties_follow_a_torch_reference_on_the_logits(llm, hf_model):
    presence, frequency, repetition = 0.8, 0.6, 1.7
    params = greedy(
        max_tokens=8,
        presence_penalty=presence,
        frequency_penalty=frequency,
        repetition_penalty=repetition,
    )
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    plain = llm.generate(PROMPTS, greedy(max_tokens=8), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] != [o.outputs[0].token_ids for o in plain]
    for out in outputs:
        tokens = list(out.prompt_token_ids)
        prompt_len = len(tokens)
        for _ in range(8):
            with torch.no_grad():
                logits = hf_model(torch.tensor([tokens])).logits[0, -1].clone()
            generated = tokens[prompt_len:]
            for token in set(tokens):
                value = logits[token]
                logits[token] = value / repetition if value > 0 else value * repetition
            for token in set(generated):
                logits[token] -= frequency * generated.count(token) + presence
            tokens.append(int(logits.argmax()))
        assert out.outputs[0].token_ids == tokens[prompt_len:]


def test_n_samples_are_reproducible_and_seeded_per_index(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=10, ignore_eos=True)
    (first,) = llm.generate(PROMPTS[0], params, use_tqdm=False)
    (again,) = llm.generate(PROMPTS[0], params, use_tqdm=False)
    assert [c.index for c in first.outputs] == [0, 1, 2]
    runs = [[c.token_ids for c in out.outputs] for out in (first, again)]
    assert runs[0] == runs[1] and len({tuple(t) for t in runs[0]}) > 1
    single = SamplingParams(temperature=1.0, seed=12, max_tokens=10, ignore_eos=True)
    (alone,) = llm.generate(PROMPTS[0], single, use_tqdm=False)
    assert alone.outputs[0].token_ids == runs[0][1]


def test_n_samples_share_the_prompt_blocks(llm):
    engine = llm.llm_engine
    bm = engine.scheduler.block_manager
    prompt = {"prompt_token_ids": list(range(5, 45))}  # 40 tokens: 2 full blocks of 16
    engine.add_request("shared", prompt, SamplingParams(n=3, max_tokens=4, ignore_eos=True))
    seqs = engine.requests["shared"].seqs
    while not all(seq.block_table for seq in seqs):
        engine.step()
    parent = seqs[0].block_table[:2]
    assert all(seq.block_table[:2] == parent for seq in seqs)
    assert [bm.blocks[b].ref_count for b in parent] == [3, 3]
    assert len({seq.block_table[2] for seq in seqs}) == 3  # each computes its own tail
    while engine.has_unfinished_requests():
        engine.step()
    assert bm.num_free_blocks == bm.num_blocks


def test_logprobs_are_vllm_logprob_objects(llm):
    tokenizer = llm.get_tokenizer()
    (out,) = llm.generate(PROMPTS[1], greedy(max_tokens=5, logprobs=3), use_tqdm=False)
    completion = out.outputs[0]
    total = 0.0
    for token, entry in zip(completion.token_ids, completion.logprobs):
        assert entry[token].rank == 1
        assert sorted(lp.rank for lp in entry.values()) == [1, 2, 3]
        by_rank = sorted(entry.values(), key=lambda lp: lp.rank)
        values = [lp.logprob for lp in by_rank]
        assert values == sorted(values, reverse=True)
        assert all(lp.decoded_token == tokenizer.decode([t]) for t, lp in entry.items())
        total += entry[token].logprob
    assert completion.cumulative_logprob == pytest.approx(total)
    sampled = SamplingParams(temperature=1.5, seed=3, max_tokens=8, logprobs=0, ignore_eos=True)
    (out,) = llm.generate(PROMPTS[1], sampled, use_tqdm=False)
    for token, entry in zip(out.outputs[0].token_ids, out.outputs[0].logprobs):
        assert list(entry) == [token] and entry[token].rank >= 1


def test_prompt_logprobs_match_the_model(llm, hf_model):
    (out,) = llm.generate(PROMPTS[1], greedy(max_tokens=1, prompt_logprobs=2), use_tqdm=False)
    ids = out.prompt_token_ids
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    with torch.no_grad():
        reference = hf_model(torch.tensor([ids])).logits[0].log_softmax(-1)
    for position in range(1, len(ids)):
        entry = out.prompt_logprobs[position]
        token = ids[position]
        expected = reference[position - 1, token].item()
        assert entry[token].logprob == pytest.approx(expected, abs=1e-4)
        assert len(entry) <= 3 and {lp.rank for lp in entry.values()} >= {1, 2}


def test_stop_reasons_and_stop_strings(llm):
    (base,) = llm.generate(PROMPTS[0], greedy(max_tokens=12), use_tqdm=False)
    tokens, text = base.outputs[0].token_ids, base.outputs[0].text
    assert base.outputs[0].stop_reason is None and base.outputs[0].finish_reason == "length"
    (by_token,) = llm.generate(PROMPTS[0], greedy(max_tokens=12, stop_token_ids=[tokens[3]]),
                               use_tqdm=False)
    first = tokens.index(tokens[3])
    assert by_token.outputs[0].stop_reason == tokens[3]
    assert by_token.outputs[0].token_ids == tokens[: first + 1]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    (by_text,) = llm.generate(PROMPTS[0], greedy(max_tokens=12, stop=[stop]), use_tqdm=False)
    assert by_text.outputs[0].stop_reason == stop and by_text.outputs[0].finish_reason == "stop"
    assert by_text.outputs[0].text == text[: text.find(stop)]
    kept = greedy(max_tokens=12, stop=[stop], include_stop_str_in_output=True)
    (with_stop,) = llm.generate(PROMPTS[0], kept, use_tqdm=False)
    assert with_stop.outputs[0].text == text[: text.find(stop) + len(stop)]


def test_min_tokens_suppresses_stop_tokens(llm):
    (base,) = llm.generate(PROMPTS[0], greedy(max_tokens=6), use_tqdm=False)
    first = base.outputs[0].token_ids[0]
    params = SamplingParams(temperature=0, max_tokens=6, min_tokens=3, stop_token_ids=[first])
    (out,) = llm.generate(PROMPTS[0], params, use_tqdm=False)
    eos = llm.get_tokenizer().eos_token_id
    assert len(out.outputs[0].token_ids) >= 3
    assert not {first, eos} & set(out.outputs[0].token_ids[:3])


def test_chat_equals_generate_on_the_template(llm):
    conversation = [{"role": "user", "content": "The quick brown fox"}]
    params = greedy(max_tokens=6)
    (chat,) = llm.chat(conversation, params, use_tqdm=False, chat_template=TEMPLATE)
    rendered = llm.get_tokenizer().apply_chat_template(
        conversation, chat_template=TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    assert rendered.endswith("assistant:")
    ids = llm.get_tokenizer().apply_chat_template(
        conversation, chat_template=TEMPLATE, add_generation_prompt=True, tokenize=True
    )
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    (plain,) = llm.generate({"prompt_token_ids": list(ids)}, params, use_tqdm=False)
    assert chat.outputs[0].token_ids == plain.outputs[0].token_ids
    both = llm.chat([conversation, conversation], params, use_tqdm=False, chat_template=TEMPLATE)
    assert [o.outputs[0].token_ids for o in both] == [plain.outputs[0].token_ids] * 2


def test_step_returns_partial_outputs_and_abort_frees_blocks(llm):
    engine = llm.llm_engine
    bm = engine.scheduler.block_manager
    engine.add_request("a", PROMPTS[0], greedy(max_tokens=20))
    engine.add_request("b", {"prompt_token_ids": [1, 5, 9, 14]}, greedy(max_tokens=3))
    with pytest.raises(ValueError, match="already running"):
        engine.add_request("a", PROMPTS[0], greedy(max_tokens=2))
    seen: dict[str, list[int]] = {"a": [], "b": []}
    for _ in range(5):
        for out in engine.step():
            assert len(out.outputs[0].token_ids) == len(seen[out.request_id]) + 1
            seen[out.request_id] = out.outputs[0].token_ids
            assert out.finished == (out.request_id == "b" and len(seen["b"]) == 3)
    assert len(seen["a"]) == 5 and len(seen["b"]) == 3 and bm.num_free_blocks < bm.num_blocks
    engine.abort_request(["a", "unknown"])
    assert not engine.has_unfinished_requests()
    assert bm.num_free_blocks == bm.num_blocks and engine.step() == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": 2**70}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"logprobs": 2.5}, "logprobs"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_k": True}, "top_k"),
        ({"max_tokens": True}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n": 2.0}, "n"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"frequency_penalty": 3.0}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"min_tokens": 20, "max_tokens": 10}, "min_tokens"),
        ({"stop_token_ids": [1.5]}, "stop_token_ids"),
        ({"stop": [""]}, "stop"),
        ({"ignore_eos": 1}, "ignore_eos"),
        ({"prompt_logprobs": -2}, "prompt_logprobs"),
    ],
)
def test_bad_sampling_params_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_generate_cli_passes_the_sampling_flags():
    base = ["--model", "tiny-llama", "--load-format", "dummy", "--dtype", "float32"]
    base += ["--prompt", "Hi"]
    bad = CliRunner().invoke(generate, [*base, "--repetition-penalty", "0"])
    assert bad.exit_code != 0 and "repetition_penalty must be > 0" in bad.output
    good = CliRunner().invoke(
        generate,
        [*base, "--max-tokens", "3", "--min-tokens", "3", "--min-p", "0.1", "--temperature",
         "0.7", "--presence-penalty", "0.5", "--frequency-penalty", "0.5"],
    )
    assert good.exit_code == 0, good.output
    assert "(3 tokens, length)" in good.output


def test_bad_requests_are_refused_up_front_and_the_llm_keeps_working(llm):
    with pytest.raises(ValueError, match=r"prompt_token_ids\[1\]"):
        llm.generate({"prompt_token_ids": [1, 3.7]}, greedy(max_tokens=2), use_tqdm=False)
    with pytest.raises(ValueError, match=r"prompt_token_ids\[0\]"):
        llm.generate({"prompt_token_ids": [True]}, greedy(max_tokens=2), use_tqdm=False)
    with pytest.raises(ValueError, match="logprobs=1000000 is more than .*max_logprobs=20"):
        llm.generate(PROMPTS, [greedy(), greedy(logprobs=10**6)], use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    (out,) = llm.generate(PROMPTS[0], greedy(max_tokens=3), use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 3


def test_a_request_failing_inside_a_step_leaves_the_engine_usable(llm, monkeypatch):
    engine = llm.llm_engine
    bm = engine.scheduler.block_manager
    real_launch, calls = engine.model_runner.launch, []

    def launch_failing_once(batch, previous=None):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("device fault")
        return real_launch(batch, previous)

    monkeypatch.setattr(engine.model_runner, "launch", launch_failing_once)
    outs = llm.generate(PROMPTS, greedy(max_tokens=4), use_tqdm=False)
    assert all(o.outputs[0].finish_reason == "error" and "device fault" in o.error for o in outs)
    assert bm.num_free_blocks == bm.num_blocks
    monkeypatch.undo()
    # a failure inside one request's postprocessing fails that request only
    real_decode = engine.tokenizer.decode

    def decode(ids, skip_special_tokens=True):
        if not skip_special_tokens and len(ids) > 1:
            raise UnicodeError("bad bytes")
        return real_decode(ids, skip_special_tokens=skip_special_tokens)

    monkeypatch.setattr(engine.tokenizer, "decode", decode)
    params = [greedy(max_tokens=4), greedy(max_tokens=4, skip_special_tokens=False)]
    good, bad = llm.generate(PROMPTS, params, use_tqdm=False)
    assert good.error is None and len(good.outputs[0].token_ids) == 4
    assert bad.outputs[0].finish_reason == "error" and "bad bytes" in bad.error
    monkeypatch.undo()
    again = llm.generate(PROMPTS, greedy(max_tokens=4), use_tqdm=False)
    assert again[0].outputs[0].token_ids == good.outputs[0].token_ids


@pytest.mark.gpu
def test_every_setting_on_the_gpu_with_cuda_graphs(checkpoint, llm):
    cpu = LLM(str(checkpoint), dtype="float32", max_model_len=128, device="cpu")
    gpu = llm  # on the GPU, with CUDA graphs
    assert gpu.llm_engine.model_runner.graphs is not None
    penalized = SamplingParams(
        n=2,
        temperature=0,
        max_tokens=12,
        min_tokens=3,
        stop_token_ids=[7],
        repetition_penalty=1.5,
        presence_penalty=0.5,
        frequency_penalty=0.3,
        logprobs=3,
        prompt_logprobs=2,
    )
    want = cpu.generate(PROMPTS, penalized, use_tqdm=False)
    got = gpu.generate(PROMPTS, penalized, use_tqdm=False)
    for expected, out in zip(want, got):
        assert [c.token_ids for c in out.outputs] == [c.token_ids for c in expected.outputs]
        for a, b in zip(expected.outputs[0].logprobs, out.outputs[0].logprobs):
            assert set(a) == set(b)
            assert all(a[t].logprob == pytest.approx(b[t].logprob, abs=2e-2) for t in a)
        assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    sampled = SamplingParams(
        n=3, temperature=0.9, top_k=20, top_p=0.9, min_p=0.05, seed=5, max_tokens=12
    )
    first = gpu.generate(PROMPTS, sampled, use_tqdm=False)
    again = gpu.generate(PROMPTS, sampled, use_tqdm=False)
    assert [[c.token_ids for c in o.outputs] for o in first] == [
        [c.token_ids for c in o.outputs] for o in again
    ]
    bm = gpu.llm_engine.scheduler.block_manager
    assert bm.num_free_blocks == bm.num_blocks
