"""The analyse step: cached features of every stage, measured, and the data profiled."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np

from ..core.console import Console
from ..core.contract import BackboneSpec
from ..data.files import Sample
from ..data.split import stratified_subset
from ..features.cache import FeatureCache
from ..features.embed import embed
from ..features.extractor import FeatureExtractor
from .probes import probe_stages
from .profile import DatasetProfile, Thresholds, add_verdicts, size_profile
from .similarity import (
    BNDriftRecorder,
    SourceBank,
    classifier_bank,
    classifier_scores,
    classifier_space,
    nn_similarity,
)

__all__ = ["Analysis", "analyse", "bn_drift"]


@dataclass
class Analysis:
    """A profile plus the per-stage cached rows it was computed from (rows follow `samples`;
    None when the measurements were remembered from an earlier run on the same content);
    `images_per_second` is torch eager's, what fine-tuning would run at."""

    profile: DatasetProfile
    samples: list[Sample]
    stage_rows: list | None
    images_per_second: float
    spec_prep: object = None  # the Preprocessing used


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
        # alone in every process (no collective): whether a rank measures at all depends on
        # the memo, which another rank may have written a moment before
        embed(extractor, paths, spec.preprocessing, 32, console, "torch", label="bn-drift",
              shard=False)  # fmt: skip
    speed = len(subset) / max(time.perf_counter() - t0, 1e-9)
    drift = bn.drift()
    features.memo.put("bn-drift-v1", key, {"drift": drift, "torch_images_per_second": speed})
    return drift, speed


_MEASURED_NS = "analysis-measured-v1"
_MEASURED = ("similarity", "source_classifier", "bn_drift", "probes", "probe_n")


def _measured_key(
    features: FeatureCache, sample: list[Sample], classes: list[str], net, seed: int
) -> str:
    """What the measured part of a profile depends on, as a sha256: the feature space (backbone
    weights, preprocessing, views), the analysed samples in order with their labels, the class
    order, the seed (BN drift's subset), the source classifier's weights (the default bank)
    and this code's version."""
    from .. import __version__

    h = hashlib.sha256()
    head = [_MEASURED_NS, __version__, features.space, classes, seed]
    h.update(json.dumps(head + [[s.digest, s.label] for s in sample]).encode())
    classifier = getattr(net, "classifier", None)
    if classifier is not None:
        for name, t in sorted(classifier.state_dict().items()):
            t = t.detach().float().cpu().contiguous()
            h.update(f"|{name}|{tuple(t.shape)}|".encode() + t.numpy().tobytes())
    return h.hexdigest()


def _remembered(value) -> dict | None:
    """A remembered measurement as stored by analyse(), else None (unknown or not ours)."""
    try:
        known = json.loads(value["json"])
    except (TypeError, KeyError, ValueError):
        return None
    return (
        known
        if isinstance(known, dict) and set(known) == {*_MEASURED, "images_per_second"}
        else None
    )


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
    from a small torch pass.

    The measured part (not the verdicts, which depend on `thresholds`) is remembered in the
    cache's memo by content when the default bank is used, so a warm re-run skips it; a cold
    run uses the same JSON round trip of its numbers, so both plan alike."""
    console = console or Console(quiet=True)
    features = features or FeatureCache(spec, net, console=console)
    profile = size_profile(*([s.label for s in part] for part in (train, val, test)))
    sample = stratified_subset(train + val, max_images, seed)
    profile.feature_width = spec.stages[-1].width
    key = _measured_key(features, sample, classes, net, seed) if bank is None else None
    known = _remembered(features.memo.get(_MEASURED_NS, key)) if key else None
    if known is not None:
        for name in _MEASURED:
            setattr(profile, name, known[name])
        add_verdicts(profile, thresholds or Thresholds())
        speed = float(known["images_per_second"])
        return Analysis(profile, sample, None, speed, spec.preprocessing)
    rows = features.stage_rows(sample)
    last = rows[-1].dequantize().numpy()
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
    record = {name: getattr(profile, name) for name in _MEASURED}
    try:  # kept as one JSON text: the memo sorts keys, and the probes' order is meaningful
        text = json.dumps({**record, "images_per_second": speed})
    except (TypeError, ValueError):  # not plain JSON: used as computed, not remembered
        key = None
    else:  # the numbers as JSON gives them back, so a later warm run plans the same
        back = json.loads(text)
        for name in _MEASURED:
            setattr(profile, name, back[name])
    if key:
        features.memo.put(_MEASURED_NS, key, {"json": text})
    add_verdicts(profile, thresholds or Thresholds())
    return Analysis(profile, sample, rows, speed, spec.preprocessing)
