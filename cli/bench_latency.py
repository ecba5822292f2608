"""``solidx bench latency``: one batch through the engine (CUDA graphs unless --enforce-eager),
decode tokens/s, weight bandwidth and its share of the copy-bandwidth bound, optionally beside
Hugging Face transformers ``generate``."""

from __future__ import annotations

from typing import Any

import click

from solidx.cli.engine_options import engine_options, given_config_kwargs, report
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
    """Time one batch of random prompts (greedy, EOS ignored); presets use dummy weights."""
    from solidx.runtime.bench.latency import bench_latency

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
        raise click.ClickException(str(exc)) from None
    report(result, output_json)
