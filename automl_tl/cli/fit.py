"""`automl-tl fit`, `demo` and `analyze`."""

from __future__ import annotations

import json

import click

from .common import clean_errors, settings_options, verbose_option

__all__ = ["COMMANDS"]

_FIT = (
    "out", "backbone", "weights", "allow_download", "case", "strategy", "source_bank",
    "size_ratio", "similarity_pvalue", "time_budget", "finetune_epochs", "finetune",
    "input_size", "resume", "overwrite", "epochs", "val_fraction", "batch_size", "cache_dir",
    "cache_dtype", "engine", "seed", "strict", "drop_label_issues", "int8",
    "quiet",
)  # fmt: skip
_ANALYZE = (
    "backbone", "weights", "source_bank", "size_ratio", "similarity_pvalue", "case",
    "time_budget", "max_analysis_images", "input_size", "val_fraction", "seed", "quiet",
)  # fmt: skip
_JSON = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")


def _fit_command(func):
    return settings_options(*_FIT)(_JSON(verbose_option(clean_errors(func))))


def _run_fit(data, as_json: bool, options: dict) -> None:
    from ..core.distributed import world
    from ..pipeline import fit
    from ..settings import Settings

    summary = fit(data, Settings(**options)).summary()
    if world()[0] != 0:  # under torchrun only rank 0 reports
        return
    click.echo(json.dumps(summary.to_dict(), indent=2) if as_json else summary.text())


@click.command()
@click.argument("data")
@_fit_command
def fit(data, as_json, verbose, **options):
    """Adapt the backbone to DATA: a folder of class folders or a CSV of path,label."""
    _run_fit(data, as_json, options)


@click.command()
@click.argument("folder", default="demo-data")
@_fit_command
def demo(folder, as_json, verbose, **options):
    """Write scikit-learn's digits as PNG class folders into FOLDER, then fit on them."""
    from ..data.demo import write_digits

    write_digits(folder)
    click.echo(f"wrote sample dataset to {folder}/ (scikit-learn digits, 10 classes)", err=True)
    _run_fit(folder, as_json, options)


@click.command()
@click.argument("data")
@settings_options(*_ANALYZE)
@click.option("--json", "as_json", is_flag=True, help="Print the profile and plan as JSON.")
@verbose_option
@clean_errors
def analyze(data, as_json, verbose, **options):
    """Profile DATA (size, similarity to the source domain) and print the plan, no training."""
    from ..pipeline import analyze as run_analysis
    from ..settings import Settings

    summary = run_analysis(data, Settings(**options)).summary()
    click.echo(json.dumps(summary.to_dict(), indent=2) if as_json else summary.text())


COMMANDS = (fit, demo, analyze)
