"""``solidx bench throughput``: many requests through the engine at once, tokens/s, optionally
beside Hugging Face transformers ``generate`` at its best batch size."""

from __future__ import annotations

from typing import Any

import click

from solidx.cli.capture import int_list
from solidx.cli.engine_options import engine_options, given_config_kwargs, report
from solidx.cli.generate import read_prompts
from solidx.shape_capture.presets import PRESETS


def length_range(value: str | None) -> tuple[int, int] | None:
    """``'100,1024'`` -> ``(100, 1024)``."""
    if value is None:
        return None
    numbers = int_list(value)
    if len(numbers) != 2 or numbers[0] > numbers[1]:
        raise click.BadParameter(f"{value!r} is not LOW,HIGH with 1 <= LOW <= HIGH")
    return numbers[0], numbers[1]


@click.command("throughput")
@click.option(
    "--model",
    default="llama-3-8b",
    show_default=True,
    help=f"Preset ({', '.join(PRESETS)}) or folder.",
)
@click.option("--num-prompts", default=256, show_default=True, help="Random prompts to run.")
@click.option("--input-len", default=128, show_default=True, help="Tokens per random prompt.")
@click.option("--output-len", default=128, show_default=True, help="Tokens generated per prompt.")
@click.option("--input-len-range", help="LOW,HIGH: random prompt lengths uniform in [LOW, HIGH].")
@click.option("--output-len-range", help="LOW,HIGH: output lengths uniform in [LOW, HIGH].")
@click.option(
    "--prompts-file",
    type=click.Path(exists=True, dir_okay=False),
    help='Run these prompts (text lines or JSONL with "prompt") instead of random ones.',
)
@click.option("--ignore-eos", is_flag=True, help="Generate every request to its output length.")
@click.option(
    "--compare",
    type=click.Choice(["none", "hf"]),
    default="none",
    show_default=True,
    help="Also run Hugging Face transformers generate on the same model.",
)
@click.option(
    "--hf-batch-sizes",
    default="8,32,64",
    show_default=True,
    help="transformers batch sizes to try (one batch of the first B requests each).",
)
@click.option(
    "--hf-max-new-tokens",
    default=256,
    show_default=True,
    help="Cap of transformers' new tokens per batch (bounds the comparison's time).",
)
@click.option("--output-json", type=click.Path(dir_okay=False), help="Write the figures here too.")
@engine_options
def throughput(
    model: str,
    num_prompts: int,
    input_len: int,
    output_len: int,
    input_len_range: str | None,
    output_len_range: str | None,
    prompts_file: str | None,
    ignore_eos: bool,
    compare: str,
    hf_batch_sizes: str,
    hf_max_new_tokens: int,
    output_json: str | None,
    **options: Any,
) -> None:
    """Time a workload of requests through the engine (greedy; presets use dummy weights)."""
    from solidx.runtime.bench.throughput import bench_throughput

    kwargs = given_config_kwargs(options)
    enforce_eager, seed = kwargs.pop("enforce_eager", False), kwargs.pop("seed", 0)
    try:
        result = bench_throughput(
            model,
            num_prompts=num_prompts,
            input_len=length_range(input_len_range) or input_len,
            output_len=length_range(output_len_range) or output_len,
            prompts=read_prompts(prompts_file) if prompts_file else None,
            ignore_eos=ignore_eos,
            enforce_eager=enforce_eager,
            compare_hf=compare == "hf",
            hf_batch_sizes=tuple(int_list(hf_batch_sizes)),
            hf_max_new_tokens=hf_max_new_tokens,
            seed=seed,
            **kwargs,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    report(result, output_json)
