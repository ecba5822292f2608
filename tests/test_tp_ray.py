"""``distributed_executor_backend="ray"`` (``--worker-use-ray``): the ranks as Ray actors on a
local Ray instance (CPU actors over gloo here), with the same tokens as one process."""

from __future__ import annotations

import sys

import pytest

from solidx.runtime import LLM
from solidx.runtime.config import Config
from tests.checkpoints import make_checkpoint
from tests.tp_worker import CPU, GREEDY, PROMPTS, SAMPLED


def tokens(outputs) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in outputs]


def test_worker_use_ray_is_the_ray_backend():
    config = Config("tiny-llama", load_format="dummy", tensor_parallel_size=2, worker_use_ray=True)
    assert config.distributed_executor_backend == "ray"
    with pytest.raises(ValueError, match="worker_use_ray contradicts"):
        Config(
            "tiny-llama",
            load_format="dummy",
            worker_use_ray=True,
            distributed_executor_backend="torchrun",
        )


def test_without_ray_the_error_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'solidx\[ray\]'"):
        LLM("tiny-llama", load_format="dummy", tensor_parallel_size=2, worker_use_ray=True)


def test_ray_ranks_give_the_tokens_of_one_process(tmp_path):
    ray = pytest.importorskip("ray")
    checkpoint = str(make_checkpoint(tmp_path / "qwen2", "qwen2"))
    expected = LLM(checkpoint, max_model_len=64, **CPU)
    llm = LLM(
        checkpoint,
        max_model_len=64,
        **CPU,
        tensor_parallel_size=2,
        distributed_executor_backend="ray",
    )
    try:
        assert len(llm.ray_executor.actors) == 2
        with pytest.raises(RuntimeError, match="engines live in the Ray actors"):
            llm.llm_engine  # noqa: B018
        got = tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        assert got == tokens(expected.generate(PROMPTS, GREEDY, use_tqdm=False))
        sampled = tokens(llm.generate(PROMPTS, SAMPLED, use_tqdm=False))
        assert len(sampled) == 3 and all(len(t) == 8 for t in sampled)
        assert llm.get_tokenizer().decode(got[0])  # the driver holds the tokenizer
        with pytest.raises(ValueError, match="a prompt is a string"):
            llm.generate([42], GREEDY)  # refused here, the ranks live on
        assert tokens(llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)) == got[:1]
        ray.kill(llm.ray_executor.actors[1])  # a rank dies: the call fails, naming it
        with pytest.raises(RuntimeError, match="rank 1 failed while generating"):
            llm.generate(PROMPTS, GREEDY, use_tqdm=False)
        assert llm.ray_executor.actors == []  # and the other ranks were stopped
    finally:
        llm.ray_executor.shutdown()
        ray.shutdown()
