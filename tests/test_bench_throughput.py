"""``bench_throughput`` and ``solidx bench throughput`` on the tiny preset, and the figures bench
latency adds (figures are checked for consistency, never for speed)."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
import torch
from click.testing import CliRunner

from solidx.cli.engine_options import given_config_kwargs
from solidx.cli.bench_throughput import throughput
from solidx.cli.engine_options import engine_options
from solidx.runtime.bench.hf import left_pad
from solidx.runtime.bench.latency import bench_latency
from solidx.runtime.bench.throughput import (
    bench_throughput,
    draw_lengths,
    given_requests,
    random_requests,
)
from solidx.runtime.tokenizer import ByteTokenizer


def test_random_requests_draw_lengths_in_range_reproducibly():
    requests = random_requests(512, 50, (3, 9), (2, 4), seed=1)
    assert len(requests) == 50
    assert {len(r.prompt_token_ids) for r in requests} == set(range(3, 10))
    assert {r.output_len for r in requests} == {2, 3, 4}
    assert all(0 <= t < 512 for r in requests for t in r.prompt_token_ids)
    assert random_requests(512, 50, (3, 9), (2, 4), seed=1) == requests
    assert random_requests(512, 50, (3, 9), (2, 4), seed=2) != requests
    fixed = random_requests(512, 4, 7, 5)
    assert [(len(r.prompt_token_ids), r.output_len) for r in fixed] == [(7, 5)] * 4


def test_lengths_and_prompt_counts_are_checked():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="low <= high"):
        draw_lengths((5, 4), 3, generator)
    with pytest.raises(ValueError, match="low <= high"):
        draw_lengths(0, 3, generator)
    with pytest.raises(ValueError, match="num_prompts"):
        random_requests(512, 0, 4, 4)
    with pytest.raises(ValueError, match="no prompts"):
        given_requests([], ByteTokenizer(512, 1, 2), 4)


def test_given_requests_tokenize_text_and_keep_ids():
    requests = given_requests(["hi", {"prompt_token_ids": [9, 8, 7]}], ByteTokenizer(512, 1, 2), 6)
    assert [r.prompt_token_ids for r in requests] == [[1, 3 + ord("h"), 3 + ord("i")], [9, 8, 7]]
    assert [r.output_len for r in requests] == [6, 6]


def test_left_pad_aligns_prompts_right():
    ids, mask = left_pad([[5, 6, 7], [8]], torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_bench_throughput_end_to_end_beside_transformers():
    result = bench_throughput(
        "tiny-llama",
        num_prompts=6,
        input_len=(4, 12),
        output_len=(2, 6),
        ignore_eos=True,
        compare_hf=True,
        hf_batch_sizes=(2, 4, 64),
        dtype="float32",
    )
    requests = random_requests(512, 6, (4, 12), (2, 6))
    assert result.num_prompts == 6 and not result.cuda_graphs and result.device == "cpu"
    assert result.prompt_tokens == sum(len(r.prompt_token_ids) for r in requests)
    assert result.output_tokens == sum(r.output_len for r in requests)  # EOS ignored
    assert result.output_tokens_per_s == pytest.approx(result.output_tokens / result.elapsed_s)
    assert result.total_tokens_per_s > result.output_tokens_per_s > 0
    assert result.attention_kernels["prefill_reference"] >= 2  # 2 layers
    assert result.attention_kernels["decode_reference"] == 2 * (
        max(r.output_len for r in requests) - 1
    )
    assert [run.batch_size for run in result.hf_runs] == [2, 4, 6]
    for run, count in zip(result.hf_runs, (2, 4, 6)):
        assert run.new_tokens == max(r.output_len for r in requests[:count])
        assert run.output_tokens == sum(r.output_len for r in requests[:count])
        assert run.seconds > 0
    best = max(result.hf_runs, key=lambda run: run.tokens_per_s)
    assert result.hf_best is best
    assert result.speedup_vs_hf == pytest.approx(result.output_tokens_per_s / best.tokens_per_s)
    summary = result.summary()
    assert "6 requests" in summary and f"best transformers batch {best.batch_size}" in summary


def test_transformers_new_tokens_are_capped():
    result = bench_throughput(
        "tiny-llama",
        num_prompts=2,
        input_len=4,
        output_len=6,
        ignore_eos=True,
        compare_hf=True,
        hf_batch_sizes=(2,),
        hf_max_new_tokens=3,
        dtype="float32",
    )
    (run,) = result.hf_runs
    assert (run.batch_size, run.new_tokens, run.output_tokens) == (2, 3, 6)


def test_throughput_command_writes_json(tmp_path):
    out = tmp_path / "throughput.json"
    args = ["--model", "tiny-llama", "--num-prompts", "4", "--input-len-range", "3,6"]
    args += ["--output-len", "3", "--ignore-eos", "--dtype", "float32", "--output-json", str(out)]
    result = CliRunner().invoke(throughput, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "tiny-llama float32 on cpu: 4 requests" in result.output
    figures = json.loads(out.read_text())
    assert figures["output_tokens"] == 12 and figures["hf_runs"] == []
    assert figures["speedup_vs_hf"] is None and figures["output_tokens_per_s"] > 0


def test_throughput_command_runs_a_prompts_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\nsecond prompt\n")
    args = ["--model", "tiny-llama", "--prompts-file", str(prompts), "--output-len", "2"]
    result = CliRunner().invoke(throughput, args + ["--ignore-eos", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert "2 requests, 26 prompt and 4 output tokens" in result.output  # BOS + bytes


def test_throughput_command_refuses_a_bad_range():
    result = CliRunner().invoke(throughput, ["--model", "tiny-llama", "--input-len-range", "9,3"])
    assert result.exit_code == 2 and "LOW,HIGH" in result.output


def test_only_given_engine_options_are_passed():
    @click.command()
    @engine_options
    def show(**options: Any) -> None:
        click.echo(json.dumps(given_config_kwargs(options), sort_keys=True))

    result = CliRunner().invoke(show, ["--max-num-seqs", "4", "--enforce-eager"])
    assert json.loads(result.output) == {"enforce_eager": True, "max_num_seqs": 4}


def test_bench_latency_reports_the_weight_bandwidth_bound():
    result = bench_latency("tiny-llama", input_len=4, output_len=4, batch_size=1, dtype="float32")
    assert not result.cuda_graphs
    assert result.copy_gb_per_s > 0
    assert result.bound_steps_per_s == pytest.approx(
        result.copy_gb_per_s * 1e9 / result.weight_bytes
    )
    assert result.percent_of_bound == pytest.approx(
        100 * result.decode_steps_per_s / result.bound_steps_per_s
    )
    figures = result.as_dict()
    assert figures["percent_of_bound"] == result.percent_of_bound
    assert "weight-bandwidth bound" in result.summary() and "CUDA graphs off" in result.summary()
