"""Dataset analysis table: the size and similarity verdicts of every shared dataset, with the
numbers and margins behind them, under two source banks: (a) the default data-free bank (the
source classifier's class vectors) and (b) an image bank built once from imagenet_sample.

    python benchmarks/analyze_datasets.py [--root DIR] [--max-analysis-images 400] [--seed 0]
        [--datasets hymenoptera_data flowers5 chest_xray mnist] [--out table.md] [--json raw.json]

Each dataset goes through the public path, `AutoTransfer(...).analyze(path)`, once per bank.
The bank columns give the p-value's own verdict (p >= threshold); the engine's verdict, which
also weighs BatchNorm drift and the probes, is what `--verdicts` prints.
imagenet_sample (flat, one image per class, no class folders) is profiled with the similarity
functions directly as a sanity row: the source domain itself should come out 'similar'. Its
image-bank p-value is measured split-half (images scored against a bank built from the other
images) because against the full bank every image would find itself.

    python benchmarks/analyze_datasets.py --verdicts [--max-analysis-images 400]

prints instead the engine's similarity verdict with the three pieces of evidence behind it
(source-class p-value, BatchNorm drift, probe peak; see automl_tl/similarity.py) for
hymenoptera_data, imagenette_subset, chest_xray, mnist and flowers5 under the default
classifier bank, and for the super-class check of tests/test_similarity_check.py (the
imagenet_sample classes grouped into 7 super-classes, analysed against the classifier bank
without those classes' own vectors).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from automl_tl import AutoTransfer
from automl_tl.data.files import expand_paths
from automl_tl.decide.banks import build_bank
from automl_tl.decide.profile import Thresholds
from automl_tl.decide.similarity import (
    BNDriftRecorder,
    SourceBank,
    classifier_bank,
    classifier_scores,
    classifier_space,
    nn_similarity,
)
from automl_tl.features.embed import embed
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.plugins.manager import get_plugins

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATASETS = ("hymenoptera_data", "flowers5", "chest_xray", "mnist")
SOURCE = "imagenet_sample"
BANKS = ("classifier", "images")


def _image_bank(root: Path, backbone: str, path: Path | None, rebuild: bool):
    """(path, bank, seconds to build or 0 when reused): the imagenet_sample bank, built once."""
    folder = root / SOURCE
    path = path or Path(tempfile.gettempdir()) / "automl-tl-bench" / f"{SOURCE}-{backbone}.npz"
    n_files = len(expand_paths([folder]))
    if path.is_file() and not rebuild:
        bank = SourceBank.load(path)
        same = bank.backbone == backbone and SOURCE in bank.description
        if same and len(bank.vectors) == n_files:
            return path, bank, 0.0
    t0 = time.perf_counter()
    path, bank = build_bank(folder, get_plugins().backbone(backbone), out=path)
    return path, bank, time.perf_counter() - t0


def _verdict(p: float, threshold: float) -> dict:
    return {
        "pvalue": p,
        "verdict": "similar" if p >= threshold else "different",
        "margin": p - threshold,
    }


def _analyse(path: Path, args, bank_path: Path | None) -> tuple[dict, object, float]:
    """(profile dict, plan, seconds) of one AutoTransfer.analyze run."""
    t0 = time.perf_counter()
    model = AutoTransfer(
        backbone=args.backbone,
        source_bank=bank_path,
        size_ratio=args.size_ratio,
        similarity_pvalue=args.similarity_pvalue,
        max_analysis_images=args.max_analysis_images,
        seed=args.seed,
        quiet=True,
    )
    plan = model.analyze(path)
    return plan.profile, plan, time.perf_counter() - t0


def dataset_row(path: Path, args, bank_path: Path, th: Thresholds) -> dict:
    """Profile one dataset under both banks."""
    runs = {"classifier": _analyse(path, args, None), "images": _analyse(path, args, bank_path)}
    p, _, _ = runs["classifier"]
    need = th.size_ratio * p["feature_width"] * p["classes"]
    drift = list(p["bn_drift"].items())
    best = max(p["probes"], key=p["probes"].get)
    row = {
        "dataset": path.name,
        "images": p["images"],
        "classes": p["classes"],
        "train_images": p["train_images"],
        "size": p["size"],
        "size_ratio": p["train_images"] / need,
        "size_margin_images": p["train_images"] - need,
        "mean_max_softmax": p["source_classifier"]["mean_max_softmax"],
        "median_neg_energy": p["source_classifier"]["median_neg_energy"],
        "bn_drift": {"first": drift[0], "middle": drift[len(drift) // 2], "last": drift[-1]},
        "probe_best": (best, p["probes"][best]),
        "probe_n": p["probe_n"],
        "banks": {},
    }
    for name, (prof, plan, seconds) in runs.items():
        sim = prof["similarity"]
        row["banks"][name] = {
            **_verdict(sim["median_pvalue"], th.similarity_pvalue),
            "engine_verdict": prof["similar"],
            "median_score": sim["median_score"],
            "bank_median_score": sim["bank_median_score"],
            "share_below_bank_q05": sim["share_below_bank_q05"],
            "case": plan.case,
            "cut": plan.cut,
            "seconds": seconds,
        }
    return row


def source_row(root: Path, args, bank: SourceBank, th: Thresholds) -> dict:
    """imagenet_sample scored with the similarity functions directly (no class folders)."""
    t0 = time.perf_counter()
    spec = get_plugins().backbone(args.backbone)
    files = expand_paths([root / SOURCE])
    rng = np.random.default_rng(args.seed)
    take = np.sort(rng.choice(len(files), min(args.max_analysis_images, len(files)), False))
    rest = np.setdiff1d(np.arange(len(files)), take)
    net = spec.build(None)
    fx = FeatureExtractor(net, spec.preprocessing, len(spec.stages) - 1)
    with BNDriftRecorder(net, [s.name for s in spec.stages]) as bn:
        feats = embed(fx, [files[i] for i in take], spec.preprocessing)[-1]
    # build_bank embeds expand_paths(folder) in order, so bank row i is files[i].
    half = SourceBank.from_vectors(
        spec.name, "images", bank.vectors[rest], f"{len(rest)} other images of {SOURCE}"
    )
    sims = {
        "classifier": nn_similarity(
            classifier_bank(spec.name, net.classifier), classifier_space(net.classifier, feats)
        ),
        "images": nn_similarity(half, feats),
    }
    sc = classifier_scores(net.classifier, feats)
    drift = list(bn.drift().items())
    seconds = time.perf_counter() - t0
    return {
        "dataset": f"{SOURCE} (sanity)",
        "images": len(files),
        "classes": len(files),
        "train_images": None,
        "size": "n/a",
        "size_ratio": None,
        "size_margin_images": None,
        "mean_max_softmax": sc["mean_max_softmax"],
        "median_neg_energy": sc["median_neg_energy"],
        "bn_drift": {"first": drift[0], "middle": drift[len(drift) // 2], "last": drift[-1]},
        "probe_best": None,
        "probe_n": len(take),
        "banks": {
            name: {
                **_verdict(s["median_pvalue"], th.similarity_pvalue),
                "median_score": s["median_score"],
                "bank_median_score": s["bank_median_score"],
                "share_below_bank_q05": s["share_below_bank_q05"],
                "case": None,
                "cut": None,
                "seconds": seconds,
            }
            for name, s in sims.items()
        },
    }


def _bank_cell(b: dict) -> str:
    return f"{b['pvalue']:.3f} {b['verdict']} ({b['margin']:+.3f})"


def _case(row: dict) -> str:
    cases = [row["banks"][b]["case"] for b in BANKS]
    if cases[0] is None:
        return "n/a"
    return str(cases[0]) if cases[0] == cases[1] else f"{cases[0]} / {cases[1]}"


def verdict_table(rows: list[dict], th: Thresholds) -> str:
    head = [
        "dataset",
        "images",
        "classes",
        f"size (train / head params, thr {th.size_ratio:g})",
        f"classifier bank: median p (margin to {th.similarity_pvalue:g})",
        f"image bank: median p (margin to {th.similarity_pvalue:g})",
        "banks agree",
        "mean max-softmax",
        "median -energy",
        "BN drift first / middle / last",
        "best k-NN probe",
        "case (clf / img bank)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        a, b = (r["banks"][k] for k in BANKS)
        size = (
            "n/a"
            if r["size_ratio"] is None
            else f"{r['size']} {r['size_ratio']:.2f} ({r['size_margin_images']:+.0f} img)"
        )
        drift = " / ".join(f"{n} {v:.2f}" for n, v in r["bn_drift"].values())
        probe = "n/a"
        if r["probe_best"]:
            probe = f"{r['probe_best'][0]} {r['probe_best'][1]:.3f} (n={r['probe_n']})"
        cells = [
            r["dataset"],
            str(r["images"]),
            str(r["classes"]),
            size,
            _bank_cell(a),
            _bank_cell(b),
            "yes" if a["verdict"] == b["verdict"] else "**no**",
            f"{r['mean_max_softmax']:.3f}",
            f"{r['median_neg_energy']:.2f}",
            drift,
            probe,
            _case(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(rows: list[dict]) -> str:
    """The raw similarity numbers behind each p-value."""
    head = ["dataset", "bank", "median NN cosine", "bank's own median", "share p<=0.05", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        for name in BANKS:
            b = r["banks"][name]
            cells = [
                r["dataset"],
                name,
                f"{b['median_score']:.3f}",
                f"{b['bank_median_score']:.3f}",
                f"{b['share_below_bank_q05']:.3f}",
                f"{b['seconds']:.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agreement(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        a, b = (r["banks"][k] for k in BANKS)
        same = a["verdict"] == b["verdict"]
        out.append(
            f"{r['dataset']}: {'agree' if same else 'DISAGREE'} - classifier bank "
            f"{a['verdict']} (p {a['pvalue']:.3f}, NN cosine {a['median_score']:.3f} vs bank's "
            f"own {a['bank_median_score']:.3f}); image bank {b['verdict']} (p {b['pvalue']:.3f}, "
            f"NN cosine {b['median_score']:.3f} vs bank's own {b['bank_median_score']:.3f})"
        )
    return out


VERDICT_DATASETS = ("hymenoptera_data", "imagenette_subset", "chest_xray", "mnist", "flowers5")


def verdict_rows(root: Path, args) -> list[dict]:
    """(dataset, profile, seconds) of the engine's verdicts, the super-class check last."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_similarity_check import SUPER_CLASSES, bank_without, write_superclass_folder

    rows = []
    for name in VERDICT_DATASETS:
        if (root / name).is_dir():
            prof, _, secs = _analyse(root / name, args, None)
            rows.append({"dataset": name, "profile": prof, "seconds": secs})
            print(f"analysed {name} in {secs:.0f}s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_superclass_folder(Path(tmp) / "superclasses")
        drop = [i for indices in SUPER_CLASSES.values() for i in indices]
        bank = bank_without(drop, Path(tmp) / "bank.npz")
        prof, _, secs = _analyse(data, args, bank)
    rows.append(
        {"dataset": "super-class check (own vectors left out)", "profile": prof, "seconds": secs}
    )
    return rows


def evidence_table(rows: list[dict]) -> str:
    yes = {True: "yes", False: "no", None: "n/a"}
    head = [
        "dataset",
        "images analysed",
        "median p (NN cosine vs bank's own)",
        "source classes",
        "median BN drift",
        "low-level",
        "last stage vs best probe (1 SE)",
        "probe peak",
        "p-value alone",
        "verdict",
        "seconds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = r["profile"]
        sim, ev = p["similarity"], p["similarity"]["verdict_evidence"]
        cells = [
            r["dataset"],
            str(p["probe_n"]),
            f"{ev['pvalue']:.3f} ({sim['median_score']:.3f} vs {sim['bank_median_score']:.3f})",
            yes[ev["source_classes"]],
            f"{ev['drift_median']:.3f}",
            yes[ev["low_level"]],
            f"{ev['probe_last']} {ev['probe_last_acc']:.3f} vs {ev['probe_best']} "
            f"{ev['probe_best_acc']:.3f} ({ev['probe_se']:.3f})",
            yes[ev["probe_peak"]],
            "similar" if ev["source_classes"] else "different",
            f"**{p['similar']}**",
            f"{r['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="shared datasets folder")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--max-analysis-images", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size-ratio", type=float, help="override the size threshold")
    ap.add_argument("--similarity-pvalue", type=float, help="override the similarity threshold")
    ap.add_argument("--bank", type=Path, help="image bank file (built from imagenet_sample)")
    ap.add_argument("--rebuild-bank", action="store_true")
    ap.add_argument("--out", type=Path, help="write the markdown tables here")
    ap.add_argument("--json", type=Path, help="write the raw numbers here")
    ap.add_argument("--verdicts", action="store_true", help="the verdict evidence table only")
    args = ap.parse_args()
    if not (args.root / SOURCE).is_dir():
        print(f"skipped: {args.root / SOURCE} is absent (pass --root DIR)")
        return 0
    overrides = {"size_ratio": args.size_ratio, "similarity_pvalue": args.similarity_pvalue}
    th = Thresholds(**{k: v for k, v in overrides.items() if v is not None})
    t_all = time.perf_counter()
    if args.verdicts:
        rows = verdict_rows(args.root, args)
        md = (
            f"backbone {args.backbone}, max_analysis_images {args.max_analysis_images}, "
            f"seed {args.seed}, default classifier bank\n\n{evidence_table(rows)}\n\n"
            f"total wall time {time.perf_counter() - t_all:.0f}s"
        )
        print(md)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(md + "\n")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2, default=str) + "\n")
        return 0
    bank_path, bank, built = _image_bank(args.root, args.backbone, args.bank, args.rebuild_bank)
    how = f"built in {built:.0f}s" if built else "reused"
    print(f"image bank: {bank_path} ({bank.description}; {how})", flush=True)
    rows = []
    for name in args.datasets:
        path = args.root / name
        if not path.is_dir():
            print(f"skipped {name}: {path} is absent")
            continue
        rows.append(dataset_row(path, args, bank_path, th))
        secs = sum(b["seconds"] for b in rows[-1]["banks"].values())
        print(f"analysed {name} under both banks in {secs:.0f}s", flush=True)
    rows.append(source_row(args.root, args, bank, th))
    md = "\n\n".join(
        [
            f"backbone {args.backbone}, max_analysis_images {args.max_analysis_images}, "
            f"seed {args.seed}, thresholds size_ratio {th.size_ratio:g}, "
            f"similarity_pvalue {th.similarity_pvalue:g}; image bank: {bank.description}",
            verdict_table(rows, th),
            detail_table(rows),
            "\n".join(f"- {line}" for line in agreement(rows)),
            f"total wall time {time.perf_counter() - t_all:.0f}s",
        ]
    )
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(md + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
