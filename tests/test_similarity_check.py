"""The similarity verdict on real data, including a set whose classes group many source
classes (the case the nearest-neighbour p-value alone gets wrong).

The super-class check: the images of `imagenet_sample` (one per ImageNet class) grouped
into dogs, birds, felids, primates, insects, snakes and road vehicles, one folder each, and
analysed against a classifier bank WITHOUT those classes' own vectors, so that only related
source classes remain (a dog photo finds wolves and foxes, never its breed). It must be
judged similar; so must hymenoptera_data and imagenette_subset; chest_xray and mnist must
be different. Numbers: docs/analysis.md, "The similarity verdict on grouped classes".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from automl_tl import AutoTransfer
from automl_tl.decide.similarity import SourceBank
from automl_tl.plugins.manager import get_plugins
from tests.helpers import shared_dataset

# ImageNet-1k class indices (= positions of imagenet_sample's files sorted by WordNet id).
SUPER_CLASSES = {
    "dogs": [*range(151, 269)],
    "birds": [*range(7, 25), *range(80, 101), *range(127, 147)],
    "felids": [*range(281, 294)],
    "primates": [*range(365, 385)],
    "insects": [*range(300, 327)],
    "snakes": [*range(52, 69)],
    "vehicles": [407, 436, 468, 511, 555, 569, 609, 627, 654, 656, 661, 675, 717, 734, 751]
    + [757, 779, 817, 864, 867, 874],
}
# A few labels each group must contain: a guard that the indices mean what the names say.
EXPECTED_LABELS = {
    "dogs": {"Chihuahua", "beagle", "Samoyed", "Mexican_hairless"},
    "birds": {"cock", "great_grey_owl", "black_grouse", "goose", "white_stork", "albatross"},
    "felids": {"tabby", "Siamese_cat", "lion", "cheetah"},
    "primates": {"orangutan", "baboon", "indri"},
    "insects": {"tiger_beetle", "bee", "ant", "lycaenid"},
    "snakes": {"thunder_snake", "sidewinder"},
    "vehicles": {"ambulance", "school_bus", "sports_car", "trolleybus", "pickup"},
}
BACKBONE = "efficientnet_lite0"


def _label(path: Path) -> str:
    return path.stem.split("_", 1)[1]  # `<wnid>_<label>.jpg`


def source_images() -> list[Path]:
    files = sorted(shared_dataset("imagenet_sample").glob("*.jpg"))
    assert len(files) == 1000, f"imagenet_sample should hold 1000 images, found {len(files)}"
    return files


def write_superclass_folder(out: Path) -> Path:
    """One class folder per super-class, holding symlinks to its imagenet_sample images."""
    files = source_images()
    for group, indices in SUPER_CLASSES.items():
        (out / group).mkdir(parents=True)
        for i in indices:
            (out / group / files[i].name).symlink_to(files[i])
    return out


def bank_without(indices: list[int], out: Path) -> Path:
    """The default classifier bank minus the rows of `indices`, saved as an .npz."""
    spec = get_plugins().backbone(BACKBONE)
    linear = [m for m in spec.build(None).classifier.modules() if isinstance(m, nn.Linear)][-1]
    keep = np.setdiff1d(np.arange(linear.out_features), indices)
    vectors = linear.weight.detach().numpy()[keep]
    description = f"{len(keep)} class vectors of the source classifier (grouped classes left out)"
    return SourceBank.from_vectors(BACKBONE, "classifier", vectors, description).save(out)


def _analyze(data: Path, limit: int, bank: Path | None = None) -> dict:
    plan = AutoTransfer(
        backbone=BACKBONE, source_bank=bank, max_analysis_images=limit, seed=0, quiet=True
    ).analyze(data)
    return plan.profile


def test_super_class_groups_name_what_they_say():
    files = source_images()
    every = [i for indices in SUPER_CLASSES.values() for i in indices]
    assert len(every) == len(set(every)) == 275  # no class in two groups
    for group, indices in SUPER_CLASSES.items():
        labels = {_label(files[i]) for i in indices}
        assert EXPECTED_LABELS[group] <= labels, (group, EXPECTED_LABELS[group] - labels)
    assert {_label(files[i]) for i in (150, 269)} == {"sea_lion", "timber_wolf"}  # dog edges


def test_super_classes_without_their_own_vectors_are_similar(tmp_path):
    data = write_superclass_folder(tmp_path / "superclasses")
    drop = [i for indices in SUPER_CLASSES.values() for i in indices]
    bank = bank_without(drop, tmp_path / "bank.npz")
    prof = _analyze(data, 400, bank)
    ev = prof["similarity"]["verdict_evidence"]
    assert prof["images"] == 275 and prof["similarity"]["bank"].startswith("725 class vectors")
    # The check is hard: without their own classes the p-value alone says 'different'.
    assert ev["source_classes"] is False and ev["pvalue"] < 0.1, ev
    assert ev["low_level"] is True and ev["probe_peak"] is True, ev
    assert prof["similar"] == "similar", prof["verdict_reasons"]
    reason = prof["verdict_reasons"][1]
    assert reason.startswith("similarity: similar: (source classes or low-level statistics)")
    assert f"median p-value {ev['pvalue']:.3f} vs threshold 0.5" in reason
    drift = f"median BatchNorm drift over 9 stages {ev['drift_median']:.3f} vs threshold 0.125"
    assert drift in reason
    assert f"vs best {ev['probe_best']} {ev['probe_best_acc']:.3f}" in reason


@pytest.mark.parametrize(
    "name,verdict",
    [
        ("hymenoptera_data", "similar"),
        ("imagenette_subset", "similar"),
        ("chest_xray", "different"),
        ("mnist", "different"),
    ],
)
def test_verdict_on_the_shared_datasets(name, verdict):
    prof = _analyze(shared_dataset(name), 160)
    assert prof["similar"] == verdict, prof["verdict_reasons"]
