"""The measured facts about a fit's data (DatasetProfile) and the size and similarity verdicts
drawn from them, with the numbers and thresholds behind each (see decide.planner for the rules
and their derivation)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds; the defaults are derived in the module docstring."""

    size_ratio: float = 1.0
    similarity_pvalue: float = 0.5


@dataclass
class DatasetProfile:
    """Measured facts about the usable data and the verdicts drawn from them."""

    images: int
    classes: int
    per_class: dict[str, int]
    imbalance: float  # largest class / smallest class
    train_images: int
    val_images: int
    test_images: int
    feature_width: int = 0
    similarity: dict = field(default_factory=dict)
    source_classifier: dict = field(default_factory=dict)
    bn_drift: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)
    probe_n: int = 0
    size: str = ""
    similar: str = ""
    verdict_reasons: list[str] = field(default_factory=list)


def size_profile(labels_train, labels_val, labels_test) -> DatasetProfile:
    """The size half of a profile (counts only)."""
    counts = Counter(list(labels_train) + list(labels_val) + list(labels_test))
    return DatasetProfile(
        images=sum(counts.values()),
        classes=len(counts),
        per_class=dict(sorted(counts.items())),
        imbalance=max(counts.values()) / max(1, min(counts.values())),
        train_images=len(labels_train),
        val_images=len(labels_val),
        test_images=len(labels_test),
    )


def add_verdicts(profile: DatasetProfile, thresholds: Thresholds = Thresholds()) -> None:
    """Fill in size/similarity verdicts with the numbers and margins behind them."""
    head_params = profile.feature_width * profile.classes
    need = thresholds.size_ratio * head_params
    profile.size = "large" if profile.train_images >= need else "small"
    profile.verdict_reasons = [
        f"size: {profile.size}: {profile.train_images} training images vs "
        f"{need:.0f} = {thresholds.size_ratio:g} x {profile.feature_width} features x "
        f"{profile.classes} classes (the new head's parameters); ratio "
        f"{profile.train_images / max(need, 1):.2f}"
    ]
    from .similarity import similarity_evidence

    ev = similarity_evidence(
        profile.similarity,
        profile.bn_drift,
        profile.probes,
        profile.probe_n,
        thresholds.similarity_pvalue,
    )
    profile.similar = "similar" if ev["similar"] else "different"
    if profile.similarity:
        profile.similarity["verdict_evidence"] = ev
    reason = _similarity_reason(profile, ev)
    profile.verdict_reasons.append(f"similarity: {profile.similar}: {reason}")


def _similarity_reason(profile: DatasetProfile, ev: dict) -> str:
    """The formula with every number behind it."""
    yes = {True: "yes", False: "no"}
    parts = []
    if ev["source_classes"] is not None:
        sim = profile.similarity
        p, thr = ev["pvalue"], ev["pvalue_threshold"]
        parts.append(
            f"source classes {yes[ev['source_classes']]} (median p-value {p:.3f} vs "
            f"threshold {thr:g}, margin {p - thr:+.3f}; "
            f"median nearest-neighbour cosine {sim['median_score']:.3f} vs the bank's own "
            f"{sim['bank_median_score']:.3f}, {sim['bank']})"
        )
    if ev["low_level"] is not None:
        parts.append(
            f"low-level statistics {yes[ev['low_level']]} (median BatchNorm drift over "
            f"{ev['drift_stages']} stages {ev['drift_median']:.3f} vs threshold "
            f"{ev['drift_threshold']:.3f})"
        )
    if ev["probe_peak"] is not None:
        parts.append(
            f"probe peak at the last stage {yes[ev['probe_peak']]} ({ev['probe_last']} "
            f"{ev['probe_last_acc']:.3f} vs best {ev['probe_best']} {ev['probe_best_acc']:.3f}, "
            f"one standard error {ev['probe_se']:.3f})"
        )
    if not ev["measured"]:
        parts.insert(0, "not measured (no source bank, no BatchNorm statistics); assumed similar")
    rule = "(source classes or low-level statistics) and probe peak"
    return f"{rule}: " + "; ".join(parts)
