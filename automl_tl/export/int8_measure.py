"""fp32 and int8 side by side on the same validation batches, and the keep rule: int8 is kept
when it is at least `min_speedup` times as fast and loses at most `max_drop` of validation
accuracy. onnxruntime sessions and numpy only."""

from __future__ import annotations

import contextlib
import statistics
import time

import numpy as np

from ..core.stats import conformal_pvalue

__all__ = ["measure", "verdict", "flags_after"]


def measure(
    fp32, int8, images, labels, batch_size: int, repeats: int, console=None, threshold=None
) -> dict:
    """Accuracy of both models on `images`, and their speed: every full batch of the pass is
    timed for both models back to back (which goes first alternates), topped up with
    repeats of the first batch until each model has `repeats` timings; after one untimed
    warm-up run of each. Every output is computed, as a Predictor does. Images per second =
    batch size / median time."""
    names = [o.name for o in fp32.get_outputs()]
    name = "logits" if "logits" in names else names[0]
    feed = fp32.get_inputs()[0].name
    size = min(batch_size, len(images))
    chunks = [images[i : i + size] for i in range(0, len(images), size)]
    chunks += [chunks[0]] * max(0, repeats - sum(len(c) == size for c in chunks))
    models = {"fp32": fp32, "int8": int8}
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    outs: dict[str, list[list[np.ndarray]]] = {"fp32": [], "int8": []}
    for session in models.values():
        session.run(names, {feed: chunks[0]})  # warm-up: allocations, kernel choice
    total = 2 * sum(len(c) for c in chunks)
    bar = console.progress("int8 check", total) if console else contextlib.nullcontext()
    with bar as progress:
        for k, chunk in enumerate(chunks):
            for key in ("fp32", "int8") if k % 2 == 0 else ("int8", "fp32"):
                start = time.perf_counter()
                out = models[key].run(names, {feed: chunk})
                elapsed = time.perf_counter() - start
                if len(chunk) == size:
                    times[key].append(elapsed)
                if k * size < len(images):  # the pass over the images, not a top-up
                    outs[key].append(out)
                if progress is not None:
                    progress.update(len(chunk))
    got = {
        k: {n: np.concatenate([o[i] for o in v]) for i, n in enumerate(names)}
        for k, v in outs.items()
    }
    top1 = {k: v[name].argmax(1) for k, v in got.items()}
    measured = {
        "output": name,
        "batch_size": size,
        "timings": len(times["fp32"]),
        "fp32_images_per_second": size / statistics.median(times["fp32"]),
        "int8_images_per_second": size / statistics.median(times["int8"]),
        "fp32_accuracy": float(np.mean(top1["fp32"] == labels)),
        "int8_accuracy": float(np.mean(top1["int8"] == labels)),
        "top1_agreement": float(np.mean(top1["fp32"] == top1["int8"])),
    }
    for extra in ("ood_score", "ood_pvalue"):  # the OOD outputs read int8 features: how far
        if extra in names:
            diff = np.abs(got["fp32"][extra].astype(np.float64) - got["int8"][extra])
            measured[f"{extra}_max_abs_diff"] = float(diff.max())
            measured[f"{extra}_mean_abs_diff"] = float(diff.mean())
    if "ood_score" in names:  # to recount the int8 model's p-values against its own scores
        measured["_int8_ood_scores"] = got["int8"]["ood_score"]
    if threshold is not None and "ood_pvalue" in names:  # the OOD flag, as Predictor sets it
        measured["_fp32_ood_flags"] = got["fp32"]["ood_pvalue"] <= threshold
    return measured


def flags_after(measured: dict, scores: np.ndarray, threshold: float) -> None:
    """The OOD flags of the recalibrated int8 model on the validation images, against fp32's."""
    flags = conformal_pvalue(scores, scores) <= threshold
    fp32 = measured.pop("_fp32_ood_flags")
    measured["ood_flag_agreement"] = float(np.mean(flags == fp32))
    measured["fp32_ood_flagged"] = float(np.mean(fp32))
    measured["int8_ood_flagged"] = float(np.mean(flags))


def verdict(m: dict, min_speedup: float, max_drop: float) -> tuple[bool, str]:
    """The keep rule and its sentence."""
    speedup = m["int8_images_per_second"] / m["fp32_images_per_second"]
    drop = m["fp32_accuracy"] - m["int8_accuracy"]
    fast, close = speedup >= min_speedup, drop <= max_drop + 1e-9
    why = ", ".join(w for w, bad in (("too slow", not fast), ("accuracy lost", not close)) if bad)
    kept = fast and close
    flags = (
        f"; OOD p-values recounted against the int8 model's own validation scores, flags "
        f"{m['int8_ood_flagged']:.1%} vs {m['fp32_ood_flagged']:.1%} (agreeing on "
        f"{m['ood_flag_agreement']:.1%} of images)"
        if "ood_flag_agreement" in m
        else ""
    )
    return kept, (
        f"int8 {'kept' if kept else f'not kept ({why})'}: {speedup:.2f}x as fast "
        f"as fp32 ({m['int8_images_per_second']:.0f} vs {m['fp32_images_per_second']:.0f} "
        f"img/s at batch {m['batch_size']}; at least {min_speedup:g}x needed), validation "
        f"accuracy {m['int8_accuracy']:.4f} vs {m['fp32_accuracy']:.4f} on {m['n_val']} images "
        f"(drop {drop:.4f}; at most {max_drop:g} allowed){flags}"
    )
