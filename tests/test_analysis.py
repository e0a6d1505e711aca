"""The analyse step: source bank + conformal p-values, source-classifier scores, BatchNorm
drift, k-NN stage probes, the planner's verdicts and decisions, and `automl-tl analyze`."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from automl_tl.core.errors import AutoTLError
from automl_tl.core.tasks import HeadConfig
from automl_tl.data.demo import write_digits
from automl_tl.data.files import Sample
from automl_tl.data.split import stratified_subset
from automl_tl.decide.planner import _CASE_OF, _choose_cut, make_plan
from automl_tl.decide.probes import knn_loo_accuracy, probe_stages
from automl_tl.decide.profile import DatasetProfile, Thresholds, add_verdicts
from automl_tl.decide.similarity import (
    DRIFT_THRESHOLD,
    BNDriftRecorder,
    SourceBank,
    classifier_bank,
    classifier_scores,
    conformal_pvalues,
    nn_similarity,
)
from automl_tl.features.embed import embed
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.plugins.manager import get_plugins
from tests.helpers import IMAGE_SUFFIXES, assert_one_line_error, run, shared_dataset


@pytest.fixture(scope="module")
def lite0():
    spec = get_plugins().backbone("efficientnet_lite0")
    return spec, spec.build(None)


def _images(folder: Path, n: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    step = max(1, len(files) // n)
    return files[::step][:n]


# --------------------------------------------------------------------------- source bank
def _cluster(rng, n: int, centre: np.ndarray) -> np.ndarray:
    return (centre + rng.standard_normal((n, len(centre)))).astype(np.float32)


def test_bank_reference_is_sorted_leave_one_out_nearest_cosine():
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((60, 12)).astype(np.float32) * rng.uniform(0.1, 9, (60, 1))
    raw[7] = raw[3] * 5  # same direction as vector 3: both leave-one-out scores are 1
    bank = SourceBank.from_vectors("bb", "images", raw, "test")
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.sort(sims.max(1))
    np.testing.assert_allclose(bank.reference, expected, atol=1e-5)
    assert np.all(np.diff(bank.reference) >= 0) and bank.reference[-1] == pytest.approx(1)
    np.testing.assert_allclose(np.linalg.norm(bank.vectors, axis=1), 1, atol=1e-5)
    with pytest.raises(AutoTLError, match="at least 2 vectors"):
        SourceBank.from_vectors("bb", "images", raw[:1], "one")


def test_bank_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    bank = SourceBank.from_vectors("bb", "images", rng.standard_normal((50, 16)), "50 images")
    path = bank.save(tmp_path / "sub" / "bank.npz")
    assert path == tmp_path / "sub" / "bank.npz" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["bank.npz"]  # no temporary left
    back = SourceBank.load(path)
    assert (back.backbone, back.kind, back.description) == ("bb", "images", "50 images")
    np.testing.assert_array_equal(back.reference, bank.reference)
    np.testing.assert_allclose(back.vectors, bank.vectors, atol=1e-3)  # stored as float16
    queries = rng.standard_normal((10, 16))
    np.testing.assert_allclose(back.scores(queries), bank.scores(queries), atol=2e-3)


class _Payload:
    """Unpickling this would create a marker file: proof that pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_bank_with_pickled_object_array_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.npz"
    np.savez(
        path,
        vectors=np.array([_Payload(marker), _Payload(marker)], dtype=object),
        reference=np.zeros(2),
        meta=np.array([_Payload(marker)], dtype=object),
    )
    assert b"code-ran" in path.read_bytes()  # the file really holds pickles
    with pytest.raises(AutoTLError, match="is not a source bank"):
        SourceBank.load(path)
    assert not marker.exists()


