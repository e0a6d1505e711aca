"""The analyse step: cached features of every stage, measured, and the data profiled."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from .backbone import BackboneSpec, FeatureExtractor
from .console import Console
from .data import Sample
from .embed import embed
from .features import FeatureCache
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

__all__ = ["Analysis", "analyse", "bn_drift", "stratified_subset"]


@dataclass
class Analysis:
    """A profile plus the per-stage cached rows it was computed from (rows follow `samples`);
    `images_per_second` is torch eager's, what fine-tuning would run at."""

    profile: DatasetProfile
    samples: list[Sample]
    stage_rows: list
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


def bn_drift(
    spec: BackboneSpec,
    net,
    sample: list[Sample],
    features: FeatureCache,
    limit: int = 64,
    seed: int = 0,
    console: Console | None = None,
) -> tuple[dict, float]:
    """(BatchNorm drift per stage, torch images/s) from a torch pass over a stratified subset
    of at most `limit` images (forward hooks need torch; the cached features came from
    onnxruntime). Remembered in the cache by the subset's digests and the feature space.
    The speed is what fine-tuning's time estimate needs: torch eager, not onnxruntime."""
    subset = stratified_subset(sample, limit, seed)
    key = hashlib.blake2b(
        "|".join([features.space, *sorted(s.digest for s in subset)]).encode(), digest_size=16
    ).hexdigest()
    known = features.memo.get("bn-drift-v1", key)
    if isinstance(known, dict) and "drift" in known:
        return known["drift"], float(known["torch_images_per_second"])
    extractor = FeatureExtractor(net, spec.preprocessing, len(spec.stages) - 1)
    t0 = time.perf_counter()
    with BNDriftRecorder(net, [s.name for s in spec.stages]) as bn:
        paths = [s.path for s in subset]
        embed(extractor, paths, spec.preprocessing, 32, console, "torch", label="bn-drift")
    speed = len(subset) / max(time.perf_counter() - t0, 1e-9)
    drift = bn.drift()
    features.memo.put("bn-drift-v1", key, {"drift": drift, "torch_images_per_second": speed})
    return drift, speed


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
    seed: int = 0,
    console: Console | None = None,
    features: FeatureCache | None = None,
) -> Analysis:
    """Size from the counts; similarity, source-classifier scores and stage probes from the
    cached features of every stage of (a stratified subset of) train + validation; BN drift
    from a small torch pass."""
    console = console or Console(quiet=True)
    features = features or FeatureCache(spec, net, console=console)
    profile = size_profile(*([s.label for s in part] for part in (train, val, test)))
    sample = stratified_subset(train + val, max_images, seed)
    rows = features.stage_rows(sample)
    last = rows[-1].dequantize().numpy()
    profile.feature_width = spec.stages[-1].width
    profile.bn_drift, speed = bn_drift(spec, net, sample, features, seed=seed, console=console)
    classifier = getattr(net, "classifier", None)
    if bank is None and classifier is not None:
        bank = classifier_bank(spec.name, classifier)
    if bank is not None:
        space = last
        if bank.kind == "classifier":  # class vectors live in the last linear layer's input
            space = classifier_space(classifier, last)
        profile.similarity = nn_similarity(bank, space)
    if classifier is not None:
        profile.source_classifier = classifier_scores(classifier, last)
    y = np.array([classes.index(s.label) for s in sample])
    profile.probes = probe_stages(rows, y, [s.name for s in spec.stages])
    profile.probe_n = len(sample)
    add_verdicts(profile, thresholds or Thresholds())
    return Analysis(profile, sample, rows, speed, spec.preprocessing)
