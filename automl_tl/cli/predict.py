"""`automl-tl predict`: label images with an exported model (onnxruntime only)."""

from __future__ import annotations

import json

import click

from .common import LimitType, clean_errors, verbose_option

__all__ = ["COMMANDS"]


@click.command()
@click.argument("model", type=str)
@click.argument("paths", nargs=-1, required=True)
@click.option("--top-k", "-k", type=LimitType("top_k"), default=1, show_default=True,
              help="Classes per image, most probable first.")  # fmt: skip
@click.option("--batch-size", type=LimitType("batch_size"), default=32, show_default=True,
              help="Images per onnxruntime call.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one per image.")
@verbose_option
@clean_errors
def predict(model, paths, top_k, batch_size, as_json, verbose):
    """Label image files or folders with MODEL: a run folder or its model.onnx (onnxruntime
    only). Each line gives the most probable classes (calibrated probabilities) and, for an
    image unlike the training data (OOD p-value at or below the model's threshold), `OOD`
    and its p-value; --json gives `ood` and `ood_pvalue` for every image."""
    from ..core.errors import AutoTLError
    from ..export.predictor import Predictor

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
            if r.get("ood"):
                tops += f"  OOD (p={r['ood_pvalue']:.3f})"
            click.echo(f"{r['path']}\t{tops}")
    if failed:
        click.echo(f"{failed} of {len(results)} files could not be read", err=True)
    if not results:
        raise AutoTLError(f"no image files found in {', '.join(map(str, paths))}")


COMMANDS = (predict,)
