"""The engine's behaviour beyond greedy parity: sampling, stop conditions, refused requests,
start-up errors, strict loading, sharded checkpoints, dummy presets and shape recording."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from solidx.runtime import LLM, SamplingParams
from solidx.shape_capture.recorder import recording
from tests.checkpoints import make_checkpoint

PROMPTS = [
    "The quick brown fox",
    "Greedy decoding picks",
    "A paged KV cache stores keys and values",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama-gqa"), "llama-gqa")


@pytest.fixture(scope="module")
def llm(checkpoint) -> LLM:
    return LLM(str(checkpoint), dtype="float32")


def tokens(outputs) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in outputs]


def test_seeded_sampling_is_reproducible(llm, checkpoint):
    params = SamplingParams(
        temperature=1.0, top_p=0.9, top_k=50, max_tokens=16, seed=7, ignore_eos=True
    )
    first = tokens(llm.generate(PROMPTS, params, use_tqdm=False))
    assert tokens(llm.generate(PROMPTS, params, use_tqdm=False)) == first
    # a seeded request draws the same tokens whatever else is in the batch
    alone = tokens(llm.generate(PROMPTS[1], params, use_tqdm=False))
    assert alone == first[1:2]
    other_seed = SamplingParams(temperature=1.0, max_tokens=16, seed=8, ignore_eos=True)
    assert tokens(llm.generate(PROMPTS, other_seed, use_tqdm=False)) != first
    # unseeded requests are reproducible from the engine seed
    unseeded = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    runs = [
        tokens(
            LLM(str(checkpoint), dtype="float32", seed=3).generate(
                PROMPTS, unseeded, use_tqdm=False
            )
        )
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_top_k_one_and_tiny_top_p_are_greedy(llm):
    greedy = tokens(
        llm.generate(
            PROMPTS, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False
        )
    )
    for params in (
        SamplingParams(temperature=1.5, top_k=1, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=1.5, top_p=1e-6, max_tokens=12, ignore_eos=True),
    ):
        assert tokens(llm.generate(PROMPTS, params, use_tqdm=False)) == greedy


def test_stop_token_ids_and_stop_strings(llm):
    greedy = llm.generate(
        PROMPTS[0], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True), use_tqdm=False
    )[0].outputs[0]
    stop_token = greedy.token_ids[5]
    out = llm.generate(
        PROMPTS[0],
        SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_token]),
        use_tqdm=False,
    )[0].outputs[0]
    assert out.token_ids == greedy.token_ids[: greedy.token_ids.index(stop_token) + 1]
    assert out.finish_reason == "stop"
    stop = greedy.text[len(greedy.text) // 2 :][:3]
    out = llm.generate(
        PROMPTS[0],
        SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=stop),
        use_tqdm=False,
    )[0].outputs[0]
    assert out.text == greedy.text[: greedy.text.find(stop)]
    assert out.finish_reason == "stop"


def test_token_id_prompts_match_text_prompts(llm):
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    ids = llm.get_tokenizer().encode(PROMPTS[2])
    by_text, by_ids = llm.generate([PROMPTS[2], {"prompt_token_ids": ids}], params, use_tqdm=False)
    assert by_ids.prompt_token_ids == ids
    assert by_ids.outputs[0].token_ids == by_text.outputs[0].token_ids


def test_too_long_prompt_is_refused_while_others_finish(checkpoint):
    llm = LLM(str(checkpoint), dtype="float32", max_model_len=20)
    long_prompt = {"prompt_token_ids": list(range(3, 30))}
    outs = llm.generate(
        [PROMPTS[0], long_prompt, {"prompt_token_ids": [10**6]}],
        SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
        use_tqdm=False,
    )
    assert outs[0].outputs[0].finish_reason == "length" and outs[0].error is None
    assert len(outs[0].prompt_token_ids) + len(outs[0].outputs[0].token_ids) == 20
    assert outs[1].outputs[0].finish_reason == "error" and outs[1].outputs[0].token_ids == []
    assert "27 tokens" in outs[1].error and "max_model_len=20" in outs[1].error
    assert outs[2].outputs[0].finish_reason == "error" and "vocabulary" in outs[2].error


def test_kv_cache_too_small_for_one_sequence(checkpoint):
    with pytest.raises(
        ValueError,
        match=r"KV cache too small: 3 blocks of 16 tokens .* max_model_len=64 .* 4 blocks",
    ):
        LLM(str(checkpoint), dtype="float32", max_model_len=64, num_gpu_blocks_override=3)
    with pytest.raises(ValueError, match="KV cache too small"):
        LLM(str(checkpoint), dtype="float32", kv_cache_memory_bytes=1000)


def test_config_errors(checkpoint):
    with pytest.raises(ValueError, match="load_format='dummy'"):
        LLM("tiny-llama")
    with pytest.raises(ValueError, match=r"max_model_len=999 must be in 1\.\.256"):
        LLM(str(checkpoint), max_model_len=999)
    with pytest.raises(ValueError, match="torchrun --standalone --nnodes=1 --nproc-per-node=2"):
        LLM(str(checkpoint), tensor_parallel_size=2)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        LLM(str(checkpoint), max_num_seqs=8, max_num_batched_tokens=4)


def test_a_bare_cuda_device_is_this_ranks_gpu(monkeypatch):
    from solidx.runtime.config import Config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    for device in ("cuda", "auto"):
        config = Config("tiny-llama", load_format="dummy", device=device)
        assert config.torch_device == torch.device("cuda", 1)
    config = Config("tiny-llama", load_format="dummy", device="cuda:0")
    assert config.torch_device == torch.device("cuda", 0)


def test_custom_all_reduce_takes_small_aligned_tensors_of_its_dtype():
    from solidx.runtime.custom_all_reduce import MAX_BYTES, CustomAllReduce

    custom = CustomAllReduce.__new__(CustomAllReduce)  # no GPUs here: only the size rules
    custom.dtype = torch.bfloat16
    assert custom.eligible(torch.empty(1, 4096, dtype=torch.bfloat16))
    assert custom.eligible(torch.empty(MAX_BYTES // 2, dtype=torch.bfloat16))
    assert not custom.eligible(torch.empty(MAX_BYTES // 2 + 8, dtype=torch.bfloat16))  # NCCL
    assert not custom.eligible(torch.empty(1, 4096, dtype=torch.float16))
    assert not custom.eligible(torch.empty(3, dtype=torch.bfloat16))  # not 16-byte sized
    assert not custom.eligible(torch.empty(64, 4096, dtype=torch.bfloat16)[:, ::2])


def edited_checkpoint(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors")
    return dst


def test_unsupported_architecture_names_itself_and_the_supported(checkpoint, tmp_path):
    folder = shutil.copytree(checkpoint, tmp_path / "gpt2")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="'GPT2LMHeadModel' is not supported .*LlamaForCausalLM.*Qwen2ForCausalLM"
    ):
        LLM(str(folder), dtype="float32")


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"),
            r"missing tensors: model\.layers\.1\.self_attn\.k_proj\.weight",
        ),
        (
            lambda t: t.__setitem__("model.layers.0.mlp.extra.weight", torch.zeros(2)),
            r"unexpected tensors \(no such parameter\): model\.layers\.0\.mlp\.extra\.weight",
        ),
        (
            lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(127, 64)),
            r"tensor 'model\.layers\.0\.mlp\.up_proj\.weight' "
            r"has shape \(127, 64\), expected \(128, 64\)",
        ),
        (
            lambda t: t.__setitem__("model.norm.weight", torch.zeros(65)),
            r"tensor 'model\.norm\.weight' has shape \(65,\), expected \(64,\)",
        ),
    ],
)
def test_checkpoint_mismatch_is_an_error_naming_the_tensor(checkpoint, tmp_path, edit, message):
    folder = edited_checkpoint(checkpoint, tmp_path / "broken", edit)
    with pytest.raises(ValueError, match=message):
        LLM(str(folder), dtype="float32")


def test_sharded_checkpoint_loads_like_one_file(llm, checkpoint, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(checkpoint, folder)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, folder / file)
        weight_map.update({n: file for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    sharded = LLM(str(folder), dtype="float32")
    assert tokens(sharded.generate(PROMPTS, params, use_tqdm=False)) == tokens(
        llm.generate(PROMPTS, params, use_tqdm=False)
    )


def test_dummy_preset_runs_with_the_byte_tokenizer():
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    runs = [
        LLM("tiny-llama", load_format="dummy", seed=1).generate(
            ["Hello", "Bonjour tout le monde"], params, use_tqdm=False
        )
        for _ in range(2)
    ]
    assert tokens(runs[0]) == tokens(runs[1])
    assert runs[0][0].prompt_token_ids == [1] + [3 + b for b in b"Hello"]
    assert len(set(runs[0][1].outputs[0].token_ids)) > 1, (
        "dummy weights should not repeat one token"
    )
    assert isinstance(runs[0][0].outputs[0].text, str)


def test_linear_layers_record_their_gemm_problems(llm):
    prompts = [{"prompt_token_ids": [5] * 7}, {"prompt_token_ids": [6] * 5}]
    with recording() as recorder:
        llm.generate(
            prompts, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True), use_tqdm=False
        )
    rows = {(row.problem.M, row.problem.N, row.problem.K): row for row in recorder.rows()}
    # hidden 64, 4 query heads + 2 KV heads of 16, intermediate 128, vocab 300, 2 layers
    prefill, decode = 12, 2
    for m, k, layer in [
        (128, 64, "model.layers.*.self_attn.qkv_proj"),
        (64, 64, "model.layers.*.self_attn.o_proj"),
        (256, 64, "model.layers.*.mlp.gate_up_proj"),
        (64, 128, "model.layers.*.mlp.down_proj"),
    ]:
        assert rows[(m, prefill, k)].layers == (layer,) and rows[(m, prefill, k)].count == 2
        assert rows[(m, decode, k)].count == 2 * 2  # two decode steps, two layers
        assert rows[(m, prefill, k)].problem.dtype == torch.float32
    assert rows[(300, 2, 64)].layers == ("lm_head",)


def test_capture_workload_writes_the_engine_problems(tmp_path):
    from solidx.gradlib.shapes_file import read_shapes
    from solidx.runtime.bench.workload import capture_workload

    path = tmp_path / "shapes.csv"
    capture_workload(
        "tiny-llama", [1, 3], input_len=5, output_len=3, path=str(path), dtype="float32"
    )
    rows = read_shapes(path, dtype=torch.float32, outdtype=torch.float32)
    qkv = {r.problem.N: r.count for r in rows if r.layers == ("model.layers.*.self_attn.qkv_proj",)}
    # prefill of 1 x 5 and 3 x 5 tokens, then two decode steps at N = batch size; 2 layers each
    assert qkv == {5: 2, 15: 2, 1: 4, 3: 4}
    lm_head = {r.problem.N: r.count for r in rows if r.layers == ("lm_head",)}
    assert lm_head == {1: 3, 3: 3}


def test_sliding_window_caps_the_model_length(checkpoint, tmp_path):
    from solidx.runtime.config import Config

    folder = shutil.copytree(checkpoint, tmp_path / "mistral-v01")
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=64)
    (folder / "config.json").write_text(json.dumps(config))
    assert Config(str(folder)).max_model_len == 64
    with pytest.raises(ValueError, match=r"max_model_len=128 must be in 1\.\.64 .*sliding_window"):
        Config(str(folder), max_model_len=128)
