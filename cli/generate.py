"""``solidx generate``: run the engine on prompts; report tokens/s and time to first token."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import click

from solidx.cli.engine_options import config_kwargs, engine_options, keywords
from solidx.cli.flag_errors import flag_error, name_flags
from solidx.shape_capture.presets import PRESETS

EXAMPLE_PROMPTS = ("Hello, my name is", "The capital of France is", "The future of AI is")
SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "max_tokens", "ignore_eos", "stop")


def read_prompts(path: str) -> list[Any]:
    """Prompts from a file: one per line as text, or JSONL objects with "prompt" (or
    "prompt_token_ids") when the file ends in .jsonl or its first line starts with ``{``."""
    lines = Path(path).read_text().splitlines()
    jsonl = path.endswith(".jsonl") or next(
        (ln.lstrip() for ln in lines if ln.strip()), ""
    ).startswith("{")
    if not jsonl:
        return [line for line in lines if line.strip()]
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{path}:{number}: invalid JSON: {exc.msg}") from None
        if isinstance(record, dict) and isinstance(record.get("prompt"), str):
            prompts.append(record["prompt"])
        elif isinstance(record, dict) and isinstance(record.get("prompt_token_ids"), list):
            prompts.append({"prompt_token_ids": record["prompt_token_ids"]})
        else:
            raise click.ClickException(
                f'{path}:{number}: expected an object with "prompt" or "prompt_token_ids"'
            )
    return prompts


@click.command()
@click.option("--model", required=True, help=f"Checkpoint folder or preset ({', '.join(PRESETS)}).")
@click.option("--prompt", "prompts", multiple=True, help="A prompt (repeatable).")
@click.option(
    "--prompts-file",
    type=click.Path(exists=True, dir_okay=False),
    help='Text lines or JSONL with "prompt".',
)
@click.option("--temperature", default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--top-k", default=-1, show_default=True, help="-1 is off.")
@click.option("--max-tokens", default=64, show_default=True, help="Most new tokens per prompt.")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past EOS tokens.")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--min-p", default=0.0, show_default=True, help="0 is off.")
@click.option("--min-tokens", default=0, show_default=True, help="No EOS or stop before these.")
@click.option("--repetition-penalty", default=1.0, show_default=True, help="1 is off.")
@click.option("--presence-penalty", default=0.0, show_default=True, help="In [-2, 2].")
@click.option("--frequency-penalty", default=0.0, show_default=True, help="In [-2, 2].")
@engine_options
def generate(
    model: str,
    prompts: tuple[str, ...],
    prompts_file: str | None,
    temperature: float,
    top_p: float,
    top_k: int,
    max_tokens: int,
    ignore_eos: bool,
    stop: tuple[str, ...],
    min_p: float,
    min_tokens: int,
    repetition_penalty: float,
    presence_penalty: float,
    frequency_penalty: float,
    **options: Any,
) -> None:
    """Generate text for each prompt with MODEL and print it, then the throughput and the time to
    first token. Without prompts, a few examples run. With --tensor-parallel-size N, run it under
    torchrun --nproc-per-node=N (rank 0 prints), or add --worker-use-ray. Exits 1 when any
    request was refused (e.g. a prompt longer than --max-model-len)."""
    from solidx.runtime import LLM, SamplingParams
    from solidx.runtime.distributed import get_tp_rank

    inputs: list[Any] = list(prompts) + (read_prompts(prompts_file) if prompts_file else [])
    inputs = inputs or list(EXAMPLE_PROMPTS)
    try:
        params = SamplingParams(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            ignore_eos=ignore_eos,
            stop=list(stop) or None,
            min_p=min_p,
            min_tokens=min_tokens,
            repetition_penalty=repetition_penalty,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
        )
        llm = LLM(model, **config_kwargs(options))
    except (ValueError, FileNotFoundError) as exc:
        raise flag_error(exc, {*keywords(), *SAMPLING_FLAGS}) from None
    start = time.perf_counter()
    outputs = llm.generate(inputs, params)
    elapsed = time.perf_counter() - start
    refused = sum(out.error is not None for out in outputs)
    if get_tp_rank() == 0:  # under torchrun every rank has the outputs; rank 0 prints them
        _print(outputs, elapsed)
    if refused:
        raise click.ClickException(f"{refused} of {len(outputs)} requests were refused")


def _print(outputs: list[Any], elapsed: float) -> None:
    """Each prompt and its completion (or why it was refused), then tokens/s and TTFT."""
    for out in outputs:
        prompt = (
            out.prompt if out.prompt is not None else f"<{len(out.prompt_token_ids)} token ids>"
        )
        completion = out.outputs[0]
        click.echo(f"Prompt: {prompt!r}")
        if out.error:
            click.echo(f"Error: {name_flags(out.error, {*keywords(), *SAMPLING_FLAGS})}\n")
        else:
            click.echo(
                f"Output: {completion.text!r} "
                f"({len(completion.token_ids)} tokens, {completion.finish_reason})\n"
            )
    done = [out for out in outputs if out.error is None]
    generated = sum(len(out.outputs[0].token_ids) for out in done)
    ttfts = [
        out.metrics.first_token_time - out.metrics.arrival_time
        for out in done
        if out.metrics.first_token_time is not None
    ]
    click.echo(
        f"{len(done)}/{len(outputs)} requests, {generated} tokens generated in {elapsed:.2f} s: "
        f"{generated / elapsed:.1f} tokens/s"
    )
    if ttfts:
        click.echo(
            f"time to first token: mean {1e3 * statistics.mean(ttfts):.1f} ms, "
            f"max {1e3 * max(ttfts):.1f} ms"
        )
