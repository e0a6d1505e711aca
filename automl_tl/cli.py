"""Command line: parse, call the API, print. Nothing else."""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .cli_cache import cache_group
from .cli_common import clean_errors as _clean_errors
from .errors import AutoTLError

__all__ = ["main", "run"]


class _PluginGroup(click.Group):
    """Built-in commands load nothing extra; plugin commands (register_commands hook)
    are looked up only when a name is not built in, or for --help."""

    _loaded = False

    def _load_plugin_commands(self) -> None:
        if not self._loaded:
            self._loaded = True
            from .plugins import get_plugins

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


def _fit_options(func):
    options = [
        click.option("--out", type=click.Path(), help="Run folder (default: a new one in runs/)."),
        click.option("--backbone", default="efficientnet_lite0", show_default=True),
        click.option("--weights", type=click.Path(), help="Local weight file for the backbone."),
        click.option(
            "--allow-download", is_flag=True, help="Let the backbone download missing weights."
        ),
        click.option("--case", type=int, help="Force a case (1-4) instead of the planner's."),
        click.option("--strategy", help="Force a registered strategy by name."),
        click.option("--source-bank", type=click.Path(), help="Source bank file (.npz)."),
        click.option(
            "--size-ratio",
            type=float,
            help="Threshold: large when train images >= RATIO x head parameters (default 1).",
        ),
        click.option(
            "--similarity-pvalue",
            type=float,
            help="Threshold of the similarity p-value (default 0.5); docs/analysis.md.",
        ),
        click.option(
            "--time-budget",
            type=float,
            help="Seconds for the whole fit (default 1200); fine-tuning runs what fits.",
        ),
        click.option("--finetune-epochs", default=10, show_default=True),
        click.option(
            "--finetune",
            type=click.Choice(["auto", "partial", "full"]),
            default="auto",
            show_default=True,
            help="Cases 3/4: top stages on cached maps (partial), the whole network (full), "
            "or what trains the most within the budget (auto, with a trial epoch).",
        ),
        click.option(
            "--input-size",
            default="auto",
            show_default=True,
            help="Input crop of full fine-tuning: auto (smaller for images far smaller than "
            "the backbone's input), backbone, or a multiple of 32; frozen heads stay at the "
            "backbone's.",
        ),
        click.option("--resume", is_flag=True, help="Continue an interrupted run in --out."),
        click.option(
            "--overwrite", is_flag=True, help="Replace a finished run in --out (kept otherwise)."
        ),
        click.option("--epochs", default=100, show_default=True, help="Max head epochs."),
        click.option("--val-fraction", default=0.2, show_default=True),
        click.option(
            "--batch-size", type=int, help="Images per embedding batch (default: from memory)."
        ),
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False),
            help="Feature cache folder (default: $AUTOML_TL_CACHE_DIR or ~/.cache/automl-tl).",
        ),
        click.option(
            "--cache-dtype",
            type=click.Choice(["fp16", "int8"]),
            default="fp16",
            show_default=True,
            help="How cached features are stored (int8: per-row scale, half the bytes).",
        ),
        click.option(
            "--engine",
            type=click.Choice(["auto", "onnxruntime", "torch"]),
            default="auto",
            show_default=True,
            help="Frozen-backbone runtime (auto: onnxruntime on CPU, torch on CUDA).",
        ),
        click.option("--seed", default=0, show_default=True),
        click.option("--strict", is_flag=True, help="Every data problem is an error."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
        click.option("--quiet", "-q", is_flag=True, help="No progress output."),
        click.option("--verbose", "-v", is_flag=True, help="Show tracebacks."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_fit(data, as_json, quiet, **options):
    from .api import AutoTransfer

    model = AutoTransfer(quiet=quiet or as_json, **options).fit(data)
    from .distributed import world

    if world()[0] != 0:  # under torchrun only rank 0 reports
        return
    val = model.metrics_["validation"]
    summary = {
        "run_dir": str(model.run_dir_),
        "model": str(model.onnx_path_),
        "case": model.plan_.case,
        "strategy": model.plan_.strategy,
        "backbone": model.plan_.backbone,
        "classes": model.classes_,
        "images_used": len(model.audit_.samples),
        "files_skipped": len(model.audit_.problems),
        "left_out_classes": model.audit_.left_out_classes,
        "val_accuracy": val["accuracy"],
        "val_balanced_accuracy": val["balanced_accuracy"],
        "export_check": model.export_check_,
        "fit_seconds": model.metrics_["fit_seconds"],
        "feature_cache": model.metrics_.get("feature_cache"),
        "report": str(getattr(model, "report_path_", "")),
    }
    test, parts = model.metrics_.get("test"), model.metrics_.get("split") or {}
    if test:
        summary["test_accuracy"] = test["accuracy"]
        summary["test_balanced_accuracy"] = test["balanced_accuracy"]
    summary["split"] = parts
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    chk = model.export_check_
    # the test line stands apart: that split chose nothing (see data.split_summary)
    test_line = (
        f"test accuracy {test['accuracy']:.4f}, balanced {test['balanced_accuracy']:.4f} on "
        f"{test['n']} images (held out, evaluated once after the model was chosen)\n"
        if test
        else ""
    )
    leaks = "".join(f"leakage: {m}\n" for m in parts.get("leakage_messages") or [])
    source = parts.get("validation_source")
    click.echo(
        f"case {summary['case']} ({summary['strategy']} on {summary['backbone']}): "
        "validation accuracy "
        f"{val['accuracy']:.4f}, balanced {val['balanced_accuracy']:.4f} on {val['n']} images"
        f"{f' ({source}; chose the model)' if source else ''}\n{test_line}{leaks}"
        f"export check: onnxruntime vs torch on {chk['n_images']} held-out images, "
        f"max |logit diff| {chk['max_abs_diff']:.1e}, top-1 agreement {chk['top1_agreement']:.0%}\n"
        f"{summary['images_used']} images used, {summary['files_skipped']} files skipped "
        f"(see audit.json)\nrun folder: {summary['run_dir']}"
    )


@main.command()
@click.argument("data")
@_fit_options
@_clean_errors
def fit(data, verbose, **kwargs):
    """Adapt the backbone to DATA: a folder of class folders or a CSV of path,label."""
    _run_fit(data, **kwargs)


@main.command()
@click.argument("folder", default="demo-data")
@_fit_options
@_clean_errors
def demo(folder, verbose, **kwargs):
    """Write scikit-learn's digits as PNG class folders into FOLDER, then fit on them."""
    from .demo import write_digits

    write_digits(folder)
    click.echo(f"wrote sample dataset to {folder}/ (scikit-learn digits, 10 classes)", err=True)
    _run_fit(folder, **kwargs)


@main.command()
@click.argument("data")
@click.option("--backbone", default="efficientnet_lite0", show_default=True)
@click.option("--weights", type=click.Path(), help="Local weight file for the backbone.")
@click.option("--source-bank", type=click.Path(), help="Source bank file (.npz).")
@click.option("--size-ratio", type=float, help="Override the size threshold.")
@click.option("--similarity-pvalue", type=float, help="Override the similarity threshold.")
@click.option("--case", type=int, help="Force a case (1-4).")
@click.option("--time-budget", type=float, help="Seconds for a fit (default 1200).")
@click.option("--max-analysis-images", default=2000, show_default=True)
@click.option("--input-size", default="auto", show_default=True, help="See fit --help.")
@click.option("--val-fraction", default=0.2, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the profile and plan as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
@_clean_errors
def analyze(data, as_json, quiet, verbose, **options):
    """Profile DATA (size, similarity to the source domain) and print the plan, no training."""
    from .api import AutoTransfer

    plan = AutoTransfer(quiet=quiet or as_json, **options).analyze(data)
    if as_json:
        click.echo(json.dumps(plan.to_dict(), indent=2))
        return
    p = plan.profile
    click.echo(
        f"size: {p['size']}   similarity: {p['similar']}   ->   case {plan.case} "
        f"({plan.strategy}), cut '{plan.cut}'"
    )
    for reason in plan.reasons:
        click.echo(f"  - {reason}")
    if p.get("source_classifier"):
        sc = p["source_classifier"]
        click.echo(
            f"  source classifier: mean max-softmax {sc['mean_max_softmax']:.3f}, "
            f"median energy score {sc['median_neg_energy']:.2f}"
        )
    if p.get("bn_drift"):
        drift = ", ".join(f"{k} {v:.2f}" for k, v in p["bn_drift"].items())
        click.echo(f"  BatchNorm drift per stage: {drift}")
    if plan.expected_accuracy:
        e = plan.expected_accuracy
        click.echo(f"  expected accuracy: {e['low']:.3f}-{e['high']:.3f} ({e['basis']})")


@main.group("source-bank")
def source_bank():
    """Build or inspect source reference banks for the similarity analysis."""


@source_bank.command("build")
@click.argument("folder")
@click.option("--backbone", default="efficientnet_lite0", show_default=True)
@click.option("--weights", type=click.Path(), help="Local weight file for the backbone.")
@click.option("--out", type=click.Path(), help="Bank file (default: in the cache folder).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--quiet", "-q", is_flag=True)
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
@_clean_errors
def source_bank_build(folder, backbone, weights, out, batch_size, quiet, verbose):
    """Embed every image under FOLDER (source-domain images) into a bank for BACKBONE."""
    import numpy as np

    from .banks import build_bank

    path, bank = build_bank(folder, backbone, weights, out, batch_size, quiet)
    median = float(np.median(bank.reference))
    click.echo(f"wrote {path}: {bank.description}; median nearest-neighbour cosine {median:.3f}")


@source_bank.command("show")
@click.argument("path")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
@_clean_errors
def source_bank_show(path, verbose):
    """Print what a bank file holds."""
    import numpy as np

    from .similarity import SourceBank

    bank = SourceBank.load(path)
    q = [float(x) for x in np.quantile(bank.reference, [0.05, 0.5, 0.95])]
    click.echo(
        f"{path}: backbone {bank.backbone}, {bank.kind}, {bank.description}; "
        f"nearest-neighbour cosine q05/median/q95 {q[0]:.3f}/{q[1]:.3f}/{q[2]:.3f}"
    )


@main.command()
@click.argument("model", type=str)
@click.argument("paths", nargs=-1, required=True)
@click.option("--top-k", "-k", default=1, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one per image.")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
@_clean_errors
def predict(model, paths, top_k, batch_size, as_json, verbose):
    """Label image files or folders with an exported MODEL.onnx (onnxruntime only)."""
    from .inference import Predictor

    results = Predictor(model).predict(paths, top_k=top_k, batch_size=batch_size)
    failed = 0
    for r in results:
        failed += "error" in r
        if as_json:
            click.echo(json.dumps(r))
        elif "error" in r:
            click.echo(f"{r['path']}\tERROR {r['error']}")
        else:
            tops = "  ".join(f"{label} {p:.3f}" for label, p in r["top"])
            click.echo(f"{r['path']}\t{tops}")
    if failed:
        click.echo(f"{failed} of {len(results)} files could not be read", err=True)
    if not results:
        raise AutoTLError(f"no image files found in {', '.join(map(str, paths))}")


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


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True)
def plugins_command(as_json):
    """List loaded plugins with their versions and hooks, and plugins that failed."""
    from .plugins import get_plugins

    ps = get_plugins()
    rows = [
        {"name": name, "version": ps.versions.get(name, "?"), "hooks": ",".join(ps.hooks_of(name))}
        for name, _ in ps.manager.list_name_plugin()
    ]
    _emit(rows, ["name", "version", "hooks"], as_json, ps.failures)


@main.command("backbones")
@click.option("--json", "as_json", is_flag=True)
def backbones_command(as_json):
    """List backbones: source domain, parameters, whether weights are available offline."""
    from .plugins import get_plugins

    ps = get_plugins()
    rows = []
    for name, spec in sorted(ps.backbones.items()):
        net = spec.build(pretrained=False)
        weights = spec.weights_path()
        rows.append(
            {
                "name": name,
                "plugin": ps.owner["backbones", name],
                "source": spec.source_domain,
                "params": f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f}M",
                "input": spec.preprocessing.crop_size,
                "stages": len(spec.stages),
                "offline_weights": "yes" if weights else "no",
            }
        )
    _emit(rows, list(rows[0]) if rows else ["name"], as_json, ps.failures)


@main.command("strategies")
@click.option("--json", "as_json", is_flag=True)
def strategies_command(as_json):
    """List strategies: name, the case they implement, plugin, description."""
    from .plugins import get_plugins

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


main.add_command(cache_group)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json):
    """Versions, compiled ops, onnxruntime providers, CUDA / FAISS GPU, cache, plugins."""
    from .doctor import collect, format_report

    info = collect()
    click.echo(json.dumps(info, indent=2) if as_json else format_report(info))


def run() -> None:
    """Console-script entry point: plugin commands get the same one-line errors too."""
    try:
        main()
    except AutoTLError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    run()
