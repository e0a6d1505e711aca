"""cli: the `automl-tl` command. Each command parses (its options' types refuse bad values
before any work), calls the pipeline or a room's function, and prints what comes back (a
summary object: lines for people, JSON with --json). Plugin commands are added through the
`register_commands` hook.

May import everything below it; imports nothing heavy at module level (`automl-tl --help`
loads click and these modules only).
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..core.errors import AutoTLError

__all__ = ["main", "run"]


class _PluginGroup(click.Group):
    """Built-in commands load nothing extra; plugin commands (register_commands hook)
    are looked up only when a name is not built in, or for --help."""

    _loaded = False

    def _load_plugin_commands(self) -> None:
        if not self._loaded:
            self._loaded = True
            from ..plugins import get_plugins

            get_plugins().add_commands(self)

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.commands:
            self._load_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx):
        self._load_plugin_commands()
        return super().list_commands(ctx)


@click.group(cls=_PluginGroup)
@click.version_option(__version__, prog_name="automl-tl")
def main():
    """automl-tl: adapt a pretrained image network to your labelled images."""


def _register() -> None:
    from . import cache, fit, listing, predict, serve, source_bank

    for module in (fit, predict, serve, source_bank, listing, cache):
        for command in module.COMMANDS:
            main.add_command(command)


_register()


def run() -> None:
    """Console-script entry point: every error is one line on stderr (plugin commands'
    too), a usage error names the flag and what it takes."""
    try:
        code = main.main(standalone_mode=False)
    except click.UsageError as e:
        hint = f"; see `{e.ctx.command_path} --help`" if e.ctx is not None else ""
        click.echo(f"error: {e.format_message().rstrip('.')}{hint}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except AutoTLError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
