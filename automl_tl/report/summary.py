"""What `automl-tl fit` and `analyze` print: a summary object made once from the fit's result,
shown as lines for people or as JSON for machines (`--json`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["FitSummary", "AnalysisSummary"]


@dataclass(frozen=True)
class FitSummary:
    """The fit in one record; `to_dict()` is the `--json` output, `text()` the human one."""

    run_dir: str
    model: str
    case: int
    strategy: str
    backbone: str
    classes: list[str]
    images_used: int
    files_skipped: int
    left_out_classes: list[str]
    val_accuracy: float
    val_balanced_accuracy: float
    export_check: dict
    fit_seconds: float
    feature_cache: dict | None
    report: str
    split: dict = field(default_factory=dict)
    val_images: int = 0
    test_accuracy: float | None = None
    test_balanced_accuracy: float | None = None
    test_images: int = 0
    calibration: dict = field(default_factory=dict)
    ood: dict = field(default_factory=dict)
    shift: list[str] = field(default_factory=list)
    int8: dict = field(default_factory=dict)
    label_issues: dict = field(default_factory=dict)
    backbones: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, result) -> FitSummary:
        """The summary of a pipeline FitResult."""
        m, report = result.metrics, result.data.report
        val, test = m["validation"], m.get("test")
        return cls(
            run_dir=str(result.run_dir),
            model=str(result.model_path),
            case=result.plan.case,
            strategy=result.plan.strategy,
            backbone=" + ".join(
                [result.plan.backbone, *filter(None, [result.plan.paired.get("backbone")])]
            ),
            classes=result.data.classes,
            images_used=len(report.samples),
            files_skipped=len(report.problems),
            left_out_classes=report.left_out_classes,
            val_accuracy=val["accuracy"],
            val_balanced_accuracy=val["balanced_accuracy"],
            export_check=result.export_check,
            fit_seconds=m["fit_seconds"],
            feature_cache=m.get("feature_cache"),
            report=str(result.report_path or ""),
            split=m.get("split") or {},
            val_images=val["n"],
            test_accuracy=test["accuracy"] if test else None,
            test_balanced_accuracy=test["balanced_accuracy"] if test else None,
            test_images=test["n"] if test else 0,
            calibration=m.get("calibration") or {},
            ood=m.get("ood") or {},
            shift=list(m.get("shift") or []),
            int8=m.get("int8") or {},
            label_issues=m.get("label_issues") or {},
            backbones=list(result.plan.backbones),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("val_images", "test_images"):
            d.pop(key)
        if d["calibration"]:  # the reliability bins are for the report
            d["calibration"] = {k: v for k, v in d["calibration"].items() if k != "reliability"}
        if self.test_accuracy is None:
            d.pop("test_accuracy"), d.pop("test_balanced_accuracy")
        return d

    def text(self) -> str:
        """The lines `automl-tl fit` prints on stdout."""
        source = self.split.get("validation_source")
        lines = [
            f"case {self.case} ({self.strategy} on {self.backbone}): validation accuracy "
            f"{self.val_accuracy:.4f}, balanced {self.val_balanced_accuracy:.4f} on "
            f"{self.val_images} images" + (f" ({source}; chose the model)" if source else "")
        ]
        if self.test_accuracy is not None:  # apart: that split chose nothing
            lines.append(
                f"test accuracy {self.test_accuracy:.4f}, balanced "
                f"{self.test_balanced_accuracy:.4f} on {self.test_images} images (held out, "
                "evaluated once after the model was chosen)"
            )
        lines += [f"leakage: {m}" for m in self.split.get("leakage_messages") or []]
        lines += [f"shift: {line}" for line in self.shift]
        if self.backbones:  # --backbone auto: what the search measured
            lines.append(
                "backbones: "
                + ", ".join(_tried(t) for t in self.backbones)
                + " (the frozen choice's accuracy cross-fitted on training + validation / on "
                "validation)"
            )
        li = self.label_issues
        if li:
            lines.append(
                f"label issues: {li['count']} of {li['images_checked']} training and "
                f"validation images look mislabelled (listed in {li['file']})"
            )
            if li.get("dropped"):
                d = li["dropped"]
                lines.append(
                    f"label issues dropped: {d['images']} training images left out; "
                    + ", ".join(
                        f"{k} accuracy {d['before'][k]:.4f} -> {d['after'][k]:.4f}"
                        for k in d["before"]
                        if k in d["after"]
                    )
                )
        lines += self._trust_lines()
        chk = self.export_check
        lines += [
            f"export check: onnxruntime vs torch on {chk['n_images']} held-out images, "
            f"max |logit diff| {chk['max_abs_diff']:.1e}, top-1 agreement "
            f"{chk['top1_agreement']:.0%}",
            f"{self.images_used} images used, {self.files_skipped} files skipped (see audit.json)",
            f"run folder: {self.run_dir}",
        ]
        return "\n".join(lines)

    def _trust_lines(self) -> list[str]:
        lines = []
        cal = self.calibration
        if cal:
            split = "test" if "test" in cal else "validation"
            block = cal[split]
            after = block["after"] if split == "test" else block["cross_fitted_after"]
            if cal.get("note"):
                return [f"calibration: {cal['note']}"] + self._ood_lines()
            lines.append(
                f"calibration: temperature {cal['temperature']} (fitted on validation); "
                f"{split} ECE {block['before']['ece']:.4f} -> {after['ece']:.4f}, NLL "
                f"{block['before']['nll']:.4f} -> {after['nll']:.4f}"
                + (" (cross-fitted)" if split == "validation" else "")
            )
        return lines + self._ood_lines()

    def _ood_lines(self) -> list[str]:
        lines = []
        ood = self.ood
        if ood:
            where = (
                f"{ood['test_flagged']:.1%} of test images flagged"
                if "test_flagged" in ood
                else f"{ood['validation_flagged_cross_fitted']:.1%} of validation images "
                "flagged (cross-fitted)"
            )
            lines.append(
                f"out-of-distribution flag: p-value <= {ood['threshold']} against "
                f"{ood['reference_images']} training images; {where}"
            )
        if self.int8:
            lines.append(self.int8.get("reason", ""))  # "int8 kept: ..." / "int8 not kept ..."
        return lines


@dataclass(frozen=True)
class AnalysisSummary:
    """The profile and the plan of `automl-tl analyze`."""

    plan: dict

    def to_dict(self) -> dict:
        return self.plan

    def text(self) -> str:
        plan, p = self.plan, self.plan["profile"]
        lines = [
            f"size: {p['size']}   similarity: {p['similar']}   ->   case {plan['case']} "
            f"({plan['strategy']}), cut '{plan['cut']}'"
        ]
        lines += [f"  - {reason}" for reason in plan["reasons"]]
        if p.get("source_classifier"):
            sc = p["source_classifier"]
            lines.append(
                f"  source classifier: mean max-softmax {sc['mean_max_softmax']:.3f}, "
                f"median energy score {sc['median_neg_energy']:.2f}"
            )
        if p.get("bn_drift"):
            drift = ", ".join(f"{k} {v:.2f}" for k, v in p["bn_drift"].items())
            lines.append(f"  BatchNorm drift per stage: {drift}")
        e = plan.get("expected_accuracy")
        if e:
            lines.append(f"  expected accuracy: {e['low']:.3f}-{e['high']:.3f} ({e['basis']})")
        return "\n".join(lines)


def _tried(t: dict) -> str:
    """One backbone of the search in the summary line."""
    if t["val_acc"] is None:
        return f"{t['backbone']} skipped (time budget)"
    cv = f"{t['cv_acc']:.4f} / " if t.get("cv_acc") is not None else ""
    status = {"chosen": " (chosen)"}.get(t["status"], "")
    if t["status"] == "skipped":  # a pair screened on validation, then not measured
        status = " (screened, skipped)"
    return f"{t['backbone']} {cv}{t['val_acc']:.4f}{status}"
