"""What the benchmark scripts share: where the real datasets are, how to call the installed
CLI, and the machine's load average (printed beside timings: a shared machine moves them).
The scripts run as `python benchmarks/NAME.py`, so this folder is on sys.path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def cli() -> list[str]:
    """The `automl-tl` command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("automl-tl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "automl_tl"]


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"
