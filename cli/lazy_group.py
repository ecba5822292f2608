"""A click group whose subcommands are imported only when run, so that ``solidx --help``,
``--version`` and the light commands start without importing torch or transformers."""
from __future__ import annotations

from importlib import import_module

import click


class LazyGroup(click.Group):
    """``lazy`` maps a subcommand's name to ``("package.module:attribute", short help)``; the
    module is imported when the subcommand runs (or its own ``--help`` is asked for), and the
    group's ``--help`` lists the short help without importing anything."""

    def __init__(self, *args: object, lazy: dict[str, tuple[str, str]], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        target = self.lazy[cmd_name][0]
        module_name, _, attribute = target.partition(":")
        command = getattr(import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][1]) for name in self.list_commands(ctx)
                if name in self.lazy]
        rows += [(name, command.get_short_help_str(formatter.width))
                 for name, command in sorted(self.commands.items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))
