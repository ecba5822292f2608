"""``solidx tune``: sweep every solution of every backend for each shape (gradlib's tuner)."""
from __future__ import annotations

import click

from solidx.cli.flag_errors import flag_error
from solidx.gradlib.dtypes import parse_dtype
from solidx.gradlib.gemm_tuner import parse_backends, parse_gpus
from solidx.gradlib.schema import CsvError
from solidx.gradlib.tune_options import ALL_BACKENDS, TuneOptions
from solidx.gradlib.tune_signals import TuneInterrupted, exit_now
from solidx.gradlib.tuner import tune as run_tuner


@click.command()
@click.option("--input-file", "--input_file", "input_file", required=True,
              type=click.Path(dir_okay=False),
              help="Shapes file (fp8_shapes.csv, or gradlib's M,N,K).")
@click.option("--tuned-file", "--tuned_file", "tuned_file", required=True,
              type=click.Path(dir_okay=False),
              help="Tuned file to write or extend (tuned_fp8.csv).")
@click.option("--backends", default=",".join(ALL_BACKENDS), show_default=True,
              help="Backends tried besides default; unknown names are refused, unavailable "
                   "ones (no GPU) reported and skipped.")
@click.option("--margin", type=float, default=0.03, show_default=True,
              help="A winner must be this much faster than default, else the row keeps default.")
@click.option("--gpus", default=None,
              help="Shard the shapes over these GPUs, e.g. 0,1 (one process each).")
@click.option("--max-candidates", "--max_candidates", type=click.IntRange(min=1), default=None,
              help="At most this many candidates per backend and shape.")
@click.option("--indtype", default="fp8", show_default=True,
              help="Operand dtype for files without a dtype column.")
@click.option("--outdtype", default="bf16", show_default=True,
              help="Output dtype for files without an outdtype column.")
@click.option("--log-file", default=None, type=click.Path(dir_okay=False),
              help="Every candidate's timing or rejection, as JSON lines "
                   "[TUNED_FILE.candidates.jsonl].")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
def tune(input_file: str, tuned_file: str, backends: str, margin: float, gpus: str | None,
         max_candidates: int | None, indtype: str, outdtype: str, log_file: str | None,
         progress: bool) -> None:
    """Tune every GEMM of INPUT_FILE on this machine's GPU(s) and add the winners to TUNED_FILE.

    Re-running skips the shapes already tuned for this device and library build. Ctrl-C or
    SIGTERM ends the run and its workers at once (exit 130 / 143); finished rows are kept."""
    try:
        options = TuneOptions(
            backends=parse_backends(backends), margin=margin, gpus=parse_gpus(gpus),
            max_candidates=max_candidates, log_file=log_file, progress=progress,
        )
        report = run_tuner(input_file, tuned_file, options, parse_dtype(indtype),
                           parse_dtype(outdtype))
    except (CsvError, ValueError) as exc:
        raise flag_error(exc, ("backends", "gpus", "margin", "max_candidates")) from None
    except TuneInterrupted as exc:
        click.echo(f"Error: {exc}", err=True)
        exit_now(exc.exit_code)
    click.echo(report.summary())
    if report.failed:
        raise click.ClickException(f"{len(report.failed)} shapes could not be tuned (see above)")
