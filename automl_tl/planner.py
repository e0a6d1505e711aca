"""DatasetProfile -> Plan: which case, which cut point, which hyper-parameters, and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from .backbone import BackboneSpec
from .errors import AutoTLError
from .train import HeadConfig

__all__ = ["DatasetProfile", "Plan", "profile_dataset", "make_plan", "CASES", "IMPLEMENTED"]

CASES = {
    1: "small + similar: freeze the backbone, train a new fully connected head",
    2: "small + different: cut the backbone early, train a head on low-level features",
    3: "large + similar: fine-tune everything from pretrained weights with a new head",
    4: "large + different: fine-tune, or retrain from scratch when that validates better",
}
IMPLEMENTED = (1,)


@dataclass
class DatasetProfile:
    """Measured facts about the usable data."""

    images: int
    classes: int
    per_class: dict[str, int]
    imbalance: float  # largest class / smallest class
    train_images: int
    val_images: int
    test_images: int


def profile_dataset(labels_train, labels_val, labels_test) -> DatasetProfile:
    counts = Counter(list(labels_train) + list(labels_val) + list(labels_test))
    per_class = dict(sorted(counts.items()))
    return DatasetProfile(
        images=sum(counts.values()),
        classes=len(counts),
        per_class=per_class,
        imbalance=max(counts.values()) / max(1, min(counts.values())),
        train_images=len(labels_train),
        val_images=len(labels_val),
        test_images=len(labels_test),
    )


@dataclass
class Plan:
    """The decision and everything needed to audit it."""

    case: int
    strategy: str
    backbone: str
    cut: str
    head: dict
    reasons: list[str] = field(default_factory=list)
    profile: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["case_description"] = CASES[self.case]
        return d


def _pick_strategy(plugins, profile, case: int | None, strategy: str | None):
    """(StrategySpec, reason): --strategy wins, then a select_strategy hook, then the case."""
    if strategy:
        return plugins.strategy(strategy), f"strategy '{strategy}' requested by the user"
    picked = plugins.select_strategy(profile)
    if picked:
        plugin, name = picked
        return plugins.strategy(name), f"plugin {plugin} selected strategy '{name}'"
    wanted = case or 1
    for spec in plugins.strategies.values():
        if spec.case == wanted:
            why = (
                f"case {wanted} requested by the user"
                if case
                else "case 1 chosen because it is the only case this version implements; "
                "size/similarity analysis does not yet choose between cases"
            )
            return spec, f"{why}; strategy '{spec.name}'"
    raise AutoTLError(f"no strategy implements case {wanted}; `automl-tl strategies` lists them")


def make_plan(
    profile: DatasetProfile,
    backbone: BackboneSpec,
    head: HeadConfig,
    plugins,
    case: int | None = None,
    strategy: str | None = None,
) -> Plan:
    """Choose the case and strategy. This version trains feature-based strategies only
    (case 1 and plugin strategies on frozen features) and says so in the reasons."""
    if case is not None and case not in CASES:
        raise AutoTLError(f"--case {case} is not a case; use 1, 2, 3 or 4")
    if case is not None and case not in IMPLEMENTED:
        raise AutoTLError(
            f"--case {case} ({CASES[case]}) is not available in this version; use --case 1"
        )
    spec, why = _pick_strategy(plugins, profile, case, strategy)
    reasons = [
        f"data: {profile.images} usable images in {profile.classes} classes "
        f"(train {profile.train_images}, validation {profile.val_images}, "
        f"test {profile.test_images}); largest/smallest class = {profile.imbalance:.2f}",
        f"backbone: {backbone.name} pretrained on {backbone.source_domain}",
        why,
    ]
    if profile.imbalance > 1.5:
        reasons.append("classes are imbalanced: the head's loss weights classes inversely to size")
    cut = backbone.stages[-1]
    reasons.append(
        f"cut point: last stage '{cut.name}' ({cut.width} features): the backbone stays "
        "frozen, so features are computed once and the head trains on them"
    )
    return Plan(
        spec.case or 1,
        spec.name,
        backbone.name,
        cut.name,
        head.to_dict(),
        reasons,
        asdict(profile),
    )