def test_bank_load_refuses_a_non_bank_file(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(AutoTLError, match="source-bank build"):
        SourceBank.load(path)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(AutoTLError, match="is not a source bank"):
        SourceBank.load(tmp_path / "other.npz")


def test_conformal_pvalues_uniform_for_source_small_for_shifted():
    rng = np.random.default_rng(2)
    dim = 8
    centre = np.zeros(dim)
    centre[0] = 3.0
    bank = SourceBank.from_vectors("bb", "images", _cluster(rng, 3000, centre), "source")
    same = conformal_pvalues(bank.scores(_cluster(rng, 600, centre)), bank.reference)
    assert abs(np.median(same) - 0.5) < 0.06
    for q in (0.1, 0.25, 0.75, 0.9):  # uniform: the share below q is about q
        assert abs(np.mean(same <= q) - q) < 0.06
    other = np.zeros(dim)
    other[1] = 3.0
    shifted = conformal_pvalues(bank.scores(_cluster(rng, 600, other)), bank.reference)
    assert np.median(shifted) < 0.05
    summary = nn_similarity(bank, _cluster(rng, 600, other))
    assert summary["bank_kind"] == "images" and summary["median_pvalue"] < 0.05
    assert summary["share_below_bank_q05"] > 0.5
    assert summary["median_score"] < summary["bank_median_score"]


def test_conformal_pvalue_counts_ties_as_at_or_below():
    ref = np.array([0.1, 0.2, 0.2, 0.4])
    np.testing.assert_allclose(
        conformal_pvalues(np.array([0.0, 0.2, 0.3, 0.5]), ref), [0, 0.75, 0.75, 1]
    )


def test_classifier_bank_of_real_backbone_has_1000_class_vectors(lite0):
    spec, net = lite0
    bank = classifier_bank(spec.name, net.classifier)
    assert bank.kind == "classifier" and bank.backbone == "efficientnet_lite0"
    assert bank.vectors.shape == (1000, spec.stages[-1].width)
    assert len(bank.reference) == 1000 and "1000 class vectors" in bank.description
    with pytest.raises(AutoTLError, match="no source classifier"):
        classifier_bank("x", nn.Sequential(nn.ReLU()))


# ---------------------------------------------------------------- source classifier scores
def test_classifier_scores_real_photos_above_digits(lite0):
    spec, net = lite0
    photos = _images(shared_dataset("hymenoptera_data") / "train", 20)
    digits = _images(shared_dataset("mnist") / "train", 20)
    fx = FeatureExtractor(net, spec.preprocessing, len(spec.stages) - 1)
    got = {}
    for name, paths in (("photos", photos), ("digits", digits)):
        feats = embed(fx, paths, spec.preprocessing, 20)[-1]
        got[name] = classifier_scores(net.classifier, feats)
    assert got["photos"]["n_source_classes"] == 1000
    assert got["photos"]["mean_max_softmax"] > got["digits"]["mean_max_softmax"] + 0.1, got
    assert got["photos"]["median_neg_energy"] > got["digits"]["median_neg_energy"], got


# --------------------------------------------------------------------------- BN drift
def _set_running_stats_to_each_batch(layers):
    """Pre-hooks making every BN layer's running stats the statistics of its own input."""

    def exact(module, inputs):
        var, mean = torch.var_mean(inputs[0].double(), dim=(0, 2, 3), correction=0)
        module.running_mean.copy_(mean)
        module.running_var.copy_(var)

    return [m.register_forward_pre_hook(exact) for m in layers]


def _record(net, names, x, hooks_first=None):
    with torch.inference_mode(), BNDriftRecorder(net, names) as rec:
        net.forward_stages(x, len(names) - 1)
    for h in hooks_first or []:
        h.remove()
    return rec


@pytest.fixture(scope="module")
def lite0_drift(lite0):
    """efficientnet_lite0 with BN running stats set to the exact statistics of a batch x:
    (recorder of x, drift of x, drift of a shifted x)."""
    spec, net = lite0
    net = copy.deepcopy(net)
    names = [s.name for s in spec.stages]
    layers = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    x = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    rec = _record(net, names, x, _set_running_stats_to_each_batch(layers))
    return rec, rec.drift(), _record(net, names, x * 0.3 + 0.6).drift()


def test_bn_stage_boundaries_cover_every_layer(lite0, lite0_drift):
    spec, _ = lite0
    rec = lite0_drift[0]
    assert len(rec.boundaries) == len(spec.stages)
    assert rec.boundaries == sorted(rec.boundaries) and rec.boundaries[0] >= 1
    assert rec.boundaries[-1] == len(rec.layers) == 49


class _TinyStages(nn.Module):
    """Two conv+BN stages whose channels all vary well above BN's eps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.s0 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.s1 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU())

    def forward_stages(self, x, upto):
        maps = [self.s0(x)]
        if upto >= 1:
            maps.append(self.s1(maps[0]))
        return maps


def test_bn_drift_zero_for_exact_statistics_larger_when_shifted_tiny_net():
    net, names = _TinyStages().eval(), ["a", "b"]
    layers = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in layers:
        m.eps = 1e-12
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 4
    rec = _record(net, names, x, _set_running_stats_to_each_batch(layers))
    assert rec.boundaries == [1, 2]
    exact = rec.drift()
    assert set(exact) == {"a", "b"} and max(exact.values()) < 1e-6, exact
    shifted = _record(net, names, x * 0.3 + 2).drift()
    assert min(shifted.values()) > 0.05, shifted


def test_bn_drift_zero_for_exact_statistics_real_backbone(lite0, lite0_drift):
    _, exact, _ = lite0_drift
    assert set(exact) == {s.name for s in lite0[0].stages}
    assert max(exact.values()) < 0.01, exact


def test_bn_drift_larger_for_shifted_input_real_backbone(lite0, lite0_drift):
    names = [s.name for s in lite0[0].stages]
    _, exact, shifted = lite0_drift
    assert list(shifted) == names
    assert all(shifted[n] > exact[n] + 0.1 for n in names), (exact, shifted)
    assert exact["head"] < 1e-6


# ------------------------------------------------------------------------------ probes
def test_knn_probe_near_one_on_separable_blobs_chance_on_random_labels():
    from sklearn.datasets import make_blobs

    x, y = make_blobs(300, n_features=16, centers=3, cluster_std=1.0, random_state=0)
    assert knn_loo_accuracy(x, y) > 0.98
    rng = np.random.default_rng(0)
    noise, labels = rng.standard_normal((600, 16)), rng.integers(0, 3, 600)
    assert abs(knn_loo_accuracy(noise, labels) - 1 / 3) < 0.08


def test_probe_stages_one_score_per_stage_in_order():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    informative = rng.standard_normal((80, 4)) + y[:, None] * 6
    feats = [rng.standard_normal((80, 4)), informative, rng.standard_normal((80, 32))]
    probes = probe_stages(feats, y, ["s0", "s1", "s2"])
    assert list(probes) == ["s0", "s1", "s2"]
    assert probes["s1"] > 0.95 and probes["s0"] < 0.8 and probes["s2"] < 0.8


# ------------------------------------------------------------------- analysis subset
def _samples(counts: dict[str, int]) -> list[Sample]:
    return [Sample(Path(f"{c}/{i}.png"), c) for c, n in counts.items() for i in range(n)]


def test_stratified_subset_keeps_proportions_and_every_class():
    from collections import Counter

    samples = _samples({"a": 60, "b": 30, "c": 10})
    assert stratified_subset(samples, 500) == samples  # fewer than the limit: all of them
    sub = stratified_subset(samples, 50, seed=3)
    assert Counter(s.label for s in sub) == {"a": 30, "b": 15, "c": 5}
    assert len(set(sub)) == len(sub) and sub == stratified_subset(samples, 50, seed=3)
    assert sub != stratified_subset(samples, 50, seed=4)
    rare = _samples({"a": 5, "b": 95})
    assert Counter(s.label for s in stratified_subset(rare, 10))["a"] == 1  # never dropped


def test_stratified_subset_never_exceeds_the_limit():
    assert len(stratified_subset(_samples({"a": 10, "b": 10, "c": 10}), 20)) <= 20


# ------------------------------------------------------------------------------ planner
@pytest.fixture(scope="module")
def spec():
    return get_plugins().backbone("efficientnet_lite0")


def _profile(train=100, classes=2, width=1280, pvalue=None, probes=None, n=100):
    prof = DatasetProfile(
        images=train + 20,
        classes=classes,
        per_class={str(i): (train + 20) // classes for i in range(classes)},
        imbalance=1.0,
        train_images=train,
        val_images=20,
        test_images=0,
        feature_width=width,
        probes=probes or {"head": 0.9},
        probe_n=n,
    )
    if pvalue is not None:
        prof.similarity = {
            "bank": "test bank",
            "bank_kind": "classifier",
            "median_score": 0.3,
            "bank_median_score": 0.3,
            "median_pvalue": pvalue,
            "share_below_bank_q05": 0.0,
        }
    return prof


def _plan(spec, prof, **kw):
    return make_plan(prof, spec, HeadConfig(), get_plugins(), **kw)


def test_size_verdict_at_the_exact_threshold():
    prof = _profile(train=2560, classes=2, width=1280)
    add_verdicts(prof)
    assert prof.size == "large" and "2560 training images vs 2560" in prof.verdict_reasons[0]
    prof = _profile(train=2559, classes=2, width=1280)
    add_verdicts(prof)
    assert prof.size == "small"
    prof = _profile(train=1280, classes=2, width=1280)
    add_verdicts(prof, Thresholds(size_ratio=0.5))
    assert prof.size == "large" and "0.5 x 1280 features x 2 classes" in prof.verdict_reasons[0]
    prof = _profile(train=1279, classes=2, width=1280)
    add_verdicts(prof, Thresholds(size_ratio=0.5))
    assert prof.size == "small"


def test_similarity_verdict_at_the_pvalue_threshold():
    for p, verdict in ((0.5, "similar"), (0.4999, "different"), (0.9, "similar")):
        prof = _profile(pvalue=p)
        add_verdicts(prof)
        assert prof.similar == verdict, p
        assert f"median p-value {p:.3f} vs threshold 0.5" in prof.verdict_reasons[1]
    prof = _profile(pvalue=0.3)
    add_verdicts(prof, Thresholds(similarity_pvalue=0.3))
    assert prof.similar == "similar"
    prof = _profile(pvalue=0.29)
    add_verdicts(prof, Thresholds(similarity_pvalue=0.3))
    assert prof.similar == "different"
    prof = _profile()
    add_verdicts(prof)
    assert prof.similar == "similar" and "not measured" in prof.verdict_reasons[1]


def test_similarity_verdict_combines_pvalue_drift_and_probe_peak():
    """similar = (p-value >= 0.5 or median BN drift <= 0.125) and last probe within 1 SE."""
    late = {"stem": 0.50, "block3": 0.70, "head": 0.90}  # n=100: SE 0.030
    early = {"stem": 0.50, "block3": 0.95, "head": 0.90}  # SE 0.0218: head is 2.3 SE below
    low, high = {"stem": 0.05, "block3": 0.02, "head": 0.30}, {"stem": 0.9, "head": 0.2}
    cases = [  # (p-value, drift, probes, verdict)
        (0.6, {}, late, "similar"),
        (0.6, {}, early, "different"),  # close to source classes, yet the last stage loses
        (0.1, low, late, "similar"),  # far from every class vector, but source-like pixels
        (0.1, high, late, "different"),
        (0.1, low, early, "different"),
        (0.6, high, late, "similar"),
    ]
    for p, drift, probes, verdict in cases:
        prof = _profile(pvalue=p, probes=probes, n=100)
        prof.bn_drift = drift
        add_verdicts(prof)
        assert prof.similar == verdict, (p, drift, probes, prof.verdict_reasons[1])
        ev = prof.similarity["verdict_evidence"]
        assert ev["similar"] is (verdict == "similar")
    reason = prof.verdict_reasons[1]
    assert reason.startswith("similarity: similar: (source classes or low-level statistics)")
    assert "source classes yes (median p-value 0.600 vs threshold 0.5, margin +0.100" in reason
    assert "low-level statistics no (median BatchNorm drift over 2 stages 0.550 vs" in reason
    assert "probe peak at the last stage yes (head 0.900 vs best head 0.900" in reason
    prof = _profile(pvalue=0.1, probes=early, n=100)
    prof.bn_drift = low
    add_verdicts(prof)
    se = math.sqrt(0.95 * 0.05 / 100)
    assert (
        f"(head 0.900 vs best block3 0.950, one standard error {se:.3f})"
        in (prof.verdict_reasons[1])
    )


def test_drift_threshold_is_a_half_standard_deviation_shift():
    # KL(N(0.5, 1) || N(0, 1)) = 0.5^2 / 2, the same formula BNDriftRecorder averages.
    assert DRIFT_THRESHOLD == 0.125
    prof = _profile(probes={"stem": 0.5, "head": 0.9})
    for drift, verdict in ((0.125, "similar"), (0.1251, "different")):
        prof.bn_drift = {"stem": drift, "head": drift}
        add_verdicts(prof)  # no bank: the drift alone decides the domain evidence
        assert prof.similar == verdict, drift
        assert "p-value" not in prof.verdict_reasons[1]


def test_case_mapping_and_plans_for_the_four_cases(spec):
    assert _CASE_OF == {
        ("small", "similar"): 1,
        ("small", "different"): 2,
        ("large", "similar"): 3,
        ("large", "different"): 4,
    }
    strategies = {1: "linear_head", 2: "cut_head", 3: "finetune", 4: "finetune_or_scratch"}
    for (size, similar), case in _CASE_OF.items():
        prof = _profile(
            train=5000 if size == "large" else 50, pvalue=0.9 if similar == "similar" else 0.1
        )
        add_verdicts(prof)
        assert (prof.size, prof.similar) == (size, similar)
        plan = _plan(spec, prof)
        assert plan.case == case and plan.strategy == strategies[case]
        assert any(r.startswith(f"case {case}: ") for r in plan.reasons)
        d = plan.to_dict()
        assert d["case_description"].startswith(f"{size} + {similar}")
        assert d["profile"]["size"] == size and d["profile"]["similar"] == similar


@pytest.mark.parametrize("similar,auto,demoted", [(0.9, 3, 1), (0.1, 4, 2)])
def test_time_budget_demotes_finetuning_and_says_so(spec, similar, auto, demoted):
    prof = _profile(train=5000, pvalue=similar, probes={"stem": 0.8, "head": 0.8})
    add_verdicts(prof)
    assert _plan(spec, prof, time_budget=100, finetune_seconds=99).case == auto
    assert _plan(spec, prof).case == auto  # no budget: no demotion
    plan = _plan(spec, prof, time_budget=10, finetune_seconds=100)
    assert plan.case == demoted
    text = "\n".join(plan.reasons)
    assert "time budget 10s < estimated fine-tuning time 100s" in text
    assert f"demoted to case {demoted}" in text and f"case {auto}: " in text


def test_user_case_overrides_the_verdicts_and_the_budget(spec):
    prof = _profile(train=50, pvalue=0.9)
    add_verdicts(prof)
    plan = _plan(spec, prof, case=4, time_budget=1, finetune_seconds=1000)
    assert plan.case == 4 and plan.strategy == "finetune_or_scratch"
    assert "case 4 requested by the user (--case)" in "\n".join(plan.reasons)
    assert _plan(spec, prof, strategy="cut_head").case == 2
    with pytest.raises(AutoTLError, match="--case 5 is not a case"):
        _plan(spec, prof, case=5)


def test_cut_is_the_earliest_stage_within_one_standard_error(spec):
    probes = {"stem": 0.5, "block0": 0.80, "block1": 0.84, "block2": 0.85, "head": 0.83}
    prof = _profile(probes=probes, n=100)
    se = math.sqrt(0.85 * 0.15 / 100)  # 0.0357: the bar is 0.814
    cut, reason = _choose_cut(prof, spec)
    assert cut == "block1" and f"one standard error ({se:.3f})" in reason
    assert "best k-NN probe (block2 0.850)" in reason
    prof.probe_n = 10_000  # tighter error: only the best itself qualifies
    assert _choose_cut(prof, spec)[0] == "block2"
    prof.probe_n = 10
    assert _choose_cut(prof, spec)[0] == "block0"


def test_plan_case2_uses_the_probe_cut_and_band_contains_probe_accuracy(spec):
    probes = {"stem": 0.5, "block0": 0.80, "block1": 0.84, "block2": 0.85, "head": 0.83}
    prof = _profile(train=50, pvalue=0.1, probes=probes, n=100)
    add_verdicts(prof)
    plan = _plan(spec, prof)
    assert plan.case == 2 and plan.cut == "block1"
    band = plan.expected_accuracy
    assert band["probe_accuracy"] == 0.84 and band["low"] <= 0.84 <= band["high"] < 1
    assert band["high"] - band["low"] == pytest.approx(
        2 * 1.96 * math.sqrt(0.84 * 0.16 / 100), abs=1e-3
    )
    assert "'block1'" in band["basis"]
    prof = _profile(train=5000, pvalue=0.9, probes=probes, n=100)
    add_verdicts(prof)
    plan = _plan(spec, prof)
    assert plan.case == 3 and plan.cut == "head"
    band = plan.expected_accuracy
    assert band["low"] <= 0.83 <= band["high"] == 1.0  # fine-tuning may beat the probe


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=10, digits=(0, 1, 7))


def test_analyze_json_reports_the_profile_and_plan(digits, spec):
    res = run("analyze", digits, "--json")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    names = [s.name for s in spec.stages]
    prof = plan["profile"]
    assert prof["images"] == 30 and prof["classes"] == 3 and prof["size"] == "small"
    # digits are far from ImageNet photos: every piece of evidence says so (p-value 0.03,
    # BatchNorm drift 0.67 against 0.125)
    assert prof["similar"] == "different"
    assert plan["case"] == 2  # small + different
    assert list(prof["probes"]) == names and prof["probe_n"] == 30
    assert all(0 <= v <= 1 for v in prof["probes"].values())
    assert list(prof["bn_drift"]) == names
    assert prof["similarity"]["bank_kind"] == "classifier"
    assert 0 <= prof["similarity"]["median_pvalue"] <= 1
    assert prof["source_classifier"]["n_source_classes"] == 1000
    assert plan["cut"] in names and plan["expected_accuracy"]["low"] <= 1
    assert any(r.startswith("size: small") for r in plan["reasons"])


def test_source_bank_build_then_analyze_with_it(digits, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for f in _images(shared_dataset("imagenet_sample"), 24):
        (source / f.name).symlink_to(f)
    bank_path = tmp_path / "bank.npz"
    res = run("source-bank", "build", source, "--out", bank_path, "-q")
    assert res.returncode == 0, res.stderr
    assert f"wrote {bank_path}: 24 images from {source}" in res.stdout
    res = run("analyze", digits, "--source-bank", bank_path, "--json")
    assert res.returncode == 0, res.stderr
    sim = json.loads(res.stdout)["profile"]["similarity"]
    assert sim["bank_kind"] == "images" and sim["bank"].startswith("24 images from")


def test_bank_of_another_backbone_is_refused(digits, tmp_path):
    bank = SourceBank.from_vectors("resnet18", "images", np.eye(4, 512), "4 images")
    path = bank.save(tmp_path / "r18.npz")
    assert_one_line_error(
        run("analyze", digits, "--source-bank", path, "-q"),
        "built for backbone resnet18, not efficientnet_lite0",
        "--backbone efficientnet_lite0",
    )


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "convnext_tiny"])
def test_classifier_bank_space_for_non_linear_source_classifiers(name):
    """MobileNetV3's classifier has a hidden layer and ConvNeXt's a LayerNorm: the class
    vectors are compared with the last linear layer's input, not the pooled features."""
    from automl_tl.decide.similarity import classifier_bank, classifier_space, nn_similarity

    spec = get_plugins().backbone(name)
    net = spec.build(pretrained=False)
    feats = np.random.default_rng(0).random((6, spec.stages[-1].width)).astype(np.float32)
    space = classifier_space(net.classifier, feats)
    bank = classifier_bank(name, net.classifier)
    assert space.shape == (6, bank.vectors.shape[1])
    assert 0.0 <= nn_similarity(bank, space)["median_pvalue"] <= 1.0
