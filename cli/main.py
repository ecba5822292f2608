"""The ``solidx`` command: capture-shapes → tune → generate / bench, plus csv and quantize.

Subcommands are imported when they run (``LazyGroup``): ``solidx --help`` and ``--version``
import neither torch nor transformers."""
from __future__ import annotations

import click

from solidx import __version__
from solidx.cli.lazy_group import LazyGroup
from solidx.runtime.log_setup import setup_logging

COMMANDS = {
    "capture-shapes": ("solidx.cli.capture:capture_shapes",
                       "Write the GEMM problems a model issues to the shapes file."),
    "tune": ("solidx.cli.tune:tune",
             "Tune every GEMM of a shapes file and add the winners to a tuned file."),
    "generate": ("solidx.cli.generate:generate", "Generate text for prompts with a model."),
    "bench": ("solidx.cli.bench:bench",
              "Benchmarks that print and save figures (gemm, attention, latency, throughput, serve)."),
    "quantize": ("solidx.cli.quantize:quantize",
                 "Write a Quark-format fp8 checkpoint with calibrated static scales."),
    "serve": ("solidx.cli.serve:serve",
              "Serve a model over an OpenAI-compatible HTTP API (FastAPI on uvicorn)."),
    "csv": ("solidx.cli.csv_group:csv_group",
            "Inspect and combine shapes files and tuned files."),
}


@click.group(cls=LazyGroup, lazy=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, message="solidx %(version)s")
def main() -> None:
    """solidx: capture the GEMM shapes a model runs, tune them offline over every backend,
    and run inference with the tuned solutions."""
    try:
        setup_logging()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


if __name__ == "__main__":
    main()
