"""Every ``LLM`` option as a kebab-case flag, derived from ``runtime.config.Config`` so the
commands that build an engine (generate, bench latency) never fall behind it."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Callable

import click
from click.core import ParameterSource

from solidx.runtime.bench.result import BenchResult
from solidx.runtime.config import Config
from solidx.runtime.distributed import get_tp_rank

_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


def engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per ``Config`` field (``model`` aside) to a click command function."""
    hints = typing.get_type_hints(Config)
    for field in reversed(dataclasses.fields(Config)):
        if not field.init or field.name == "model":
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        help_text = field.metadata.get("help", "")
        if kind is bool:
            command = click.option(
                flag, field.name, is_flag=True, default=field.default, help=help_text
            )(command)
            continue
        base = next(t for t in typing.get_args(kind) or (kind,) if t is not type(None))
        choices = field.metadata.get("choices")
        command = click.option(
            flag,
            field.name,
            type=click.Choice(choices) if choices else _TYPES[base],
            default=field.default,
            show_default=field.default is not None,
            help=help_text,
        )(command)
    return command


def keywords() -> set[str]:
    """Every ``Config`` keyword a flag sets (for :func:`solidx.cli.flag_errors.flag_error`)."""
    return {f.name for f in dataclasses.fields(Config) if f.init}


def config_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """The ``Config`` keywords among a command's parameters."""
    names = {f.name for f in dataclasses.fields(Config) if f.init and f.name != "model"}
    return {name: value for name, value in params.items() if name in names}


def given_config_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The ``Config`` keywords the user gave on the command line, so that the benchmark's own
    sizing (``max_num_seqs``, ``max_model_len`` from the workload) applies to the rest."""
    ctx = click.get_current_context()
    return {
        name: value
        for name, value in config_kwargs(options).items()
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    }


def report(result: BenchResult, output_json: str | None) -> None:
    """Print a benchmark's summary and save it as JSON, on rank 0 only: under torchrun every
    rank measures and rank 0 reports."""
    if get_tp_rank() != 0:
        return
    click.echo(result.summary())
    if output_json:
        with open(output_json, "w") as f:
            json.dump(result.as_dict(), f, indent=2)
