"""``solidx csv plot``: a tuned file's speedup over default, one heat map per device."""
from __future__ import annotations

from pathlib import Path

import click

from solidx.gradlib.plot import plot_speedup
from solidx.gradlib.schema import CsvError
from solidx.gradlib.tuned_file import read_tuned


@click.command("plot")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default="speedup.png", show_default=True,
              type=click.Path(dir_okay=False),
              help="Image to write (the suffix picks the format).")
def plot(file: str, output: str) -> None:
    """Plot the speedup over default of every problem of the tuned FILE."""
    try:
        rows = read_tuned(file)
    except CsvError as exc:
        raise click.ClickException(str(exc)) from None
    if not rows:
        raise click.ClickException(f"{file} has no rows to plot")
    plot_speedup(rows, output, Path(file).name)
    click.echo(f"wrote {output} ({len(rows)} problems)")
