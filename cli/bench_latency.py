"""``solidx bench latency``: one batch through the engine (CUDA graphs unless --enforce-eager),
decode tokens/s, weight bandwidth and its share of the copy-bandwidth bound, optionally beside
Hugging Face transformers ``generate``. ``--batch-sizes 1,32,128`` runs one batch of each size in
one engine instead (JSON: a list of results). ``--profile [PATH]`` then profiles a few decode steps
and prints where one goes (GEMMs, attention, norms, communication, host gap), saving a picture
at PATH and its figures beside it as JSON."""

from __future__ import annotations

from typing import Any

import json

import click
import torch
from click.core import ParameterSource

from solidx.cli.engine_options import engine_options, given_config_kwargs, keywords, report
from solidx.cli.flag_errors import flag_error
from solidx.runtime.bench.cpu_guard import slow_on_cpu
from solidx.runtime.distributed import get_tp_rank
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
@click.option("--batch-sizes", default=None,
              help="Comma-separated batch sizes, timed in one engine (overrides --batch-size).")
@click.option(
    "--compare",
    type=click.Choice(["none", "hf"]),
    default="none",
    show_default=True,
    help="Also time Hugging Face transformers generate on the same model.",
)
@click.option("--output-json", type=click.Path(dir_okay=False), help="Write the figures here too.")
@click.option(
    "--profile",
    type=click.Path(dir_okay=False),
    is_flag=False,
    flag_value="step_profile.png",
    default=None,
    help="After the timed run, profile decode steps (torch.profiler) and print where one goes; "
    "save the picture at PATH [step_profile.png] and its figures as PATH with suffix .json.",
)
@engine_options
def latency(
    model: str,
    input_len: int,
    output_len: int,
    batch_size: int,
    batch_sizes: str | None,
    compare: str,
    output_json: str | None,
    profile: str | None,
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
    if batch_sizes is not None:
        if profile is not None:
            raise click.BadParameter("--profile needs a single --batch-size",
                                     param_hint="--profile")
        _sweep(model, _sizes(batch_sizes), input_len, output_len, enforce_eager, seed, compare,
               output_json, kwargs)
        return
    try:
        result = bench_latency(
            model,
            input_len,
            output_len,
            batch_size,
            enforce_eager=enforce_eager,
            compare_hf=compare == "hf",
            seed=seed,
            profile=profile is not None,
            **kwargs,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise flag_error(exc, keywords() | {"output_len"}) from None
    report(result, output_json)
    if result.step_profile is not None and get_tp_rank() == 0:
        picture, figures = result.step_profile.save(profile)
        click.echo(f"  step profile: {picture} and {figures}")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"takes positive integers like 1,32,128, not {text!r}",
                                 param_hint="--batch-sizes")
    return sizes


def _sweep(model: str, sizes: list[int], input_len: int, output_len: int, enforce_eager: bool,
           seed: int, compare: str, output_json: str | None, kwargs: dict[str, Any]) -> None:
    from solidx.runtime.bench.latency import bench_latency_sweep

    if compare != "none":
        raise click.BadParameter("--compare needs a single --batch-size", param_hint="--compare")
    try:
        results = bench_latency_sweep(model, sizes, input_len, output_len,
                                      enforce_eager=enforce_eager, seed=seed, **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if get_tp_rank() != 0:
        return
    for result in results:
        click.echo(result.summary())
    if output_json:
        with open(output_json, "w") as f:
            json.dump([result.as_dict() for result in results], f, indent=2)
