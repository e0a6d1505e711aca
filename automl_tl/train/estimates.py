"""What each fine-tuning candidate would cost on this machine, measured before anything long
starts: a few real training steps of the whole network (at the input it would train at) and of
the top stages on cached maps, plus the embedding still to do (maps to cache, a warm start to
refit at a smaller input). The time budget and its deadline are here too: the estimates are
read against it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from ..core.console import Console
from ..core.distributed import broadcast_object
from ..core.stats import standard_error
from .model import ExportModel
from .tune_top import PartialConfig, step_rate
from .tune_top_model import map_shape, map_view, trains_from_maps
from .warm import WarmStart, cache_at_input

__all__ = [
    "DEFAULT_TIME_BUDGET",
    "MIN_EPOCHS",
    "Budget",
    "budget",
    "clock",
    "describe",
    "estimate_candidates",
    "map_cap_bytes",
    "measure_candidates",
]


DEFAULT_TIME_BUDGET = 1200.0  # seconds, analysis to export, when --time-budget is not given
MIN_EPOCHS = 2  # a candidate must fit this many epochs (the trial and one more)
SCRATCH_EPOCHS = 30  # training from random weights needs many more epochs than fine-tuning
PARTIAL_DEPTHS = (1, 2, 3)  # stages below the frozen head's lowest, trained on cached maps
MAP_CAP_ENV = "AUTOML_TL_MAP_CACHE_GB"
DEFAULT_MAP_CAP_GB = 4.0
FULL_MEASURE_BATCH = 16
FULL_MEASURE_STEPS = 2


@dataclass(frozen=True)
class Budget:
    """The fit's time budget: seconds in all, whether the user gave them, what the analysis
    and the frozen choice spent, what is kept for evaluation and export, and the
    time.monotonic() by which fine-tuning ends."""

    seconds: float
    given: bool
    spent: float
    reserve: float
    deadline: float

    def record(self) -> dict:
        return {"seconds": self.seconds, "spent_before_training": round(self.spent, 1)}

    def reason(self) -> str:
        given = "--time-budget" if self.given else "default; --time-budget"
        return (
            f"time budget: {self.seconds:.0f}s ({given} to change); {self.spent:.0f}s spent on "
            f"analysis and the frozen choice, {self.reserve:.0f}s kept for evaluation and export"
        )


def budget(time_budget: float | None, started: float) -> Budget:
    """The budget of a fit that started at time.perf_counter() `started`. Under torchrun the
    ranks take rank 0's seconds left, so that they read the estimates alike."""
    seconds = time_budget if time_budget is not None else DEFAULT_TIME_BUDGET
    spent = time.perf_counter() - started
    reserve = min(60.0, 0.05 * seconds)
    left = broadcast_object(seconds - spent - reserve)
    return Budget(seconds, time_budget is not None, spent, reserve, time.monotonic() + left)


def map_cap_bytes() -> float:
    """Largest store of cached maps one fit may create: $AUTOML_TL_MAP_CACHE_GB (default 4)."""
    text = os.environ.get(MAP_CAP_ENV, "").strip()
    try:
        gb = float(text) if text else DEFAULT_MAP_CAP_GB
    except ValueError:
        gb = DEFAULT_MAP_CAP_GB
    return max(gb, 0.0) * 1e9


def _row_bytes(width: int, dtype: str) -> int:
    return width * (1 if dtype == "int8" else 2) + (4 if dtype == "int8" else 0)


