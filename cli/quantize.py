"""``solidx quantize``: write a Quark-format fp8 checkpoint (static scales from calibration)."""
from __future__ import annotations

import click

from solidx.cli.generate import read_prompts


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="bf16/fp16/fp32 checkpoint folder.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder to write (new or empty).")
@click.option("--calib-prompts", type=click.Path(exists=True, dir_okay=False),
              help='Calibration prompts: text lines or JSONL with "prompt" [default: a few '
                   "built-in ones].")
@click.option("--device", default="auto", show_default=True, help="Where calibration runs.")
@click.option("--max-model-len", type=int, default=None,
              help="Longest calibration prompt [default: the model's].")
def quantize(model: str, output: str, calib_prompts: str | None, device: str,
             max_model_len: int | None) -> None:
    """Quantize MODEL to fp8 (e4m3, per-tensor scales) in Quark's layout: weights and static
    activation and KV-cache scales measured on calibration prompts. Load the result with
    `solidx generate --model OUTPUT` (its config.json says fp8)."""
    from solidx.runtime.calibrate import quantize_checkpoint

    prompts = read_prompts(calib_prompts) if calib_prompts else None
    try:
        path = quantize_checkpoint(model, output, prompts, device=device,
                                   max_model_len=max_model_len)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote the fp8 checkpoint {path}")
