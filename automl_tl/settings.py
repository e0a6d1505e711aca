"""Settings of one fit: every option with its default, its allowed values and its help text, in
one table. AutoTransfer's parameters, the pipeline's `Settings` and the CLI's options (their
click types check the same limits while parsing, so a bad value is refused before any work)
all come from it. Standard library only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from .core.errors import AutoTLError

__all__ = ["DEFAULT_BACKBONE", "Limit", "LIMITS", "Settings", "check_value", "flag_of"]

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class Limit:
    """What values an option takes: a number range (`low`/`high`, open or closed), choices,
    or the special forms of `--input-size`; None for no limit (strings, paths, flags)."""

    kind: str  # "int", "float", "choice", "input_size"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()

    def allowed(self) -> str:
        """The allowed values in words, for an error message."""
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind == "input_size":
            return "auto, backbone or a multiple of 32 (32 or more)"
        what = "a whole number" if self.kind == "int" else "a number"
        parts = []
        if self.low is not None:
            parts.append(f"{'above' if self.low_open else 'at least'} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'below' if self.high_open else 'at most'} {_number(self.high)}")
        return what + (" " + " and ".join(parts) if parts else "")

    def ok(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "input_size":
            if value in ("auto", "backbone"):
                return True
            try:
                n = int(value)
            except (TypeError, ValueError):
                return False
            return str(n) == str(value).strip() and n >= 32 and n % 32 == 0
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# The limits of every option that has them (None values mean "not set": always allowed).
LIMITS: dict[str, Limit] = {
    "case": Limit("int", 1, 4),
    "size_ratio": Limit("float", 0, low_open=True),
    "similarity_pvalue": Limit("float", 0, 1, low_open=True),
    "time_budget": Limit("float", 0, low_open=True),
    "max_analysis_images": Limit("int", 10),
    "finetune_epochs": Limit("int", 1),
    "finetune": Limit("choice", choices=("auto", "partial", "full")),
    "input_size": Limit("input_size"),
    "val_fraction": Limit("float", 0, 1, low_open=True, high_open=True),
    "epochs": Limit("int", 1),
    "patience": Limit("int", 1),
    "lr": Limit("float", 0, low_open=True),
    "weight_decay": Limit("float", 0),
    "batch_size": Limit("int", 1),
    "cache_dtype": Limit("choice", choices=("fp16", "int8")),
    "engine": Limit("choice", choices=("auto", "onnxruntime", "torch")),
    "seed": Limit("int", 0, 2**32 - 1),
    "top_k": Limit("int", 1),
    # automl-tl serve
    "port": Limit("int", 0, 65535),
    "max_batch": Limit("int", 1, 1024),
    "max_wait_ms": Limit("float", 0, 1000),
    "max_upload_mb": Limit("float", 0, 4096, low_open=True),
    "threads": Limit("int", 0, 1024),
}


def flag_of(name: str) -> str:
    """The command-line spelling of a parameter: time_budget -> --time-budget."""
    return "--" + name.replace("_", "-")


def check_value(name: str, value: Any, spelling: str | None = None) -> Any:
    """`value` when option `name` allows it (None always: not set); else AutoTLError naming the
    option as `spelling` (default `name=`) and the allowed values."""
    limit = LIMITS.get(name)
    if value is None or limit is None or limit.ok(value):
        return value
    said = f"{spelling} {value!r}" if spelling else f"{name}={value!r}"
    raise AutoTLError(f"{said} is not allowed; use {limit.allowed()}")


def _opt(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class Settings:
    """Everything a fit (or an analysis) is told; see AutoTransfer for the meaning of each."""

    backbone: str = _opt(
        "auto",
        "Registered backbone (`automl-tl backbones`), or auto: the frozen choice on every "
        "backbone whose weights are on this machine that fits the time budget, cheapest kept "
        "unless a bigger one validates better by more than the noise.",
    )
    weights: str | None = _opt(None, "Local weight file for the backbone.")
    allow_download: bool = _opt(False, "Let the backbone download missing weights.")
    case: int | None = _opt(None, "Force a case (1-4) instead of the planner's.")
    strategy: str | None = _opt(None, "Force a registered strategy by name.")
    source_bank: str | os.PathLike | None = _opt(None, "Source bank file (.npz).")
    size_ratio: float | None = _opt(
        None, "Threshold: large when train images >= RATIO x head parameters (default 1)."
    )
    similarity_pvalue: float | None = _opt(
        None, "Threshold of the similarity p-value (default 0.5); docs/analysis.md."
    )
    time_budget: float | None = _opt(
        None, "Seconds for the whole fit (default 1200); fine-tuning runs what fits."
    )
    max_analysis_images: int = _opt(2000, "Images embedded for the profile (a subset).")
    finetune_epochs: int = _opt(10, "Epochs of fine-tuning (cases 3 and 4).")
    finetune: str = _opt(
        "auto",
        "Cases 3/4: top stages on cached maps (partial), the whole network (full), or what "
        "trains the most within the budget (auto, with a trial epoch).",
    )
    input_size: str | int = _opt(
        "auto",
        "Input crop of full fine-tuning: auto (smaller for images far smaller than the "
        "backbone's input), backbone, or a multiple of 32; frozen heads stay at the backbone's.",
    )
    resume: bool = _opt(False, "Continue an interrupted run in --out.")
    overwrite: bool = _opt(
        False, "Replace a finished run in --out once the new one has finished (kept otherwise)."
    )
    val_fraction: float = _opt(
        0.2, "Share of each class held out for validation when the data has no val/ folder."
    )
    epochs: int = _opt(100, "Max head epochs.")
    patience: int = _opt(10, "Head epochs without gain before stopping.")
    lr: float = _opt(1e-3, "Head learning rate.")
    weight_decay: float = _opt(1e-2, "Head weight decay.")
    batch_size: int | None = _opt(None, "Images per embedding batch (default: from memory).")
    cache_dir: str | os.PathLike | None = _opt(
        None, "Feature cache folder (default: $AUTOML_TL_CACHE_DIR or ~/.cache/automl-tl)."
    )
    cache_dtype: str = _opt(
        "fp16", "How cached features are stored (int8: per-row scale, half the bytes)."
    )
    engine: str = _opt("auto", "Frozen-backbone runtime (auto: onnxruntime on CPU, torch on CUDA).")
    seed: int = _opt(0, "Seeds the validation split and training.")
    strict: bool = _opt(False, "Every data problem is an error.")
    drop_label_issues: bool = _opt(
        False,
        "Fit again without the training images label_issues.csv lists (nothing on disk "
        "changes); accuracy before and after on the same validation and test images.",
    )
    int8: bool = _opt(
        True,
        "After export, quantise the model to int8 and keep model.int8.onnx when it is at "
        "least 1.2x as fast and within 1 point of validation accuracy (measured here).",
    )
    out: str | os.PathLike | None = _opt(None, "Run folder (default: a new one in runs/).")
    quiet: bool = _opt(True, "No progress output.")

    def checked(self) -> Settings:
        """Self, when every value is allowed; else AutoTLError naming the first that is not."""
        for f in fields(self):
            check_value(f.name, getattr(self, f.name))
        if self.weights and self.backbone == "auto":
            raise AutoTLError("--weights belongs to one backbone; name it with --backbone NAME")
        if self.resume and self.overwrite:
            raise AutoTLError("resume and overwrite exclude each other; pass one of them")
        return self

    @staticmethod
    def help(name: str) -> str:
        return next(f.metadata["help"] for f in fields(Settings) if f.name == name)
