"""The ``solidx`` command: capture-shapes → tune → generate / bench, plus csv and quantize."""
from __future__ import annotations

import logging

import click

from solidx.cli.bench import bench
from solidx.cli.capture import capture_shapes
from solidx.cli.csv_cmd import csv_group
from solidx.cli.csv_plot import plot
from solidx.cli.generate import generate
from solidx.cli.quantize import quantize
from solidx.cli.serve import serve
from solidx.cli.tune import tune
from solidx.runtime import envs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="solidx", message="solidx %(version)s")
def main() -> None:
    """solidx: capture the GEMM shapes a model runs, tune them offline over every backend,
    and run inference with the tuned solutions."""
    name = str(envs.SOLIDX_LOG_LEVEL).upper()
    if not isinstance(logging.getLevelName(name), int):
        raise click.UsageError(f"SOLIDX_LOG_LEVEL={name!r} is not a log level"
                               " (DEBUG, INFO, WARNING, ERROR)")
    logging.basicConfig(level=name, format="%(levelname)s %(name)s: %(message)s")


main.add_command(capture_shapes)
main.add_command(tune)
main.add_command(generate)
main.add_command(bench)
main.add_command(quantize)
main.add_command(serve)  # imports fastapi only when it runs
csv_group.add_command(plot)
main.add_command(csv_group)

if __name__ == "__main__":
    main()
