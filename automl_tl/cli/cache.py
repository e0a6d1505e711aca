"""`automl-tl cache info | verify | clear`: the cache folder from the command line: the feature
store, and beside it the exported graphs and composed models, the memo and source banks."""

from __future__ import annotations

import json

import click

from .common import clean_errors as _clean_errors

__all__ = ["COMMANDS"]


@click.group("cache")
def cache_group():
    """Inspect, check or clear the feature cache (pooled backbone features per image)."""


def _cache_options(func):
    options = [
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False),
            help="Cache folder (default: $AUTOML_TL_CACHE_DIR, else the user cache folder).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout."),
        click.option("--verbose", "-v", is_flag=True, help="Show tracebacks."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


@cache_group.command("info")
@_cache_options
@_clean_errors
def cache_info(cache_dir, as_json, verbose):
    """Where the cache is, its feature spaces and stages, entries, shards and size on disk."""
    from ..features.housekeeping import contents
    from ..features.store import FeatureStore

    store = FeatureStore(cache_dir)
    info = {**store.info(), "root": str(store.root), **contents(store.root)}
    info["total_bytes"] = info["bytes_on_disk"] + sum(
        info[k]["bytes"] for k in ("models", "memo", "banks")
    )
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    m, b, memo = info["models"], info["banks"], info["memo"]
    others = (
        f"models: {m['files']} files, {_size(m['bytes'])}; memo: "
        f"{sum(memo['facts'].values()):,} facts, {_size(memo['bytes'])}; source banks: "
        f"{b['files']}, {_size(b['bytes'])}; {_size(info['total_bytes'])} in all"
    )
    if not info["exists"]:
        click.echo(f"feature cache: {info['location']} (empty, nothing stored yet)\n{others}")
        return
    line = (
        f"{len(info['spaces'])} spaces, {info['entries']:,} entries in {info['shards']:,} shards, "
        f"{_size(info['bytes_on_disk'])} on disk"
    )
    if info["bytes_per_value"]:
        line += f", {info['bytes_per_value']:.2f} bytes per value"
        line += f" ({info['fp32_fraction']:.0%} of fp32)"
    click.echo(f"feature cache: {info['location']}\n{line}\n{others}")
    for space in info["spaces"]:
        desc = ", ".join(f"{k}={v}" for k, v in space["description"].items())
        click.echo(f"space {space['id']} ({space['dtype']}, {space['entries']:,} entries): {desc}")
        for stage, s in space["stages"].items():
            click.echo(
                f"  {stage:<12} {s['entries']:>9,} rows x {s['width']:<5} "
                f"{s['shards']:,} shards  {_size(s['bytes'])}"
            )


@cache_group.command("verify")
@click.option("--repair", is_flag=True, help="Drop bad entries and shards, delete stray files.")
@_cache_options
@_clean_errors
def cache_verify(repair, cache_dir, as_json, verbose):
    """Check every shard's size and checksum and every entry; exit 1 when problems remain."""
    from ..features.store import CacheError, FeatureStore

    report = FeatureStore(cache_dir).verify(repair=repair)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(
            f"checked {report['shards']:,} shards and {report['entries']:,} entries in "
            f"{report['location']}: {report['bad_shards']} bad shards, {report['bad_entries']} bad "
            f"entries, {report['orphan_files']} orphan and {report['temp_files']} temporary files"
        )
        for problem in report["problems"][:20]:
            click.echo(f"  - {problem}")
        if len(report["problems"]) > 20:
            click.echo(f"  ... and {len(report['problems']) - 20} more (see --json)")
        if repair and report["problems"]:
            click.echo("repaired: dropped rows will be recomputed when next needed")
    if not report["ok"]:
        hint = "" if repair else "; run `automl-tl cache verify --repair`"
        raise CacheError(f"the feature cache at {report['location']} has problems{hint}")


@cache_group.command("clear")
@click.option("--space", help="Clear only this feature space (id or unique prefix, see info).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_cache_options
@_clean_errors
def cache_clear(space, yes, cache_dir, as_json, verbose):
    """Delete what the cache holds: everything (features, exported graphs and composed
    models, the memo, source banks), or one feature space's features."""
    from ..features.housekeeping import clear_contents
    from ..features.store import FeatureStore

    store = FeatureStore(cache_dir)
    what = (
        f"feature space {space}"
        if space
        else "every cached feature, exported model, remembered fact and source bank"
    )
    if not yes:
        click.confirm(f"delete {what} in {store.root}?", abort=True, err=True)
    out = store.clear(space)
    if space is None:
        out.update(clear_contents(store.root))
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    line = (
        f"removed {out['entries']:,} entries in {out['shards']:,} shards "
        f"({_size(out['bytes_freed'])}) and {out['spaces']} spaces from {out['location']}"
    )
    if space is None:
        m, memo, b = out["models"], out["memo"], out["banks"]
        line += (
            f"; {m['files']} model files ({_size(m['bytes'])}), "
            f"{sum(memo['facts'].values()):,} remembered facts, {b['files']} source banks"
        )
    click.echo(line)


COMMANDS = (cache_group,)
