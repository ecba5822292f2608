"""``solidx csv show / validate / merge / diff`` (grouped in :mod:`solidx.cli.csv_group`).

Imports no torch (nor does the CSV layer of gradlib it uses), so that they start in well under a
second."""
from __future__ import annotations

import math
import sys

import click

from solidx.gradlib.csv_validate import validate
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.schema import CsvError, is_tuned_file
from solidx.gradlib.shapes_file import ShapeRow, merge_shapes, read_shapes, write_shapes
from solidx.gradlib.tuned_file import TunedRow, merge_tuned, read_tuned, write_tuned


def _dtypes(problem: GemmProblem) -> list[str]:
    return [problem.dtype_name.removeprefix("torch."),
            problem.outdtype_name.removeprefix("torch.")]


def _num(value: float, digits: int = 4) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _shape_table(rows: list[ShapeRow]) -> str:
    header = ["out_features(M)", "tokens(N)", "in_features(K)", "bias", "dtype", "outdtype",
              "count", "layers"]
    body = [[str(r.problem.M), str(r.problem.N), str(r.problem.K), str(r.problem.bias),
             *_dtypes(r.problem), str(r.count), ";".join(r.layers)]
            for r in rows]
    return table(header, body)


def _tuned_table(rows: list[TunedRow]) -> str:
    header = ["out_features(M)", "tokens(N)", "in_features(K)", "bias", "dtype", "outdtype",
              "libtype", "ms", "default_ms", "speedup", "TFLOP/s", "GB/s", "device", "solution"]
    body = [[str(r.problem.M), str(r.problem.N), str(r.problem.K), str(r.problem.bias),
             *_dtypes(r.problem), r.libtype, _num(r.soltimems),
             _num(r.default_ms), _num(r.speedup, 3), _num(r.tflops), _num(r.gbps), r.device,
             r.solution or str(r.solidx)]
            for r in rows]
    return table(header, body)


def _fail(exc: CsvError) -> None:
    raise click.ClickException(str(exc))


@click.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
def show(file: str) -> None:
    """Print FILE (shapes or tuned) as a readable table."""
    try:
        if is_tuned_file(file):
            click.echo(_tuned_table(read_tuned(file)))
        else:
            click.echo(_shape_table(read_shapes(file)))
    except CsvError as exc:
        _fail(exc)


@click.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate_cmd(files: tuple[str, ...]) -> None:
    """Check FILES; exit 0 when all are good, 1 with every error listed when not."""
    bad = 0
    for file in files:
        errors = validate(file)
        for error in errors:
            click.echo(str(error), err=True)
        if errors:
            bad += 1
        else:
            click.echo(f"{file}: ok")
    if bad:
        sys.exit(1)


@click.command("merge")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="File to write.")
def merge(files: tuple[str, ...], output: str) -> None:
    """Merge shapes files (counts added) or tuned files (later files win per problem and build)."""
    try:
        kinds = {is_tuned_file(f) for f in files}
        if len(kinds) != 1:
            raise click.ClickException("cannot merge shapes files with tuned files")
        if kinds.pop():
            rows = merge_tuned(*(read_tuned(f) for f in files))
            write_tuned(output, rows)
        else:
            rows = merge_shapes(*(read_shapes(f) for f in files))
            write_shapes(output, rows)
    except CsvError as exc:
        _fail(exc)
    click.echo(f"wrote {len(rows)} rows to {output}")


@click.command("diff")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
def diff(a: str, b: str) -> None:
    """Rows only in A, only in B, and (tuned files) problems whose solution changed or whose
    time changed (to 4 significant digits). Exit 0 when the files agree, 1 when they differ."""
    try:
        if is_tuned_file(a) != is_tuned_file(b):
            raise click.ClickException("cannot diff a shapes file against a tuned file")
        tuned = is_tuned_file(a)
        rows_a = read_tuned(a) if tuned else read_shapes(a)
        rows_b = read_tuned(b) if tuned else read_shapes(b)
    except CsvError as exc:
        _fail(exc)
    key = (lambda r: r.identity()) if tuned else (lambda r: r.problem.key())
    by_a, by_b = {key(r): r for r in rows_a}, {key(r): r for r in rows_b}
    differences = 0
    for label, mine, other in (("-", by_a, by_b), ("+", by_b, by_a)):
        for k, row in mine.items():
            if k not in other:
                differences += 1
                click.echo(f"{label} {row.problem}"
                           + (f" {row.libtype} {row.solution}" if tuned else ""))
    for k in by_a.keys() & by_b.keys():
        ra, rb = by_a[k], by_b[k]
        if tuned and (ra.libtype, ra.solution, ra.solidx) != (rb.libtype, rb.solution, rb.solidx):
            differences += 1
            click.echo(f"~ {ra.problem}: {ra.libtype} {ra.solution} ({_num(ra.soltimems)} ms) -> "
                       f"{rb.libtype} {rb.solution} ({_num(rb.soltimems)} ms)")
        elif tuned and _num(ra.soltimems) != _num(rb.soltimems):
            differences += 1
            click.echo(f"~ {ra.problem}: {ra.libtype} {ra.solution}: {_num(ra.soltimems)} ms -> "
                       f"{_num(rb.soltimems)} ms")
        elif not tuned and ra.count != rb.count:
            differences += 1
            click.echo(f"~ {ra.problem}: count {ra.count} -> {rb.count}")
    click.echo(f"{differences} differences")
    if differences:
        sys.exit(1)
