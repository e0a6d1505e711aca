"""`automl-tl source-bank build | show`: reference banks of the source domain."""

from __future__ import annotations

import click

from ..settings import DEFAULT_BACKBONE
from .common import LimitType, NameType, clean_errors, verbose_option

__all__ = ["COMMANDS"]


@click.group("source-bank")
def source_bank():
    """Build or inspect source reference banks for the similarity analysis."""


@source_bank.command("build")
@click.argument("folder")
@click.option("--backbone", type=NameType("backbone"), default=DEFAULT_BACKBONE,
              show_default=True, help="Registered backbone (`automl-tl backbones`).")  # fmt: skip
@click.option("--weights", type=click.Path(exists=True, dir_okay=False),
              help="Local weight file for the backbone.")  # fmt: skip
@click.option("--out", type=click.Path(), help="Bank file (default: in the cache folder).")
@click.option("--batch-size", type=LimitType("batch_size"), default=32, show_default=True,
              help="Images per forward pass.")  # fmt: skip
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@verbose_option
@clean_errors
def build(folder, backbone, weights, out, batch_size, quiet, verbose):
    """Embed every image under FOLDER (source-domain images) into a bank for BACKBONE."""
    import numpy as np

    from ..decide.banks import build_bank
    from ..plugins import get_plugins

    spec = get_plugins().backbone(backbone)
    path, bank = build_bank(folder, spec, weights, out, batch_size, quiet)
    median = float(np.median(bank.reference))
    click.echo(f"wrote {path}: {bank.description}; median nearest-neighbour cosine {median:.3f}")


@source_bank.command("show")
@click.argument("path")
@verbose_option
@clean_errors
def show(path, verbose):
    """Print what a bank file holds."""
    import numpy as np

    from ..decide.similarity import SourceBank

    bank = SourceBank.load(path)
    q = [float(x) for x in np.quantile(bank.reference, [0.05, 0.5, 0.95])]
    click.echo(
        f"{path}: backbone {bank.backbone}, {bank.kind}, {bank.description}; "
        f"nearest-neighbour cosine q05/median/q95 {q[0]:.3f}/{q[1]:.3f}/{q[2]:.3f}"
    )


COMMANDS = (source_bank,)
