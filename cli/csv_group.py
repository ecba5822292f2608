"""``solidx csv``: show, validate, merge, diff and plot shapes and tuned files (each command
imported when it runs)."""
from __future__ import annotations

import click

from solidx.cli.lazy_group import LazyGroup

CSV_COMMANDS = {
    "show": ("solidx.cli.csv_cmd:show", "Print FILE (shapes or tuned) as a readable table."),
    "validate": ("solidx.cli.csv_cmd:validate_cmd",
                 "Check FILES; exit 0 when all are good, 1 with every error listed."),
    "merge": ("solidx.cli.csv_cmd:merge", "Merge shapes files or tuned files."),
    "diff": ("solidx.cli.csv_cmd:diff",
             "Rows only in A, only in B, and problems whose solution or time changed."),
    "plot": ("solidx.cli.csv_plot:plot", "Plot the speedup over default of a tuned FILE."),
}


@click.group("csv", cls=LazyGroup, lazy=CSV_COMMANDS)
def csv_group() -> None:
    """Inspect and combine shapes files (fp8_shapes.csv) and tuned files (tuned_fp8.csv)."""
