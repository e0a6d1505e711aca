"""The last step of a fit: the run folder's JSON files and report.html, each written atomically
(metrics.json after model.onnx: the two together mean a finished run)."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

from ..core.files import RUN_FULL_FIX, write_atomic
from .html import write_report
from .html_kit import label_issue_items, misclassified
from .run_folder import RunFolder

__all__ = ["write_run", "issues_csv"]


def issues_csv(rows: list[dict]) -> bytes:
    """label_issues.csv: path,given,suggested,score, most likely wrong first."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "given", "suggested", "score"])
    for r in rows:
        writer.writerow([r["path"], r["given"], r["suggested"], f"{r['score']:.4f}"])
    return buf.getvalue().encode()


def write_run(
    folder: RunFolder,
    source: str | os.PathLike,
    data,
    plan,
    metrics: dict,
    pred_val,
    label_issues: list[dict] | None = None,
) -> Path:
    """plan.json, metrics.json, classes.json, audit.json, label_issues.csv (when the label
    issues were looked for) and report.html into `folder`; returns the report's path."""
    if label_issues is not None:
        write_atomic(folder.file("label_issues.csv"), issues_csv(label_issues), fix=RUN_FULL_FIX)
    for name, obj in (
        ("plan.json", plan.to_dict()),
        ("metrics.json", metrics),
        ("classes.json", data.classes),
        ("audit.json", data.report.to_dict()),
    ):
        folder.write_json(name, obj)
    where = Path(source).resolve()
    y_val = data.labels(data.val)
    page = {
        "title": f"automl-tl run: {where.name}",
        "created": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "data_path": str(where),
        "backbone": plan.backbone,
        "audit": data.report.to_dict(),
        "plan": plan.to_dict(),
        "profile": plan.profile,
        "metrics": metrics,
        "export_check": metrics.get("export_check"),
        "classes": data.classes,
        "misclassified": misclassified(
            [s.path for s in data.val], y_val, pred_val, data.classes, limit=8
        ),
        "cache": metrics.get("feature_cache"),
        "label_issues": label_issue_items(label_issues, limit=12),
    }
    return write_report(folder.path, page)
