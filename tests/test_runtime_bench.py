"""``bench_latency`` and ``solidx bench latency`` on the tiny preset, and ``bench attention``'s
contenders on the CPU (figures are not asserted)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from solidx.cli.bench_latency import latency
from solidx.runtime.bench.attention import BenchConfig, run_benchmark
from solidx.runtime.bench.latency import bench_latency


def test_bench_latency_reports_engine_and_transformers():
    result = bench_latency(
        "tiny-llama", input_len=8, output_len=6, batch_size=3, compare_hf=True, dtype="float32"
    )
    assert (result.batch_size, result.input_len, result.output_len) == (3, 8, 6)
    assert result.device == "cpu" and result.dtype == "float32"
    assert result.tokens_per_s > 0 and result.decode_steps_per_s > 0 and result.hf_tokens_per_s > 0
    # per layer qkv (64 -> 128), o (64 -> 64), gate_up (64 -> 256), down (128 -> 64), 2 norms
    layer = 64 * 128 + 64 * 64 + 64 * 256 + 128 * 64 + 2 * 64
    assert result.weight_bytes == 4 * (2 * layer + 64 + 512 * 64)  # + final norm and lm head
    assert result.attention_kernels["decode_reference"] == 2 * 5  # 2 layers, 5 decode steps
    assert "transformers generate" in result.summary()


def test_latency_command_writes_json(tmp_path):
    out = tmp_path / "latency.json"
    result = CliRunner().invoke(
        latency,
        [
            "--model",
            "tiny-llama",
            "--input-len",
            "4",
            "--output-len",
            "3",
            "--batch-size",
            "2",
            "--dtype",
            "float32",
            "--output-json",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "tiny-llama float32 on cpu: batch 2, 4 in / 3 out" in result.output
    figures = json.loads(out.read_text())
    assert figures["batch_size"] == 2 and figures["hf_tokens_per_s"] is None


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_bench_attention_runs_every_contender_on_cpu() -> None:
    """The benchmark's plumbing: every contender runs and matches the reference (times
    unchecked)."""
    cfg = BenchConfig(batch_size=2, context_lens=(40,), prefill_lens=(33,), num_heads=4,
                      num_kv_heads=2, head_size=128, dtype=torch.float16)
    result = run_benchmark(cfg, torch.device("cpu"))
    kernels = {row.kernel for row in result.rows}
    assert kernels == {"sdpa_flash", "triton_prefill", "paged_custom", "paged_v2",
                       "sdpa_flash_dense", "flex_paged"}
    for row in result.rows:
        assert row.ms is not None and row.max_rel_err < 1e-2, row


def test_bench_attention_in_a_graph_at_max_model_len_on_cpu() -> None:
    """``--max-model-len``: custom and v2 called with max_context_len 131072 over 40-token
    contexts, checked against the reference; a bound below a context is a usage error."""
    cfg = BenchConfig(batch_size=2, context_lens=(40,), prefill_lens=(), num_heads=4,
                      num_kv_heads=2, head_size=128, dtype=torch.float16, max_model_len=131072)
    result = run_benchmark(cfg, torch.device("cpu"))
    assert [row.kernel for row in result.rows] == ["paged_custom", "paged_v2"]
    for row in result.rows:
        assert "max_model_len 131072" in row.note and row.ms is not None, row
        assert row.max_rel_err < 1e-2, row
    with pytest.raises(ValueError, match="--max-model-len 32 is below"):
        BenchConfig(context_lens=(40,), max_model_len=32)


def test_nothing_below_the_bench_floor_imports_it() -> None:
    """The benchmarks sit on their own floor: no module of the runtime outside
    ``runtime/bench/`` (engine core, layers, attention kernels, models, the ``LLM``) imports
    ``solidx.runtime.bench``."""
    runtime = Path(__file__).resolve().parents[1] / "runtime"
    for path in runtime.rglob("*.py"):
        if path.relative_to(runtime).parts[0] == "bench":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == "solidx.runtime":
                names = [f"solidx.runtime.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.split(".")[:3] == ["solidx", "runtime", "bench"]]
            assert not bad, f"{path.relative_to(runtime)}:{node.lineno} imports {bad[0]}"
