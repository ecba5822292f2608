"""Tensor parallelism on GPUs over NCCL (run on a machine with 2 or 4 GPUs:
``python -m pytest -m gpu tests/test_tp_gpu.py``): llama-3-8b with dummy weights at TP 2 and
TP 4 against TP 1, bf16 and fp8; the KV cache sized by the rank with the least free memory; a
dead rank ending its peer out of a NCCL wait.

Greedy tokens of different TP sizes agree exactly until a step whose top tokens are within
rounding of each other (the partial sums are rounded to bf16 and added in another order; fp8 also
scales each shard and each rank's slice of the inputs by its own amax, about 5% noise per GEMM):
there the runs may pick either, and the comparison of that prompt ends. Dummy weights make the
logits of 128k tokens nearly normal with unit spread: the top 20 lie within ~0.75 nats, so ties are
frequent, and fp8 (whose own noise against bf16 is ~0.1 nats on average, ~0.4 at most, H200)
ends most prompts within a few steps, at TP 1 against bf16 as at TP 2 or 4 against TP 1. A wrong
shard or scale picks tokens outside the reference's top 20 (infinitely far apart here).
Every rank of one run gives exactly the same tokens.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("tp_worker.py")
MODEL = "llama-3-8b"
NEAR_TIE = {"bfloat16": 0.25, "fp8": 1.0}  # nats: rounding differences between TP sizes (doc)
MIN_COMPARED = {"bfloat16": 1 / 4, "fp8": 1 / 10}  # share of the steps before the first tie

pytestmark = pytest.mark.gpu


def torchrun(nproc: int, *args: str, env: dict[str, str] | None = None, timeout: float = 900):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    command += [f"--nproc-per-node={nproc}", str(WORKER), *args]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    full_env = dict(os.environ, PYTHONPATH=path, **(env or {}))
    return subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def need_gpus(n: int) -> None:
    if torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} GPUs, this machine has {torch.cuda.device_count()}")


def run_tokens(out: Path, nproc: int, kind: str, hog_gib: float = 0) -> list[dict]:
    """Each rank's results of MODEL at TP ``nproc`` in ``kind`` (bfloat16 or fp8)."""
    out.mkdir(exist_ok=True)
    options = ["dtype=bfloat16", "max_model_len=512"]
    options += ["quantization=fp8"] if kind == "fp8" else []
    result = torchrun(nproc, "tokens", str(out), MODEL, *options, env={"HOG_GIB": str(hog_gib)})
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    for rank in ranks[1:]:  # every rank draws the same samples too
        assert rank["tokens"] == ranks[0]["tokens"] and rank["sampled"] == ranks[0]["sampled"]
    return ranks


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Callable[[int, str], list[dict]]:
    """``runs(size, kind)``: each rank's results at that TP size, run once per module."""
    done: dict[tuple[int, str], list[dict]] = {}

    def run(size: int, kind: str) -> list[dict]:
        if (size, kind) not in done:
            done[size, kind] = run_tokens(tmp_path_factory.mktemp(f"{kind}-tp{size}"), size, kind)
        return done[size, kind]

    return run


def assert_same_greedy(reference: dict, other: dict, tie: float, min_compared: float) -> None:
    """``other``'s tokens equal ``reference``'s up to the first step where they differ, which
    must be a near-tie (the two tokens within ``tie`` nats in either run's top 20); the chosen
    tokens' logprobs agree within ``tie`` before it; a share ``min_compared`` of the steps at
    least get compared."""
    compared = total = 0
    worst = 0.0  # the largest logprob difference of a chosen token, for the messages
    for i, (ref, got) in enumerate(zip(reference["tokens"], other["tokens"])):
        total += len(ref)
        for step, (a, b) in enumerate(zip(ref, got)):
            ref_lp, got_lp = reference["logprobs"][i][step], other["logprobs"][i][step]
            if a != b:
                gap = min(
                    ref_lp[str(a)] - ref_lp.get(str(b), -math.inf),
                    got_lp[str(b)] - got_lp.get(str(a), -math.inf),
                )
                assert gap < tie, (
                    f"prompt {i} step {step}: {b} instead of {a} ({gap:.3f} nats apart; chosen "
                    f"tokens' logprobs differed by up to {worst:.3f} before)"
                )
                break
            worst = max(worst, abs(ref_lp[str(a)] - got_lp[str(a)]))
            assert worst < tie, f"prompt {i} step {step}: logprob of {a} differs by {worst:.3f}"
            compared += 1
    assert compared >= total * min_compared, f"only {compared} of {total} steps compared"


@pytest.mark.parametrize("kind", list(NEAR_TIE))
@pytest.mark.parametrize("size", [2, 4])
def test_tp_gives_the_greedy_tokens_of_tp1(runs, size, kind):
    need_gpus(size)
    assert_same_greedy(runs(1, kind)[0], runs(size, kind)[0], NEAR_TIE[kind], MIN_COMPARED[kind])


@pytest.mark.parametrize("size", [2, 4])
def test_custom_all_reduce_sums_like_nccl_eagerly_and_in_a_graph(tmp_path, size):
    """bf16 sums within rounding of the exact fp32 sum; past MAX_BYTES the tensor goes to NCCL."""
    need_gpus(size)
    result = torchrun(size, "allreduce", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in range(size):
        rows = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert [r["eligible"] for r in rows.values()] == [True, True, True, True, False]
        for r in rows.values():
            bound = 2 * size * r["scale"] / 128  # a few bf16 roundings of the partial sums
            assert r["input_unchanged"] and r["nccl"] < bound
            if r["eligible"]:
                assert r["custom"] < bound and r["graph"] < bound, r


def test_kv_cache_is_sized_by_the_rank_with_least_free_memory(runs, tmp_path):
    need_gpus(2)
    plain = runs(2, "bfloat16")
    hogged = run_tokens(tmp_path / "hog", 2, "bfloat16", hog_gib=8)  # 8 GiB less on rank 1
    assert hogged[0]["num_kv_blocks"] == hogged[1]["num_kv_blocks"]
    assert hogged[0]["num_kv_blocks"] < plain[0]["num_kv_blocks"] == plain[1]["num_kv_blocks"]


def test_a_dead_rank_ends_its_peer_out_of_a_nccl_wait():
    need_gpus(2)
    start = time.monotonic()
    result = torchrun(2, "fault", "collective", "cuda", timeout=300)
    assert result.returncode != 0
    assert "rank 0: rank 1 stopped responding" in result.stderr, result.stderr[-6000:]
    assert time.monotonic() - start < 120  # start-up plus seconds, not the collective timeout
