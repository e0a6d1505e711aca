"""The last step of a fit: the run folder's JSON files and report.html, each written atomically
(metrics.json after model.onnx: the two together mean a finished run)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .html import write_report
from .html_kit import misclassified
from .run_folder import RunFolder

__all__ = ["write_run"]


def write_run(
    folder: RunFolder,
    source: str | os.PathLike,
    data,
    plan,
    metrics: dict,
    pred_val,
) -> Path:
    """plan.json, metrics.json, classes.json, audit.json and report.html into `folder`;
    returns the report's path."""
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
    }
    return write_report(folder.path, page)
