"""Embedding sharded over 2 torchrun processes equals the single-process embedding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from automl_tl.backbone import FeatureExtractor
from automl_tl.demo import write_digits
from automl_tl.embed import embed
from automl_tl.inference import expand_paths
from automl_tl.plugins import get_plugins

SCRIPT = Path(__file__).with_name("ddp_embed_script.py")


def test_two_process_embedding_matches_one_process(tmp_path):
    data = write_digits(tmp_path / "d", per_class=5, digits=(2, 3))  # 10 images: uneven shards
    (data / "3" / "0004.png").unlink()  # 9 images: ranks get 5 and 4
    out = tmp_path / "feats.npy"
    torchrun = Path(sys.executable).with_name("torchrun")
    res = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(data), str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "world 2 rows 9" in res.stdout
    spec = get_plugins().backbone("efficientnet_lite0")
    fx = FeatureExtractor(spec.build(), spec.preprocessing, len(spec.stages) - 1)
    with torch.inference_mode():
        single = np.concatenate(embed(fx, expand_paths([data]), spec.preprocessing, 4), axis=1)
    np.testing.assert_allclose(np.load(out), single, atol=1e-4)


def test_fit_under_torchrun_two_processes(tmp_path):
    """`torchrun -m automl_tl fit --case 3`: DDP fine-tuning, rank 0 writes one run folder
    whose model passes the export check, with validation accuracy close to one process."""
    import json

    data = write_digits(tmp_path / "d", per_class=10, digits=(0, 1))
    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["fit", str(data), "--case", "3", "--finetune-epochs", "2", "--json", "-q"]
    two = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "automl_tl", *common,
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    cli = str(Path(sys.executable).with_name("automl-tl"))
    one = subprocess.run([cli, *common, "--out", str(tmp_path / "one")], capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    s2, s1 = json.loads(two.stdout), json.loads(one.stdout)
    assert s2["case"] == 3 and s2["export_check"]["passed"]
    assert abs(s2["val_accuracy"] - s1["val_accuracy"]) <= 0.25  # 1 of 4 validation images
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.suffix == ".json") == [
        "audit.json",
        "classes.json",
        "metrics.json",
        "plan.json",
    ]
