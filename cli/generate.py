"""``solidx generate``: run the LLM engine on prompts."""
from __future__ import annotations

import click

from cli.pending import not_yet


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def generate(args: tuple[str, ...]) -> None:
    """Generate text with a model (not implemented yet: arrives with the runtime issue)."""
    not_yet("solidx generate", "The runtime")
