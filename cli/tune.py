"""``solidx tune``: sweep every solution of every backend for each shape."""
from __future__ import annotations

import click

from cli.pending import not_yet


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def tune(args: tuple[str, ...]) -> None:
    """Tune GEMM shapes (not implemented yet: arrives with the tuner issue)."""
    not_yet("solidx tune", "The tuner")
