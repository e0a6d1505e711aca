"""Confident learning (automl_tl.decide.label_issues): a hand-worked example, out-of-fold
probabilities, and the same flagged set as cleanlab on the same probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from automl_tl.decide.label_issues import (
    confident_joint,
    find_label_issues,
    out_of_fold_probabilities,
)

# Two classes, three images each; image 2 is labelled 0 but looks like 1, image 5 the reverse.
PROBS = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.1, 0.9], [0.7, 0.3]])
LABELS = np.array([0, 0, 0, 1, 1, 1])


def test_the_confident_joint_of_a_hand_worked_example():
    # thresholds: class 0 (0.9 + 0.8 + 0.1) / 3 = 0.6, class 1 (0.8 + 0.9 + 0.3) / 3 = 0.667;
    # image 2 reaches only class 1's, image 5 only class 0's
    np.testing.assert_allclose(confident_joint(PROBS, LABELS), [[2, 1], [1, 2]])


def test_issues_are_the_off_diagonal_images_ranked_by_self_confidence():
    issues = find_label_issues(PROBS, LABELS)
    assert issues.index.tolist() == [2, 5]  # p(given) 0.1 then 0.3
    assert issues.suggested.tolist() == [1, 0]
    np.testing.assert_allclose(issues.score, [0.9, 0.7])


def _blobs(seed: int = 0, n: int = 60, k: int = 3, flips: int = 9):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(k, 8))
    y = np.repeat(np.arange(k), n)
    x = centres[y] + rng.normal(0, 1, size=(len(y), 8))
    flipped = rng.choice(len(y), flips, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, k, flips)) % k
    return x.astype(np.float32), y, noisy, flipped


def test_out_of_fold_probabilities_come_from_heads_that_did_not_see_the_image():
    """Separable blobs with 9 labels flipped: each flipped image's most probable class is
    its TRUE class, which only a head that was not trained on its wrong label gives."""
    x, y, noisy, flipped = _blobs()
    probs = out_of_fold_probabilities(x, noisy, 3, C=1.0, folds=5, seed=0)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert (probs[flipped].argmax(1) == y[flipped]).all()
    issues = find_label_issues(probs, noisy)
    assert sorted(issues.index.tolist()) == sorted(flipped.tolist())
    assert (issues.suggested == y[issues.index]).all()


def test_the_same_issues_as_cleanlab_on_the_same_probabilities():
    cleanlab = pytest.importorskip("cleanlab.filter", reason="cleanlab (the dev extra) is absent")
    rng = np.random.default_rng(3)
    for trial in range(20):
        k = int(rng.integers(2, 6))
        n = int(rng.integers(60, 300))
        labels = rng.integers(0, k, n)
        labels[:k] = np.arange(k)  # every class present
        logits = rng.normal(0, 1, (n, k))
        logits[np.arange(n), labels] += rng.uniform(0.5, 3)
        wrong = rng.choice(n, n // 10, replace=False)
        logits[wrong] = rng.normal(0, 1, (len(wrong), k))  # some images' labels uninformative
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        ours = find_label_issues(probs, labels)
        theirs = cleanlab.find_label_issues(
            labels, probs, filter_by="prune_by_noise_rate",
            return_indices_ranked_by="self_confidence",
        )  # fmt: skip
        assert sorted(ours.index.tolist()) == sorted(np.asarray(theirs).tolist()), trial


def test_a_fit_lists_planted_label_errors_and_moves_nothing(tmp_path):
    """Three digit classes, 20 images each; two images of 1 are put in the folder of 0. The
    fit lists both in label_issues.csv, given 0 and suggested 1, first; metrics.json counts the
    list, the report shows them; both files are still where they were put."""
    import csv
    import json

    from automl_tl import AutoTransfer
    from automl_tl.data.demo import write_digits

    data = write_digits(tmp_path / "digits", per_class=20, digits=(0, 1, 7))
    planted = []
    for src in sorted((data / "1").glob("*.png"))[:2]:
        dst = data / "0" / f"planted-{src.name}"
        src.rename(dst)
        planted.append(dst)
    lite0 = dict(backbone="efficientnet_lite0", quiet=True, int8=False)  # the list, not the search
    model = AutoTransfer(out=tmp_path / "run", **lite0).fit(data)
    with open(model.run_dir_ / "label_issues.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["path"] for r in rows[:2]} == {str(p) for p in planted}
    assert [(r["given"], r["suggested"]) for r in rows[:2]] == [("0", "1"), ("0", "1")]
    assert 1 >= float(rows[0]["score"]) >= float(rows[1]["score"])
    record = json.loads((model.run_dir_ / "metrics.json").read_text())["label_issues"]
    assert record["count"] == len(rows) and record["images_checked"] == 60
    assert all(p.is_file() for p in planted)
    report = (model.run_dir_ / "report.html").read_text()
    assert "Possible label errors" in report and planted[0].name in report
    # --drop-label-issues: the flagged training images are left out of a second fit; the
    # validation images stay, so before and after are on the same images
    again = AutoTransfer(out=tmp_path / "run2", drop_label_issues=True, **lite0)
    again.fit(data)
    dropped = again.metrics_["label_issues"]["dropped"]
    val_paths = {str(s.path) for s in _val_samples(again)}
    flagged_train = [r for r in rows if r["path"] not in val_paths]
    assert dropped["images"] == len(flagged_train)
    assert dropped["after"]["validation"] == again.metrics_["validation"]["accuracy"]
    assert (
        set(dropped["before"]) == {"validation"}
        and again.metrics_["validation"]["n"] == (model.metrics_["validation"]["n"])
    )
    assert any(r.startswith(f"label issues: {len(flagged_train)} training images") for r in
               again.plan_.reasons)  # fmt: skip
    assert all(p.is_file() for p in planted)


def _val_samples(model):
    from automl_tl.core.console import Console
    from automl_tl.data.dataset import read_data

    return read_data(model.run_dir_.parent / "digits", 0.2, 0, Console(True)).val
