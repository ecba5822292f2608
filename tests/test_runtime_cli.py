"""``solidx generate`` end to end on tiny models (CPU)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from solidx.cli.generate import generate
from tests.checkpoints import make_checkpoint


def run(*args: str):
    return CliRunner().invoke(generate, list(args), catch_exceptions=False)


def test_preset_with_dummy_weights_prints_outputs_and_speed():
    result = run(
        "--model",
        "tiny-llama",
        "--load-format",
        "dummy",
        "--dtype",
        "float32",
        "--prompt",
        "Hello",
        "--prompt",
        "World",
        "--max-tokens",
        "4",
        "--ignore-eos",
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("Output: ") == 2 and "(4 tokens, length)" in result.output
    assert "2/2 requests, 8 tokens generated" in result.output
    assert "tokens/s" in result.output and "time to first token" in result.output


def test_checkpoint_with_prompts_file_and_engine_flags(tmp_path):
    folder = make_checkpoint(tmp_path / "ckpt", "qwen2")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "The quick brown fox"})
        + "\n\n"
        + json.dumps({"prompt_token_ids": [5, 6, 7]})
        + "\n"
    )
    result = run(
        "--model",
        str(folder),
        "--prompts-file",
        str(prompts),
        "--max-tokens",
        "3",
        "--ignore-eos",
        "--enable-prefix-caching",
        "--max-num-batched-tokens",
        "4",
        "--max-num-seqs",
        "2",
        "--block-size",
        "4",
        "--max-model-len",
        "64",
    )
    assert result.exit_code == 0, result.output
    assert "Prompt: 'The quick brown fox'" in result.output and "<3 token ids>" in result.output
    assert "2/2 requests, 6 tokens generated" in result.output


def test_text_prompts_file_and_refused_prompt(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("short\n" + "x" * 600 + "\n")
    result = run(
        "--model",
        "tiny-llama",
        "--load-format",
        "dummy",
        "--prompts-file",
        str(prompts),
        "--max-tokens",
        "2",
    )
    assert result.exit_code == 1, result.output  # a refused request fails the command
    assert "Error: the prompt has 601 tokens, more than --max-model-len 512" in result.output
    assert "1/2 requests" in result.output and "1 of 2 requests were refused" in result.output


def test_bad_input_is_a_clean_error(tmp_path):
    result = run("--model", "tiny-llama")
    assert result.exit_code != 0 and "--load-format 'dummy'" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": 1}\n')
    result = run("--model", "tiny-llama", "--load-format", "dummy", "--prompts-file", str(bad))
    assert result.exit_code != 0 and "bad.jsonl:2: expected an object" in result.output
