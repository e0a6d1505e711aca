"""automl-tl-knn: an example third-party strategy plugin for automl-tl.

Strategy `faiss_knn`: k-nearest-neighbour classification on the cached, L2-normalised
frozen features. k is chosen on the validation split (the search runs on a faiss
IndexFlatIP, i.e. exact cosine similarity); the head that gets exported is a plain torch
module holding the normalised training features and one-hot labels as buffers, so the
ONNX model needs no faiss: cosine similarities (one matmul), top-k, and a soft vote.

It implements all three kinds of hook besides backbones:
  register_strategies(register)  adds `faiss_knn`
  select_strategy(profile)       picks `faiss_knn` for every fit when AUTOML_TL_KNN_AUTO=1
  register_commands(cli)         adds `automl-tl knn-info`
"""

from __future__ import annotations

import os
from importlib import metadata

# Only automl_tl.plugin at module level (it imports no torch): automl-tl loads plugins to
# list their commands, so `automl-tl --help` stays fast. The head (torch, faiss) is in
# automl_tl_knn.head, imported when the strategy runs.
from automl_tl.plugin import StrategySpec, hookimpl

__all__ = [
    "KNNHead",
    "NAME",
    "K_CANDIDATES",
    "TEMPERATURE",
    "AUTO_ENV",
    "fit_knn",
    "l2_normalise",
    "register_strategies",
    "select_strategy",
    "register_commands",
]

try:
    __version__ = metadata.version("automl-tl-knn")
except metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

NAME = "faiss_knn"
K_CANDIDATES = (1, 3, 5, 10, 20)  # capped at the number of training images
# Neighbour i votes with weight softmax(similarity / TEMPERATURE) over the k neighbours
# (the weighting of Wu et al. 2018 and DINO's k-NN evaluation).
TEMPERATURE = 0.07
# Output = log(vote share + EPS): softmax of it (what `automl-tl predict` reports) gives the
# vote shares back, and a class without votes gets a finite logit.
EPS = 1e-6
AUTO_ENV = "AUTOML_TL_KNN_AUTO"


def fit_knn(task):
    """The `faiss_knn` strategy: k chosen on validation, an exportable KNNHead (see
    automl_tl_knn.head.fit_knn; numpy, torch and faiss load when it runs)."""
    from .head import fit_knn as fit

    return fit(task)


def __getattr__(name: str):
    if name in ("KNNHead", "l2_normalise"):  # torch-backed, loaded on first use
        from . import head

        return getattr(head, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_strategies(register):
    """Register `faiss_knn` (case None: used only by name or via select_strategy)."""
    register(
        StrategySpec(
            name=NAME,
            description="k-nearest neighbours (cosine, soft vote) on frozen features; "
            "k chosen on validation with faiss",
            fit=fit_knn,
        )
    )


@hookimpl
def select_strategy(profile):
    """Override the planner with `faiss_knn` when AUTOML_TL_KNN_AUTO=1; otherwise None,
    which leaves the decision to the planner (and to other plugins). A real plugin would
    look at the DatasetProfile here, e.g. min(profile.per_class.values())."""
    return NAME if os.environ.get(AUTO_ENV, "").strip() == "1" else None


@hookimpl
def register_commands(cli):
    """Add `automl-tl knn-info`."""
    import click

    @cli.command("knn-info")
    def knn_info():
        """Show the automl-tl-knn plugin version and its settings."""
        import faiss

        click.echo(
            f"automl-tl-knn {__version__}: strategy {NAME}, k from {list(K_CANDIDATES)}, "
            f"temperature {TEMPERATURE}, faiss {faiss.__version__}; "
            f"{AUTO_ENV}={os.environ.get(AUTO_ENV, '') or 'unset'}"
        )
