"""Greedy parity with Hugging Face transformers on tiny random checkpoints (float32, CPU):
identical tokens for 32 new tokens over a batch of prompts of different lengths, and
log-probabilities close at every step; also with prefix caching, with prefill chunked small,
and with a KV cache so small that sequences are preempted and recomputed."""

from __future__ import annotations

import pytest
import torch

from solidx.runtime import LLM, SamplingParams
from tests.checkpoints import KINDS, make_checkpoint

NEW_TOKENS = 32
SHARED = "Prefix caching shares the blocks of a common prompt between requests"
PROMPTS = [
    "The quick brown fox",
    "Greedy",
    "A paged KV cache stores keys and values in fixed-size blocks. Continuous batching",
    SHARED + " and tensor parallelism",
    SHARED + " like a dog.",
]
MODES = {
    "default": {},
    "prefix_caching": {"enable_prefix_caching": True, "block_size": 4},
    "chunked_prefill": {"max_num_batched_tokens": 6, "max_num_seqs": 3},
    "preemption": {"num_gpu_blocks_override": 30, "block_size": 4, "max_model_len": 100},
    "all_at_once": {
        "enable_prefix_caching": True,
        "max_num_batched_tokens": 7,
        "max_num_seqs": 4,
        "num_gpu_blocks_override": 26,
        "block_size": 4,
        "max_model_len": 100,
    },
}


@pytest.fixture(scope="module", params=list(KINDS))
def reference(request, tmp_path_factory):
    """(checkpoint folder, per prompt: HF greedy tokens and HF log-probabilities per step)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    expected = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(
            ids,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        logits = torch.stack(out.logits)[:, 0]
        top2 = logits.topk(2).values
        margin = (top2[:, 0] - top2[:, 1]).min().item()
        assert margin > 1e-3, (
            f"checkpoint {request.param}: top-1 margin {margin} too thin for parity"
        )
        expected.append(
            (out.sequences[0, ids.shape[1] :].tolist(), torch.log_softmax(logits, dim=-1))
        )
    return folder, expected


@pytest.mark.parametrize("mode", list(MODES))
def test_greedy_matches_transformers(reference, mode):
    folder, expected = reference
    llm = LLM(str(folder), dtype="float32", **MODES[mode])
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=5)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    if mode in ("prefix_caching", "all_at_once"):  # a second round reuses the first one's blocks
        outputs = llm.generate(PROMPTS, params, use_tqdm=False)
        assert all(out.num_cached_tokens > 0 for out in outputs[2:])
    for out, (tokens, logprobs) in zip(outputs, expected):
        completion = out.outputs[0]
        assert completion.token_ids == tokens, f"prompt {out.prompt!r}"
        assert completion.finish_reason == "length"
        assert len(completion.logprobs) == NEW_TOKENS
        for step, entry in enumerate(completion.logprobs):
            ids = torch.tensor(list(entry))
            assert set(entry) >= set(logprobs[step].topk(5).indices.tolist())
            torch.testing.assert_close(
                torch.tensor(list(entry.values())), logprobs[step, ids], atol=2e-4, rtol=1e-5
            )
    scheduler = llm.llm_engine.scheduler
    if mode in ("preemption", "all_at_once"):
        assert scheduler.num_preemptions > 0
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks
