"""Every ``LLM`` option as a kebab-case flag, derived from ``runtime.config.Config`` so the
commands that build an engine (generate, bench latency) never fall behind it."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

import click

from runtime.config import Config

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
        command = click.option(
            flag,
            field.name,
            type=_TYPES[base],
            default=field.default,
            show_default=field.default is not None,
            help=help_text,
        )(command)
    return command


def config_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """The ``Config`` keywords among a command's parameters."""
    names = {f.name for f in dataclasses.fields(Config) if f.init and f.name != "model"}
    return {name: value for name, value in params.items() if name in names}
