"""Tensor parallelism under torchrun: two CPU ranks over gloo (tests/tp_worker.py) against the
same engine at tensor-parallel size 1 in this process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from solidx.cli.generate import generate
from solidx.gradlib.shapes_file import read_shapes
from solidx.runtime import LLM
from solidx.runtime.bench.workload import capture_workload
from tests.checkpoints import make_checkpoint
from tests.tp_worker import CLI_ARGS, CPU, GREEDY, PROMPTS

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("tp_worker.py")
COLUMN_PARALLEL = ("qkv_proj", "gate_up_proj", "lm_head")  # M is split over the ranks
ROW_PARALLEL = ("o_proj", "down_proj")  # K is split


def torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node=2 tp_worker.py ARGS`` with this checkout importable."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    command += ["--nproc-per-node=2", str(WORKER), *args]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    return subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=timeout, env=env
    )


def tokens(outputs) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in outputs]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[str]:
    # grouped-query attention (one KV head per rank), and Qwen2: q/k/v bias, one KV head
    # replicated on both ranks
    root = tmp_path_factory.mktemp("tp")
    return [str(make_checkpoint(root / kind, kind)) for kind in ("llama-gqa", "qwen2")]


@pytest.fixture(scope="module")
def ranks(checkpoints, tmp_path_factory) -> tuple[list[dict], Path]:
    out = tmp_path_factory.mktemp("tp-out")
    result = torchrun("parity", str(out), *checkpoints)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)], out


def test_tp2_greedy_tokens_equal_tp1(ranks, checkpoints):
    results, _ = ranks
    for model in checkpoints:
        llm = LLM(model, max_model_len=64, **CPU)
        expected = tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        assert results[0]["greedy"][model] == results[1]["greedy"][model] == expected
    llm = LLM("tiny-llama", load_format="dummy", max_model_len=64, **CPU)
    expected = tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    assert results[0]["greedy"]["tiny-llama"] == results[1]["greedy"]["tiny-llama"] == expected


def test_tp2_ranks_sample_the_same_tokens(ranks, checkpoints):
    results, _ = ranks
    for model in checkpoints:
        sampled = results[0]["sampled"][model]
        assert sampled == results[1]["sampled"][model]
        assert sampled != results[0]["greedy"][model]  # the draws are not greedy in disguise


def test_tp2_kv_cache_has_the_same_blocks_on_every_rank(ranks):
    results, _ = ranks
    assert results[0]["num_kv_blocks"] == results[1]["num_kv_blocks"] > 0


def test_tp2_capture_merges_both_ranks_shard_problems(ranks, tmp_path):
    _, out = ranks
    one = tmp_path / "tp1.csv"
    capture_workload("tiny-llama", [1, 3], input_len=5, output_len=3, path=str(one), **CPU)
    expected: Counter = Counter()
    layers: dict[tuple[int, int, int], set[str]] = {}
    for row in read_shapes(one, dtype=torch.float32, outdtype=torch.float32):
        (layer,) = row.layers
        m, n, k = row.problem.M, row.problem.N, row.problem.K
        shard = (m // 2, n, k) if layer.endswith(COLUMN_PARALLEL) else (m, n, k // 2)
        assert layer.endswith(COLUMN_PARALLEL + ROW_PARALLEL), layer
        expected[shard] += 2 * row.count  # both ranks issue every call of a TP 1 run
        layers.setdefault(shard, set()).add(layer)
    rows = read_shapes(out / "shapes.csv", dtype=torch.float32, outdtype=torch.float32)
    got = Counter({(r.problem.M, r.problem.N, r.problem.K): r.count for r in rows})
    assert len(rows) == len(got) == len(expected)
    assert got == expected
    assert {(r.problem.M, r.problem.N, r.problem.K): set(r.layers) for r in rows} == layers


def test_tp2_generate_command_prints_on_rank_0_only(ranks):
    results, _ = ranks
    assert results[1]["cli"] == ""
    tp1 = CliRunner().invoke(generate, CLI_ARGS, catch_exceptions=False).output
    outputs = [line for line in results[0]["cli"].splitlines() if line.startswith("Output:")]
    assert outputs == [line for line in tp1.splitlines() if line.startswith("Output:")]
    assert len(outputs) == 1


@pytest.mark.parametrize("mode", ["collective", "hang"])
def test_a_rank_exiting_ends_the_other_quickly(mode):
    start = time.monotonic()
    result = torchrun("fault", mode, "cpu", timeout=90)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    if mode == "collective":  # gloo sees the closed connection at once
        assert "all_reduce failed on rank 0: another rank has probably exited" in result.stderr
        (seconds,) = re.findall(r"rank 0 stopped after ([\d.]+) s", result.stderr)
        assert float(seconds) < 10
    else:  # a NCCL-like wait never returns: the watchdog ends the rank
        assert "rank 0: rank 1 stopped responding" in result.stderr
        assert elapsed < 60  # start-up plus a few seconds, far below any collective timeout


def test_ranks_with_different_settings_are_refused():
    result = torchrun("mismatch", timeout=90)
    assert result.returncode != 0
    assert "max_model_len: rank 0 = 32, rank 1 = 64" in result.stderr


def test_tp2_without_torchrun_shows_the_command():
    with pytest.raises(ValueError, match="torchrun --standalone --nnodes=1 --nproc-per-node=2"):
        LLM("tiny-llama", load_format="dummy", tensor_parallel_size=2)
