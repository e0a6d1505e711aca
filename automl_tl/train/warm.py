"""The warm start: the frozen choice's logistic regression, which fine-tuning begins from
(linear probe, then fine-tune) and falls back to; refitted at a smaller input when full
fine-tuning runs at one (the view embedded again at that size)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..features.extractor import FeatureExtractor
from ..features.views import JOINER, frozen_views, view_named
from .logreg import fit_logreg
from .tune_top_model import top_model

__all__ = ["WarmStart", "fit_warm_start", "cache_at_input", "rewarm_at", "warm_config"]


@dataclass
class WarmStart:
    """The frozen choice a fine-tuning run starts from and falls back to."""

    head: torch.nn.Module  # logistic regression on the view (a LinearHead)
    view: str
    stage_index: int
    grid: int
    val_acc: float
    val_pred: np.ndarray
    test_pred: np.ndarray | None = None
    parts: tuple[tuple[int, int], ...] = ()  # a joined view's members; () for one stage

    @property
    def lowest(self) -> int:
        """The lowest stage the head reads: fine-tuning from maps starts below it."""
        return min(i for i, _ in self.parts) if self.parts else self.stage_index

    def extractor(self, net, preprocessing) -> FeatureExtractor:
        """`net` up to the frozen choice's stage(s), pooled as the head expects."""
        return FeatureExtractor(net, preprocessing, self.stage_index, self.grid, parts=self.parts)

    def top(self, spec, net, after: int):
        """The stages above `after` and this head, trained from stage `after`'s cached maps."""
        return top_model(spec, net, after, self.stage_index, self.grid, self.head, self.parts)


def warm_config(config):
    """The fine-tuning configuration of a run that starts from the frozen head (LP-FT).

    - The head is warm, so it learns at the backbone's rate, not 10x it.
    - BatchNorm statistics stay as the head was fitted with them.
    - No label smoothing: the head was fitted on the plain cross-entropy, and its logits are
      confident (chest_xray: mean margin 12). Under smoothing 0.1 its training loss starts at
      1.03 instead of 0.003, and the first epoch goes into shrinking logits through the
      backbone.
    - No augmentation: the head was fitted on features of the evaluation crop. The standard
      crops (35-100% of the area) and flips move what each cell of a pooled grid sees, so
      the warm head starts far from its optimum on them. A gentle policy (crops of 75-100%
      near square, no flip; data.augment.AUGMENTS["gentle"]) was measured too and is not better
      on the full datasets, though without augmentation the head already fits the training
      set (training loss 0.006-0.009) and the backbone gets little signal.

    chest_xray, frozen head block2@4x4+block3@4x4+block4@4x4 at validation 0.9855, one epoch
    of full fine-tuning at 1e-4: standard augmentation with smoothing 0.9528, without
    smoothing 0.9586; no augmentation, smoothing 0.9306; no augmentation, no smoothing
    **0.9865** (training loss 0.009, against 0.44-1.4); gentle, no smoothing 0.9836. mnist,
    16,000 training images at 128 px, the trial epoch: none 0.9860, gentle 0.9815 (warm
    start 0.9930). Only on a 250-per-class subset of mnist did gentle lead (epochs 1 / 2:
    none 0.946 / 0.985, standard 0.933 / 0.976, gentle 0.974 / 0.991; docs/finetuning.md).
    Overfitting over later epochs is left to the validation split: an epoch is kept only
    when it beats the frozen head beyond the noise.
    """
    import dataclasses

    return dataclasses.replace(
        config,
        lr_head=config.lr_backbone,
        freeze_batchnorm=True,
        label_smoothing=0.0,
        augment=False,
    )


def fit_warm_start(features, view, data, console, fitted=None, with_test: bool = True):
    """(WarmStart, C): the logistic regression on `view`'s cached rows, fitted on the
    training split with C chosen on validation (or `fitted`, that head already fitted by the
    view choice), with its validation and (`with_test`) test predictions."""
    test = data.test if with_test else []
    rows = features.rows(data.train + data.val + test, view.name)
    n_tr, n_va = len(data.train), len(data.val)
    fit = fitted
    if fit is None:
        fit = fit_logreg(
            rows.subset(np.arange(n_tr)),
            data.labels(data.train),
            rows.subset(np.arange(n_tr, n_tr + n_va)),
            data.labels(data.val),
            len(data.classes),
            console=console,
        )
    with torch.no_grad():
        pred = fit.head(rows.dequantize()).argmax(1).numpy()
    warm = WarmStart(
        fit.head.eval(),
        view.name,
        view.stage_index,
        view.grid,
        fit.val_acc,
        pred[n_tr : n_tr + n_va],
        pred[n_tr + n_va :],
        view.parts,
    )
    return warm, fit.C


def cache_at_input(features, prep, view_name: str):
    """(feature cache, view) of the frozen choice's view embedded at input `prep` (a joined
    view: its members), or None when the view has no equal at that size (its grid is larger
    than the stage's map there)."""
    spec = dataclasses.replace(features.spec, preprocessing=prep)
    views = {v.name: v for v in frozen_views(spec)}
    view = view_named(view_name, views)
    if view is None:
        return None
    members = [views[name] for name in view_name.split(JOINER)]
    return features.sibling(spec=spec, views=members), view


def rewarm_at(features, data, console):
    """prep, view name -> the warm start refitted on features at input `prep` (the view
    embedded at that size for train and validation), or None when the view has no equal
    there."""

    def rewarm(prep, view_name: str):
        found = cache_at_input(features, prep, view_name)
        if found is None:
            return None
        cache, view = found
        cache.ensure(data.train + data.val)  # collective: every rank refits the warm start
        return fit_warm_start(cache, view, data, console, with_test=False)[0]

    return rewarm
