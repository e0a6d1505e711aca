"""`automl-tl plugins | backbones | strategies | doctor`: what is installed, as tables or JSON
(doctor's checks live in cli.doctor, imported when it runs)."""

from __future__ import annotations

import json

import click

__all__ = ["COMMANDS"]

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _emit(rows: list[dict], columns: list[str], as_json: bool, failures: dict) -> None:
    if as_json:
        click.echo(json.dumps({"items": rows, "failures": failures}, indent=2))
        return
    click.echo(_table(rows, columns))
    for name, why in failures.items():
        click.echo(f"WARNING: plugin {name} failed to load: {why}", err=True)


@click.command("plugins")
@_JSON
def plugins_command(as_json):
    """List loaded plugins with their versions and hooks, and plugins that failed."""
    from ..plugins import get_plugins

    ps = get_plugins()
    rows = [
        {"name": name, "version": ps.versions.get(name, "?"), "hooks": ",".join(ps.hooks_of(name))}
        for name, _ in ps.manager.list_name_plugin()
    ]
    _emit(rows, ["name", "version", "hooks"], as_json, ps.failures)


def _parameters(spec) -> int:
    """The declared parameter count, else the network's (built on the meta device: no
    weights are made or read)."""
    if spec.parameters is not None:
        return spec.parameters
    import torch

    with torch.device("meta"):
        net = spec.build(pretrained=False)
    return sum(p.numel() for p in net.parameters())


@click.command("backbones")
@_JSON
def backbones_command(as_json):
    """List backbones: source domain, parameters, whether weights are available offline."""
    from ..plugins import get_plugins

    ps = get_plugins()
    rows = [
        {
            "name": name,
            "plugin": ps.owner["backbones", name],
            "source": spec.source_domain,
            "params": f"{_parameters(spec) / 1e6:.1f}M",
            "input": spec.preprocessing.crop_size,
            "stages": len(spec.stages),
            "offline_weights": "yes" if spec.weights_path() else "no",
        }
        for name, spec in sorted(ps.backbones.items())
    ]
    _emit(rows, list(rows[0]) if rows else ["name"], as_json, ps.failures)


@click.command("strategies")
@_JSON
def strategies_command(as_json):
    """List strategies: name, the case they implement, plugin, description."""
    from ..plugins import get_plugins

    ps = get_plugins()
    rows = [
        {
            "name": name,
            "case": spec.case or "-",
            "plugin": ps.owner["strategies", name],
            "description": spec.description,
        }
        for name, spec in sorted(ps.strategies.items())
    ]
    _emit(rows, ["name", "case", "plugin", "description"], as_json, ps.failures)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json):
    """Versions, compiled ops, onnxruntime providers, CUDA / FAISS GPU, cache, plugins."""
    from .doctor import collect, format_report

    info = collect()
    click.echo(json.dumps(info, indent=2) if as_json else format_report(info))


COMMANDS = (plugins_command, backbones_command, strategies_command, doctor)
