"""What every command shares: options built from the settings table (their types refuse a bad
value while parsing, naming the flag and the allowed values), one clean line per error,
tracebacks only with --verbose, and a message after Ctrl-C that says what was interrupted."""

from __future__ import annotations

import functools
import sys

import click

from ..core.errors import AutoTLError, DiskFullError, is_disk_full
from ..settings import LIMITS, Settings, flag_of

__all__ = ["clean_errors", "settings_options", "LimitType", "NameType", "verbose_option"]


class LimitType(click.ParamType):
    """A value of option `name` as LIMITS allows it: numbers parsed, then checked."""

    def __init__(self, name: str):
        self.option, self.limit = name, LIMITS[name]
        self.name = {"int": "integer", "float": "number"}.get(self.limit.kind, "text")

    def convert(self, value, param, ctx):
        parsed = value
        if isinstance(value, str) and self.limit.kind in ("int", "float"):
            try:
                parsed = int(value) if self.limit.kind == "int" else float(value)
            except ValueError:
                parsed = value
        if not self.limit.ok(parsed):
            self.fail(f"{value!r} is not allowed; use {self.limit.allowed()}", param, ctx)
        return parsed

    def get_metavar(self, param, ctx=None):
        return "[auto|backbone|N]" if self.limit.kind == "input_size" else None


class NameType(click.ParamType):
    """A registered backbone or strategy name (the plugins are loaded to check it)."""

    name = "name"

    def __init__(self, kind: str, auto: bool = False):
        self.kind, self.auto = kind, auto  # auto: "auto" is allowed (the backbone search)

    def convert(self, value, param, ctx):
        from ..plugins import get_plugins

        table = get_plugins().backbones if self.kind == "backbone" else get_plugins().strategies
        if self.kind == "backbone" and value == "auto" and self.auto:
            return value
        if value not in table:
            known = ", ".join(sorted(table)) or "none"
            known = f"auto, {known}" if self.auto else known
            self.fail(f"{value!r} is not a registered {self.kind}; use one of {known}")
        return value


_PATHS = {
    "weights": click.Path(exists=True, dir_okay=False),
    "source_bank": click.Path(exists=True, dir_okay=False),
    "cache_dir": click.Path(file_okay=False),
    "out": click.Path(),
}
_NAMES = {"backbone": NameType("backbone", auto=True), "strategy": NameType("strategy")}


def _option(name: str):
    default = Settings.__dataclass_fields__[name].default
    if name == "quiet":
        return click.option("--quiet", "-q", is_flag=True, help="No progress output.")
    if isinstance(default, bool):
        if default:  # on unless turned off
            flag = flag_of(name)
            return click.option(f"{flag}/--no-{flag[2:]}", default=True, show_default=True,
                                help=Settings.help(name))  # fmt: skip
        return click.option(flag_of(name), is_flag=True, help=Settings.help(name))
    limit = LIMITS.get(name)
    if limit is not None and limit.kind == "choice":
        kind = click.Choice(limit.choices)
    else:
        kind = LimitType(name) if limit else _NAMES.get(name) or _PATHS.get(name)
    return click.option(
        flag_of(name),
        type=kind,
        default=default,
        show_default=default is not None,
        help=Settings.help(name),
    )


def settings_options(*names: str):
    """click options for these Settings fields (help, default and checks from the table)."""

    def decorate(func):
        for name in reversed(names):
            func = _option(name)(func)
        return func

    return decorate


verbose_option = click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")


def clean_errors(func):
    """Turn AutoTLError (and a full disk) into one line on stderr and exit 1; with --verbose
    the traceback first. Ctrl-C says what was interrupted and exits 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        try:
            return func(*args, **kwargs)
        except AutoTLError as e:
            _fail(f"error: {e}", verbose)
        except OSError as e:  # a full disk the writer did not name itself: still one line
            if not is_disk_full(e):
                raise
            _fail(f"error: {DiskFullError(e.filename or '.')}", verbose)
        except KeyboardInterrupt as e:
            said = getattr(e, "message", None) or "interrupted; nothing half-written is kept"
            click.echo(said, err=True)
            sys.exit(130)

    return wrapper


def _fail(line: str, verbose: bool) -> None:
    if verbose:
        import traceback

        traceback.print_exc()
    click.echo(line, err=True)
    sys.exit(1)
