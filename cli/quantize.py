"""``solidx quantize``: write a Quark-format fp8 checkpoint."""
from __future__ import annotations

import click

from cli.pending import not_yet


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def quantize(args: tuple[str, ...]) -> None:
    """Quantize a checkpoint to fp8 (not implemented yet: arrives with the fp8 issue)."""
    not_yet("solidx quantize", "fp8 end to end")
