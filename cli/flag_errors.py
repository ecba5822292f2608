"""Errors from the Python API, reworded for the command line: each keyword the user set through
a flag (``max_model_len``) is written as that flag (``--max-model-len``)."""
from __future__ import annotations

import re
from collections.abc import Iterable

import click


def flag(keyword: str) -> str:
    """``max_model_len`` → ``--max-model-len``."""
    return "--" + keyword.replace("_", "-")


def name_flags(message: str, keywords: Iterable[str]) -> str:
    """``message`` with ``keyword=value`` written as ``--flag value``, and each bare keyword
    that has an underscore (so is no English word) as ``--flag``."""
    for keyword in sorted(set(keywords), key=len, reverse=True):
        message = re.sub(rf"(?<![\w-]){re.escape(keyword)}=", flag(keyword) + " ", message)
        if "_" in keyword:
            message = re.sub(rf"(?<![\w-]){re.escape(keyword)}(?!\w)", flag(keyword), message)
    return message


def flag_error(exc: Exception, keywords: Iterable[str]) -> click.ClickException:
    """A click error (exit 1) whose message names the flags, not the keywords."""
    return click.ClickException(name_flags(str(exc), keywords))
