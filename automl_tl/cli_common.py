"""What every command shares: one clean line per error, a hint after Ctrl-C."""

from __future__ import annotations

import functools
import sys

import click

from .errors import AutoTLError, DiskFullError, is_disk_full

__all__ = ["clean_errors"]


def clean_errors(func):
    """Turn AutoTLError (and a full disk) into one line on stderr and exit 1 (tracebacks only
    with --verbose)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        try:
            return func(*args, **kwargs)
        except AutoTLError as e:
            if verbose:
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except OSError as e:  # a full disk the writer did not name itself: still one line
            if verbose or not is_disk_full(e):
                raise
            click.echo(f"error: {DiskFullError(e.filename or '.')}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo(
                "interrupted; nothing half-written is kept. To continue a fine-tuning run, "
                "repeat the command with the same --out and add --resume",
                err=True,
            )
            sys.exit(130)

    return wrapper