def _full_rate(net, warm: WarmStart, prep) -> float:
    """Measured training images per second of the whole network at input `prep`, stepped as
    warm fine-tuning steps it (channels_last, BatchNorm statistics frozen, AdamW): one
    warm-up step, then the fastest of `FULL_MEASURE_STEPS`. (A batch of 8 in NCHW with
    BatchNorm updating measured 25-38 img/s at 128 px where training ran at 68: mnist's
    estimate then left out fine-tuning that fitted the budget.)"""
    import copy

    model = ExportModel(warm.extractor(copy.deepcopy(net), prep), copy.deepcopy(warm.head))
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    model = model.to(memory_format=torch.channels_last)
    size = prep.crop_size
    x = torch.rand(FULL_MEASURE_BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    times = []
    for _ in range(FULL_MEASURE_STEPS + 1):
        t0 = time.perf_counter()
        loss = model(x).logsumexp(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return FULL_MEASURE_BATCH / max(min(times[1:]), 1e-9)


def estimate_candidates(
    spec,
    net,
    warm: WarmStart,
    n_train: int,
    n_val: int,
    n_maps: int,
    embed_rate: float,
    remaining: float,
    dtype: str = "fp16",
    epochs: int = PartialConfig.epochs,
    full_epochs: int = 10,
    scratch: bool = False,
    console: Console | None = None,
    maps_missing=None,
    full_preprocessing=None,
    rewarm_missing=None,
) -> list[dict]:
    """Each candidate's estimated wall time on this machine, from measured throughput, its
    expected accuracy with the basis, and whether it fits `remaining` seconds; in order of
    preference (most stages trained first), the frozen choice last.

    `embed_rate` is images/s of the frozen graph (this run's embedding, when it computed
    any); `maps_missing(after)`, when given, counts the images whose maps of stage `after`
    are not cached yet (only those are embedded). `full_preprocessing` is the input of
    full fine-tuning and training from scratch when it is smaller than the backbone's own:
    their rate is measured at it, and full fine-tuning first refits the warm start on the
    view embedded at that size (setup: the frozen graph's rate scaled by the pixel ratio, for
    the `rewarm_missing()` train + validation images not cached at that size yet; all of them
    when not given)."""
    console = console or Console(quiet=True)
    own = spec.preprocessing
    small = full_preprocessing or own
    resized = small.crop_size != own.crop_size
    cut, out = warm.stage_index, []
    band = 1.96 * standard_error(warm.val_acc, n_val)
    frozen_low = round(max(0.0, warm.val_acc - band), 4)
    at_least = {
        "low": frozen_low,
        "high": 1.0,
        "basis": "starts from the frozen head and is kept only if it validates better: at "
        "least the frozen choice's band",
    }
    with console.progress("measure", 1 + len(PARTIAL_DEPTHS), unit="candidate") as bar:
        per_image = 1.0 / _full_rate(net, warm, small)
        bar.update()
        # forward + backward per training image, forward alone (a third) per validation image
        full_epoch = per_image * (n_train + n_val / 3)
        # the warm start refitted at the smaller input: train and validation embedded again
        pixels = (own.crop_size / small.crop_size) ** 2
        todo = (rewarm_missing() if rewarm_missing else n_train + n_val) if resized else 0
        rewarm = todo / max(embed_rate * pixels, 1e-9)
        for kind, n_epochs in (("full", full_epochs), ("scratch", SCRATCH_EPOCHS)):
            if kind == "scratch" and not scratch:
                continue
            setup = rewarm if kind == "full" else 0.0
            seconds = setup + n_epochs * full_epoch
            at = f" at {small.crop_size}x{small.crop_size}" if resized else ""
            out.append(
                {
                    "candidate": kind,
                    "kind": kind,
                    "stages": f"{spec.stages[0].name}..{spec.stages[cut].name}{at}",
                    "seconds_per_epoch": round(full_epoch, 1),
                    "setup_seconds": round(setup, 1),
                    "setup_images": todo if kind == "full" else 0,  # to embed before training
                    "epochs": n_epochs,
                    "seconds": round(seconds, 1),
                    "input_size": small.crop_size,
                    "fits": setup + MIN_EPOCHS * full_epoch <= remaining,
                    "expected": at_least
                    if kind == "full"
                    else {
                        "low": 0.0,
                        "high": 1.0,
                        "basis": "random initialisation: no measurement predicts it",
                    },
                }
            )
        for k in sorted(PARTIAL_DEPTHS, reverse=True):
            after = warm.lowest - k
            if after < 0 or not trains_from_maps(net):
                bar.update()
                continue
            view = map_view(spec, after)
            top = warm.top(spec, net, after)
            top.trained_parameters(top.shape)
            # at the batch training will take: a set smaller than one batch steps it whole
            rate = step_rate(top, top.shape, min(PartialConfig.batch_size, max(n_train, 1)))
            bar.update()
            store = n_maps * _row_bytes(view.width, dtype)
            epoch_s = (n_train + n_val / 3) / rate
            todo = n_maps if maps_missing is None else maps_missing(after)
            setup = todo / max(embed_rate, 1e-9)
            fits_cap = store <= map_cap_bytes()
            out.append(
                {
                    "candidate": f"partial k={k}",
                    "kind": "partial",
                    "after": after,
                    "stages": f"{spec.stages[after + 1].name}..{spec.stages[cut].name} on "
                    f"cached {spec.stages[after].name} maps {map_shape(spec, after)}",
                    "seconds_per_epoch": round(epoch_s, 1),
                    "setup_seconds": round(setup, 1),
                    "setup_images": todo,
                    "epochs": epochs,
                    "seconds": round(setup + epochs * epoch_s, 1),
                    "map_store_mb": round(store / 1e6, 1),
                    "fits": fits_cap and setup + MIN_EPOCHS * epoch_s <= remaining,
                    "expected": at_least,
                    **(
                        {}
                        if fits_cap
                        else {
                            "why_not": f"its maps need {store / 1e9:.1f} GB, over the cap of "
                            f"{map_cap_bytes() / 1e9:.1f} GB (${MAP_CAP_ENV})"
                        }
                    ),
                }
            )
    out.append(
        {
            "candidate": f"frozen {warm.view}",
            "kind": "frozen",
            "seconds": 0.0,
            "fits": True,
            "expected": {
                "low": frozen_low,
                "high": round(min(1.0, warm.val_acc + band), 4),
                "basis": f"measured: 95% interval of the frozen head's validation accuracy on "
                f"{n_val} images",
            },
        }
    )
    return out


def describe(estimates: list[dict]) -> list[str]:
    """One line per candidate for the plan's reasons and the console."""
    lines = []
    for e in estimates:
        ex = e["expected"]
        if e["kind"] == "frozen":
            cost = "done"
        else:
            per = e["seconds_per_epoch"]
            each = f"{per:.1f}s" if per < 10 else clock(per)
            cost = f"~{clock(e['seconds'])} ({e['epochs']} epochs x {each}"
            setup = "caching maps" if e["kind"] == "partial" else "refitting the warm start"
            cost += f" + {e['setup_seconds']:.0f}s {setup})" if e.get("setup_seconds") else ")"
        fits = ""
        if not e["fits"]:
            fits = " - does not fit" + (f": {e['why_not']}" if "why_not" in e else "")
        lines.append(
            f"estimate: {e['candidate']}: {cost}; expected accuracy {ex['low']:.3f}-"
            f"{ex['high']:.3f} ({ex['basis']}){fits}"
        )
    return lines


def clock(seconds: float) -> str:
    """Seconds as the plan's reasons say them: '95s', '12m05s'."""
    seconds = int(round(seconds))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m{seconds % 60:02d}s"


def measure_candidates(
    features, warm: WarmStart, data, rate, deadline: float, settings, tuning, scratch: bool
) -> list[dict]:
    """`estimate_candidates` for this fit: `rate` is the frozen graph's embedding rate (this
    run's, or the last run's that embedded into this cache); the images still to embed come
    from the cache. Under torchrun every rank gets rank 0's estimates (they choose which
    candidate runs, and so which collective calls follow)."""
    spec, net, console = features.spec, features.net, features.console
    everything = data.everything

    def missing(after: int) -> int:
        return len(features.sibling(views=[map_view(spec, after)]).missing(everything))

    def rewarm_missing() -> int:  # train + validation images not yet embedded at `tuning`
        found = cache_at_input(features, tuning, warm.view)
        train_val = data.train + data.val
        return len(found[0].missing(train_val)) if found else len(train_val)

    estimates = estimate_candidates(
        spec,
        net,
        warm,
        len(data.train),
        len(data.val),
        len(everything),
        rate,
        deadline - time.monotonic(),
        settings.cache_dtype,
        epochs=settings.finetune_epochs,
        full_epochs=settings.finetune_epochs,
        scratch=scratch,
        console=console,
        maps_missing=missing,
        full_preprocessing=tuning,
        rewarm_missing=rewarm_missing,
    )
    return broadcast_object(estimates)
