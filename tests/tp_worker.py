"""One tensor-parallel rank for tests/test_tp_torchrun.py, started by torchrun (gloo on CPU).

``tp_worker.py parity OUT CHECKPOINT...``: tokens of each checkpoint and of the tiny-llama
preset, a shape capture into OUT/shapes.csv and ``solidx generate``'s output, as OUT/rankR.json.
``tp_worker.py fault MODE DEVICE``: rank 1 exits in the middle of a generate call, during a
collective (``collective``) or while rank 0 is blocked as in a NCCL wait (``hang``).
``tp_worker.py mismatch``: the ranks are given different max_model_len.
``tp_worker.py allreduce OUT``: the custom all-reduce (eager and replayed in a CUDA graph) and
NCCL beside the exact sum of every rank's input, as OUT/rankR.json (GPUs).
``tp_worker.py tokens OUT MODEL [NAME=VALUE...]``: greedy tokens with their top-20 logprobs,
sampled tokens and the KV blocks of an engine of WORLD_SIZE ranks (LLM keywords as NAME=VALUE),
as OUT/rankR.json;
with HOG_GIB=G rank 1 first takes G GiB of its GPU, so the ranks' free memory differs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import solidx.runtime.distributed
from solidx.runtime import LLM, SamplingParams

PROMPTS = ["The quick brown fox", "Greedy decoding picks", "A paged KV cache stores keys"]
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
SAMPLED = [
    SamplingParams(temperature=0.8, top_p=0.9, max_tokens=8, ignore_eos=True),
    SamplingParams(temperature=1.0, top_k=20, max_tokens=8, ignore_eos=True, seed=7),
    SamplingParams(temperature=1.2, max_tokens=8, ignore_eos=True),
]
LONG_PROMPTS = PROMPTS + [
    "Tensor parallelism splits the weights of each layer",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away,",
    "1, 2, 3, 4, 5,",
    "The mitochondria is the powerhouse",
    "SELECT name FROM users WHERE",
    "In 1969, the first humans",
    "import numpy as np",
    "Roses are red, violets are",
    "The GEMM kernel reads the weights",
    "Dear hiring manager, I am writing",
    "The sum of the angles of a triangle",
]
CPU = {"device": "cpu", "dtype": "float32"}  # gloo, and the same figures on any machine
CLI_ARGS = ["--model", "tiny-llama", "--load-format", "dummy", "--device", "cpu"]
CLI_ARGS += ["--dtype", "float32"]
CLI_ARGS += ["--max-model-len", "64", "--prompt", "Hello", "--max-tokens", "6", "--ignore-eos"]
RANK = int(os.environ.get("RANK", "0"))


def tokens(outputs: list[Any]) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in outputs]


def parity(out: Path, checkpoints: list[str]) -> None:
    from solidx.cli.main import main
    from solidx.runtime.bench.workload import capture_workload

    result: dict[str, Any] = {"greedy": {}, "sampled": {}}
    for model in checkpoints:
        llm = LLM(model, tensor_parallel_size=2, max_model_len=64, **CPU)
        result["greedy"][model] = tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        result["sampled"][model] = tokens(llm.generate(PROMPTS, SAMPLED, use_tqdm=False))
    llm = LLM("tiny-llama", load_format="dummy", tensor_parallel_size=2, max_model_len=64, **CPU)
    result["greedy"]["tiny-llama"] = tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    result["num_kv_blocks"] = llm.llm_engine.model_runner.num_kv_blocks
    capture_workload(
        "tiny-llama",
        [1, 3],
        input_len=5,
        output_len=3,
        path=str(out / "shapes.csv"),
        tensor_parallel_size=2,
        **CPU,
    )
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main(["generate", *CLI_ARGS, "--tensor-parallel-size", "2"], standalone_mode=False)
    result["cli"] = stdout.getvalue()
    (out / f"rank{RANK}.json").write_text(json.dumps(result))


def fault(mode: str, device: str) -> None:
    solidx.runtime.distributed.PEER_TIMEOUT_S = 3.0
    llm = LLM(
        "tiny-llama",
        load_format="dummy",
        tensor_parallel_size=2,
        max_model_len=64,
        max_num_seqs=8,
        kv_cache_memory_bytes=16 << 20,
        device=device,
    )
    engine = llm.llm_engine
    step, calls = engine._step, [0]  # the loop of generate()

    def failing_step() -> list[Any]:
        calls[0] += 1
        if calls[0] == 3 and RANK == 1:
            os._exit(0)  # no error of its own: the launcher sees nothing wrong
        if calls[0] == 3 and mode == "hang":
            time.sleep(600)  # as a NCCL wait for a dead peer does
        return step()

    engine._step = failing_step
    start = time.monotonic()
    try:
        llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    finally:
        print(f"rank {RANK} stopped after {time.monotonic() - start:.1f} s", file=sys.stderr)


def generate_tokens(out: Path, model: str, options: list[str]) -> None:
    kwargs: dict[str, Any] = {}
    for name, value in (option.split("=", 1) for option in options):
        kwargs[name] = int(value) if value.isdigit() else value
    hog = float(os.environ.get("HOG_GIB", "0"))
    held = (
        torch.empty(int(hog * 2**30), dtype=torch.uint8, device=f"cuda:{RANK}")
        if RANK == 1 and hog
        else None
    )
    world = int(os.environ["WORLD_SIZE"])
    llm = LLM(model, load_format="dummy", tensor_parallel_size=world, max_num_seqs=8, **kwargs)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=20)
    outputs = llm.generate(LONG_PROMPTS, params, use_tqdm=False)
    result = {
        "tokens": tokens(outputs),
        "logprobs": [out.outputs[0].logprobs for out in outputs],
        "sampled": tokens(llm.generate(PROMPTS, SAMPLED, use_tqdm=False)),
        "num_kv_blocks": llm.llm_engine.model_runner.num_kv_blocks,
    }
    (out / f"rank{RANK}.json").write_text(json.dumps(result))
    del held


def all_reduce_errors(out: Path) -> None:
    from solidx.runtime.custom_all_reduce import MAX_BYTES, CustomAllReduce

    device = torch.device("cuda", RANK)
    torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl", device_id=device)
    world = torch.distributed.get_world_size()
    custom = CustomAllReduce.create(torch.distributed.group.WORLD, device, torch.bfloat16)
    assert custom is not None, "no custom all-reduce on this machine"
    result: dict[str, Any] = {}
    for rows in (1, 3, 64, MAX_BYTES // 8192, MAX_BYTES // 8192 + 1):
        inputs = [
            torch.randn(rows, 4096, generator=torch.Generator().manual_seed(r))
            for r in range(world)
        ]
        exact = torch.stack(inputs).sum(0).to(device)
        x = inputs[RANK].to(device, torch.bfloat16)
        nccl = x.clone()
        torch.distributed.all_reduce(nccl)
        got = custom(x) if custom.eligible(x) else None
        graph_x = torch.zeros_like(x)
        graph = torch.cuda.CUDAGraph()
        if got is not None:
            custom(graph_x)  # warm-up outside the capture
            with torch.cuda.graph(graph):
                graph_out = custom(graph_x)
            graph_x.copy_(x)
            graph.replay()
            torch.cuda.synchronize()
        result[str(rows)] = {
            "eligible": got is not None,
            "input_unchanged": bool(torch.equal(x, inputs[RANK].to(device, torch.bfloat16))),
            "nccl": (nccl.float() - exact).abs().max().item(),
            "custom": None if got is None else (got.float() - exact).abs().max().item(),
            "graph": None if got is None else (graph_out.float() - exact).abs().max().item(),
            "scale": exact.abs().max().item(),
        }
    (out / f"rank{RANK}.json").write_text(json.dumps(result))


def mismatch() -> None:
    LLM(
        "tiny-llama",
        load_format="dummy",
        tensor_parallel_size=2,
        max_model_len=32 + 32 * RANK,
        device="cpu",
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    task, args = sys.argv[1], sys.argv[2:]
    if task == "parity":
        parity(Path(args[0]), args[1:])
    elif task == "fault":
        fault(args[0], args[1])
    elif task == "tokens":
        generate_tokens(Path(args[0]), args[1], args[2:])
    elif task == "allreduce":
        all_reduce_errors(Path(args[0]))
    else:
        mismatch()
