"""How a command that a later issue fills in refuses to run: plainly, with a non-zero exit."""
from __future__ import annotations

import click


def not_yet(what: str, issue: str) -> None:
    """Exit 2 with a message naming the missing feature and the issue that brings it."""
    raise click.ClickException(f"{what} is not implemented yet (arrives with the issue {issue!r})")
