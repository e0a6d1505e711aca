"""Fine-tuning loop (cases 3, 4): learning, schedule, class weights, early stopping,
checkpoints + resume, unsafe checkpoints, DDP under torchrun, a real EfficientNet-Lite0 run."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from automl_tl.core.console import Console
from automl_tl.core.errors import AutoTLError, DataError
from automl_tl.data.batches import iter_batches
from automl_tl.data.preprocess import batch_to_float, load_for_model
from automl_tl.train import tune_full as ft
from automl_tl.train.tune_full import (
    CHECKPOINT_NAME,
    CheckpointError,
    FinetuneConfig,
    ImageDataset,
    class_weights,
    finetune,
    load_checkpoint,
    warmup_cosine,
)
from tests import ddp_finetune_script as ddp_script
from tests.helpers import TINY_CONFIG, TINY_PREP, shared_dataset, split_items, tiny_model

SCRIPT = Path(__file__).with_name("ddp_finetune_script.py")
TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on 2 busy cores, 2 OpenMP threads made small ops 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def items(digits_dir):
    """Digits 0/1/7: 12 training and 4 validation PNGs per class."""
    train, val, classes = split_items(digits_dir)
    return train, val, len(classes)


def _cfg(**changes) -> FinetuneConfig:
    return FinetuneConfig(**{**TINY_CONFIG.to_dict(), **changes})


def _run(items, ckpt, seed=0, **kwargs):
    train, val, k = items
    config = kwargs.pop("config", TINY_CONFIG)
    return finetune(tiny_model(k, seed), train, val, k, TINY_PREP, config, ckpt, **kwargs)


def _evaluate(model, val, prep):
    y = torch.tensor([label for _, label in val])
    with torch.no_grad():
        logits = torch.cat(
            [model(torch.from_numpy(b)) for b in iter_batches([p for p, _ in val], prep, 8)]
        )
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def _comparable(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _assert_same_history(a, b, tol=1e-6):
    a, b = _comparable(a), _comparable(b)
    assert [sorted(h) for h in a] == [sorted(h) for h in b]
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y, abs=tol), (x, y)


# ----------------------------------------------------------------------------- pure pieces
def test_warmup_then_cosine_per_step():
    values = [warmup_cosine(s, 4, 20) for s in range(20)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up
    assert values[4] == 1.0  # cosine starts at the peak
    assert values[12] == pytest.approx(0.5)  # half-way through the decay
    assert values[19] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))
    assert warmup_cosine(0, 0, 10) == 1.0  # no warm-up


def test_class_weights_balance_imbalanced_data():
    labels = [0] * 6 + [1] * 2 + [2] * 1
    w = class_weights(labels, 4)
    assert w.tolist() == pytest.approx([9 / (4 * 6), 9 / (4 * 2), 9 / 4, 9 / 4])
    counts = torch.bincount(torch.tensor(labels), minlength=3)[:3].float()
    assert (w[:3] * counts).tolist() == pytest.approx([9 / 4] * 3)  # every class weighs n/k


def test_config_rejects_bad_values():
    with pytest.raises(AutoTLError, match="epochs=0"):
        FinetuneConfig(epochs=0)
    with pytest.raises(AutoTLError, match="warmup_epochs=5"):
        FinetuneConfig(epochs=2, warmup_epochs=5)


def test_training_images_augmented_reproducibly_validation_as_exported(items):
    train, _, k = items
    augmented = ImageDataset(train[:2], TINY_PREP, augment=True, seed=3)
    x, label = augmented[(1, 0)]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and label == 0
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(x, augmented[(1, 0)][0])  # seeded by (seed, epoch, index)
    assert not torch.equal(x, augmented[(2, 0)][0])  # another epoch, another crop/flip/jitter
    plain = ImageDataset(train[:2], TINY_PREP, augment=False)[1][0]
    expected = batch_to_float([load_for_model(train[1][0], TINY_PREP)])[0]
    assert torch.equal(plain, torch.from_numpy(expected))  # the exported model's preprocessing
    with pytest.raises(DataError, match="outside 0..2"):
        finetune(tiny_model(k), [(train[0][0], 5)], train[:1], k, TINY_PREP, TINY_CONFIG, "x")


def test_two_parameter_groups_with_lr_ratio():
    model = tiny_model(3)
    ft._freeze_unreached(model, TINY_PREP.crop_size)
    opt = ft._make_optimizer(model, FinetuneConfig())
    backbone, head = opt.param_groups
    assert (backbone["name"], head["name"]) == ("backbone", "head")
    assert head["lr"] / backbone["lr"] == pytest.approx(10.0)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    trained = {id(p) for p in model.extractor.parameters() if p.requires_grad}
    assert {id(p) for p in backbone["params"]} == trained
    # The unused source classifier is frozen, so DDP and AdamW never see it.
    assert not any(p.requires_grad for p in model.extractor.net.classifier.parameters())


def test_init_distributed_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert ft.init_distributed() == (0, 1)
    assert not torch.distributed.is_initialized()


# ------------------------------------------------------------------------------ the loop
def test_learns_easy_data_with_schedule_and_progress(items, tmp_path):
    stream = io.StringIO()
    config = _cfg(epochs=6, patience=6, lr_head=1e-2, lr_backbone=5e-3, warmup_epochs=1)
    train, val, k = items
    model = tiny_model(k)
    rng = torch.get_rng_state()
    res = finetune(
        model, train, val, k, TINY_PREP, config, tmp_path, console=Console(stream=stream)
    )
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    assert res.model is model
    history = res.history
    assert [h["epoch"] for h in history] == list(range(1, 7)) and res.stop_reason == "epochs"
    assert max(h["val_acc"] for h in history) >= 0.75 > history[0]["val_acc"]  # chance: 1/3
    assert res.model.training is False and next(res.model.parameters()).device.type == "cpu"
    assert res.head is res.model.head
    # Per-step schedule: 36 images / batch 8 = 5 steps per epoch, 1 warm-up epoch.
    steps = 5
    for h in history:
        factor = warmup_cosine(h["epoch"] * steps, steps, 6 * steps)
        assert h["lr_head"] == pytest.approx(1e-2 * factor)
        assert h["lr_backbone"] == pytest.approx(5e-3 * factor)
    out = stream.getvalue()
    assert "epoch 1/6" in out and "img/s" in out and "val loss" in out


def test_early_stopping_keeps_the_best_epoch(items, tmp_path):
    train, val, k = items
    rng = np.random.default_rng(0)  # labels unrelated to the images: nothing to generalise
    noisy = [(p, int(y)) for (p, _), y in zip(train, rng.integers(0, k, len(train)), strict=True)]
    config = _cfg(epochs=25, patience=2)
    res = finetune(tiny_model(k), noisy, val, k, TINY_PREP, config, tmp_path)
    h = res.history
    assert res.stop_reason == "early_stopping" and len(h) < 25
    assert len(h) - res.best_epoch == config.patience
    keys = [(e["val_acc"], -e["val_loss"]) for e in h]
    assert keys[res.best_epoch - 1] == max(keys)  # best accuracy, ties: lower loss
    loss, acc = _evaluate(res.model, val, TINY_PREP)  # the returned weights are the best's
    assert acc == pytest.approx(h[res.best_epoch - 1]["val_acc"])
    assert loss == pytest.approx(h[res.best_epoch - 1]["val_loss"], abs=1e-5)
    ck = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ck["best"]["epoch"] == res.best_epoch and ck["stop_reason"] == "early_stopping"


class _Killed(Exception):
    pass


def test_checkpoint_every_epoch_and_resume_matches_uninterrupted(items, tmp_path):
    """4 epochs in one go vs 2 epochs, a crash, then resume to 4: the same run. With
    augmentation on, and the first leg using a loader worker process: each sample's
    augmentation is seeded by (seed, epoch, index), so workers do not change the result."""
    config = _cfg(epochs=4, patience=4, augment=True)
    path = tmp_path / "a" / CHECKPOINT_NAME
    seen = []

    def watch(record):  # the checkpoint on disk is already this epoch's
        seen.append((record["epoch"], load_checkpoint(path)["epoch"]))

    full = _run(items, path.parent, config=config, callback=watch)
    assert seen == [(1, 1), (2, 2), (3, 3), (4, 4)]

    def crash(record):
        if record["epoch"] == 2:
            raise _Killed

    leg1 = _cfg(epochs=4, patience=4, augment=True, num_workers=1)
    with pytest.raises(_Killed):
        _run(items, tmp_path / "b", config=leg1, callback=crash)
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["epoch"] == 2
    torch.manual_seed(1234)  # the resumed run must not depend on the global RNG
    resumed = _run(items, tmp_path / "b", seed=99, config=config, resume=True)
    assert resumed.resumed_from == 2 and full.resumed_from == 0
    _assert_same_history(resumed.history, full.history)
    assert resumed.best_epoch == full.best_epoch
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [CHECKPOINT_NAME]  # no .part
    # Resuming a finished run trains nothing and returns the same best model.
    again = _run(items, tmp_path / "b", config=config, resume=True)
    assert again.resumed_from == 4 and _comparable(again.history) == _comparable(resumed.history)


def _valid_checkpoint(items, tmp_path) -> Path:
    _run(items, tmp_path, config=_cfg(epochs=1, patience=1))
    return tmp_path / CHECKPOINT_NAME


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "foreign"])
def test_damaged_checkpoint_is_never_used(items, tmp_path, damage):
    path = tmp_path / CHECKPOINT_NAME
    if damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 100)
    elif damage == "truncated":
        data = _valid_checkpoint(items, tmp_path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a readable torch file that is not a fine-tuning checkpoint
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    stream = io.StringIO()
    res = _run(items, tmp_path, config=_cfg(epochs=2), resume=True, console=Console(True, stream))
    assert "WARNING" in stream.getvalue() and "fine-tuning from the start" in stream.getvalue()
    assert res.resumed_from == 0 and len(res.history) == 2
    assert load_checkpoint(path)["epoch"] == 2  # replaced by a good one


def _touch(path):  # what a malicious pickle would run on load
    Path(path).write_text("pwned")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


def test_checkpoint_with_pickled_object_is_refused(items, tmp_path):
    marker = tmp_path / "code-ran"
    good = load_checkpoint(_valid_checkpoint(items, tmp_path / "good"))
    path = tmp_path / CHECKPOINT_NAME
    torch.save({**good, "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint(path)
    stream = io.StringIO()
    res = _run(items, tmp_path, config=_cfg(epochs=1), resume=True, console=Console(True, stream))
    assert res.resumed_from == 0 and "cannot be read safely" in stream.getvalue()
    assert not marker.exists()
    fn, args = _Payload(marker).__reduce__()  # the payload is real: unpickling would run this
    fn(*args)
    assert marker.read_text() == "pwned"


def test_resume_refuses_other_settings_or_data(items, tmp_path):
    _valid_checkpoint(items, tmp_path)
    with pytest.raises(CheckpointError, match="lr_head=0.01 \\(now 0.5\\)"):
        _run(items, tmp_path, config=_cfg(epochs=1, lr_head=0.5), resume=True)
    train, val, k = items
    with pytest.raises(CheckpointError, match="other training/validation data"):
        finetune(tiny_model(k), train[1:], val, k, TINY_PREP, _cfg(epochs=1), tmp_path, True)


# --------------------------------------------------------------------------- distributed
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")
def test_torchrun_two_processes_match_one_process(digits_dir, tmp_path):
    """Gloo, 2 CPU processes vs 1 on the same data and global batch: the same quality
    (best validation accuracy within 0.25 = 3 of 12 images, both well above chance 1/3),
    identical replicas, and only rank 0 writes checkpoints (one per epoch)."""
    env_cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--standalone", str(SCRIPT)]
    two = subprocess.run(
        [*env_cmd, str(digits_dir), str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    single = ddp_script.run(digits_dir, tmp_path / "one")  # the same, one process
    r0, r1 = (json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == 2 and single["world"] == 1 and r0["pid"] != r1["pid"]
    assert r0["checksum"] == r1["checksum"]  # replicas end identical (BN statistics too)
    assert _comparable(r0["history"]) == _comparable(r1["history"])  # same metrics, same stop
    assert min(r0["best_val_acc"], single["best_val_acc"]) >= 0.75
    assert abs(r0["best_val_acc"] - single["best_val_acc"]) <= 0.25
    writers = (tmp_path / "two" / "writers.log").read_text().split()
    assert writers == ["0"] * len(r0["history"])
    assert sorted(p.name for p in (tmp_path / "two" / "ckpt").iterdir()) == [CHECKPOINT_NAME]
    assert load_checkpoint(tmp_path / "two" / "ckpt" / CHECKPOINT_NAME)["world_size"] == 2


# ------------------------------------------------------------------------ real backbone
def _hymenoptera_items(per_class_train: int, per_class_val: int):
    root = shared_dataset("hymenoptera_data")
    out = []
    for split, n in (("train", per_class_train), ("val", per_class_val)):
        part = []
        for label, name in enumerate(("ants", "bees")):
            files = sorted(p for p in (root / split / name).iterdir() if p.suffix == ".jpg")
            part += [(p, label) for p in files[:n]]
        out.append(part)
    return out


def test_real_efficientnet_lite0_finetunes_and_exports(tmp_path):
    """Pretrained EfficientNet-Lite0, whole network, 2 epochs on 32 real photos (ants/bees),
    then ONNX export and the onnxruntime parity check on the validation photos."""
    from automl_tl.export.check import check_parity
    from automl_tl.export.onnx import export_onnx
    from automl_tl.plugins.manager import get_plugins

    train, val = _hymenoptera_items(16, 10)
    spec = get_plugins().backbone("efficientnet_lite0")
    model = ft.build_finetune_model(spec, 2)
    before = {k: v.clone() for k, v in model.extractor.state_dict().items()}
    config = FinetuneConfig(
        epochs=2, batch_size=8, lr_head=1e-2, lr_backbone=1e-3, warmup_epochs=0, num_workers=0
    )
    res = finetune(model, train, val, 2, spec.preprocessing, config, tmp_path / "ckpt")
    assert res.history[res.best_epoch - 1]["val_acc"] >= 0.8  # chance 0.5
    after = res.model.extractor.state_dict()
    assert not torch.equal(
        after["net.model._conv_stem.weight"], before["net.model._conv_stem.weight"]
    )
    assert not torch.equal(
        after["net.model._bn1.running_mean"], before["net.model._bn1.running_mean"]
    )
    onnx_path = export_onnx(res.model, tmp_path / "model.onnx", spec.preprocessing.crop_size, {})
    batch = batch_to_float([load_for_model(p, spec.preprocessing) for p, _ in val])
    check = check_parity(res.model, onnx_path, batch)
    assert check["passed"] and check["top1_agreement"] == 1.0
    shutil.rmtree(tmp_path / "ckpt")
