"""``solidx bench latency``: one batch through the engine (CUDA graphs unless --enforce-eager),
decode tokens/s, weight bandwidth and its share of the copy-bandwidth bound, optionally beside
Hugging Face transformers ``generate``."""

from __future__ import annotations

from typing import Any

import click
import torch
from click.core import ParameterSource

from solidx.cli.engine_options import engine_options, given_config_kwargs, keywords, report
from solidx.cli.flag_errors import flag_error
from solidx.runtime.bench.cpu_guard import slow_on_cpu
from solidx.shape_capture.presets import PRESETS


@click.command("latency")
@click.option(
    "--model",
    default="llama-3-8b",
    show_default=True,
    help=f"Preset ({', '.join(PRESETS)}) or folder.",
)
@click.option("--input-len", default=128, show_default=True, help="Prompt tokens per sequence.")
@click.option("--output-len", default=256, show_default=True, help="Generated tokens per sequence.")
@click.option("--batch-size", default=1, show_default=True, help="Sequences in the batch.")
@click.option(
    "--compare",
    type=click.Choice(["none", "hf"]),
    default="none",
    show_default=True,
    help="Also time Hugging Face transformers generate on the same model.",
)
@click.option("--output-json", type=click.Path(dir_okay=False), help="Write the figures here too.")
@engine_options
def latency(
    model: str,
    input_len: int,
    output_len: int,
    batch_size: int,
    compare: str,
    output_json: str | None,
    **options: Any,
) -> None:
    """Time one batch of random prompts (greedy, EOS ignored); presets use dummy weights. On a
    CPU, the default model (Llama-3-8B, minutes to build) is refused: name --model."""
    from solidx.runtime.bench.latency import bench_latency

    ctx = click.get_current_context()
    on_cpu = options["device"] == "cpu" or not torch.cuda.is_available()
    default_model = ctx.get_parameter_source("model") is ParameterSource.DEFAULT
    if on_cpu and default_model and slow_on_cpu(model):
        raise click.UsageError(
            f"the default --model {model} is a GPU benchmark: on this CPU building it takes "
            "minutes; pass --model tiny-llama (or --model llama-3-8b to run it anyway)"
        )
    kwargs = given_config_kwargs(options)
    enforce_eager, seed = kwargs.pop("enforce_eager", False), kwargs.pop("seed", 0)
    try:
        result = bench_latency(
            model,
            input_len,
            output_len,
            batch_size,
            enforce_eager=enforce_eager,
            compare_hf=compare == "hf",
            seed=seed,
            **kwargs,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise flag_error(exc, keywords()) from None
    report(result, output_json)
