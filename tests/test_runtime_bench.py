"""``bench_latency`` and ``solidx bench latency`` on the tiny preset (figures are not asserted)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from solidx.cli.bench_latency import latency
from solidx.runtime.bench_latency import bench_latency


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
