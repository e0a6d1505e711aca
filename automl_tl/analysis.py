"""The analyse step: embed (all stages, one pass), measure, and profile the data."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .backbone import BackboneSpec, FeatureExtractor
from .console import Console
from .data import Sample
from .embed import embed
from .planner import DatasetProfile, Thresholds, add_verdicts, size_profile
from .probe import probe_stages
from .similarity import (
    BNDriftRecorder,
    SourceBank,
    classifier_bank,
    classifier_scores,
    classifier_space,
    nn_similarity,
)

__all__ = ["Analysis", "analyse", "stratified_subset", "cut_features"]


@dataclass
class Analysis:
    """A profile plus the per-stage features it was computed from (rows follow `samples`)."""

    profile: DatasetProfile
    samples: list[Sample]
    stage_feats: list[np.ndarray]
    images_per_second: float
    spec_prep: object = None  # the Preprocessing used


def stratified_subset(samples: list[Sample], limit: int, seed: int = 0) -> list[Sample]:
    """At most `limit` samples keeping class proportions (all of them when fewer)."""
    if len(samples) <= limit:
        return list(samples)
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    labels = sorted(by_label)
    # Largest-remainder allocation of `limit`, at least one per class.
    quota = {c: limit * len(by_label[c]) / len(samples) for c in labels}
    count = {c: max(1, int(quota[c])) for c in labels}
    for c in sorted(labels, key=lambda c: quota[c] - int(quota[c]), reverse=True):
        if sum(count.values()) >= limit:
            break
        count[c] = min(len(by_label[c]), count[c] + 1)
    keep = []
    for c in labels:
        group = by_label[c]
        keep += [group[i] for i in sorted(rng.choice(len(group), count[c], replace=False))]
    return keep


def analyse(
    spec: BackboneSpec,
    net,
    train: list[Sample],
    val: list[Sample],
    test: list[Sample],
    classes: list[str],
    bank: SourceBank | None = None,
    thresholds: Thresholds | None = None,
    max_images: int = 2000,
    batch_size: int = 32,
    seed: int = 0,
    console: Console | None = None,
) -> Analysis:
    """Size from the counts; similarity, source-classifier scores, BN drift and stage probes
    from one embedding pass over (a stratified subset of) train + validation."""
    console = console or Console(quiet=True)
    profile = size_profile(*([s.label for s in part] for part in (train, val, test)))
    sample = stratified_subset(train + val, max_images, seed)
    extractor = FeatureExtractor(net, spec.preprocessing, len(spec.stages) - 1)
    t0 = time.perf_counter()
    with BNDriftRecorder(net, [s.name for s in spec.stages]) as bn:
        feats = embed(extractor, [s.path for s in sample], spec.preprocessing, batch_size, console)
    speed = len(sample) / max(time.perf_counter() - t0, 1e-9)
    profile.feature_width = spec.stages[-1].width
    profile.bn_drift = bn.drift()
    if bank is None and getattr(net, "classifier", None) is not None:
        bank = classifier_bank(spec.name, net.classifier)
    if bank is not None:
        space = feats[-1]
        if bank.kind == "classifier":  # class vectors live in the last linear layer's input
            space = classifier_space(net.classifier, feats[-1])
        profile.similarity = nn_similarity(bank, space)
    if getattr(net, "classifier", None) is not None:
        profile.source_classifier = classifier_scores(net.classifier, feats[-1])
    y = np.array([classes.index(s.label) for s in sample])
    profile.probes = probe_stages(feats, y, [s.name for s in spec.stages])
    profile.probe_n = len(sample)
    add_verdicts(profile, thresholds or Thresholds())
    return Analysis(profile, sample, feats, speed, spec.preprocessing)


def cut_features(
    analysis: Analysis,
    extractor: FeatureExtractor,
    samples: list[Sample],
    batch_size: int = 32,
    console: Console | None = None,
) -> np.ndarray:
    """Features of the extractor's cut stage for `samples`, in order: rows the analysis
    already computed are reused, only the rest run through the backbone."""
    known = {s.path: i for i, s in enumerate(analysis.samples)}
    stage = analysis.stage_feats[extractor.cut]
    rest = [s.path for s in samples if s.path not in known]
    extra = embed(extractor, rest, analysis.spec_prep, batch_size, console)[-1] if rest else None
    out = np.empty((len(samples), stage.shape[1]), dtype=np.float32)
    j = 0
    for i, s in enumerate(samples):
        if s.path in known:
            out[i] = stage[known[s.path]]
        else:
            out[i] = extra[j]
            j += 1
    return out
