"""How close is the target data to the backbone's source domain?

Primary measure: FAISS nearest-neighbour search of L2-normalised target embeddings
against a *source reference bank*. The bank carries its own score distribution: the
leave-one-out nearest-neighbour similarity of every bank vector to the rest of the bank.
Each target image gets a conformal p-value (the share of bank scores at or below its
score), and the dataset is 'similar' when its median p-value reaches 0.5, i.e. when the
typical target image sits as close to the bank as the typical bank vector sits to its
own nearest neighbour. Under the null hypothesis "target = source" the p-values are
uniform and their median is 0.5, so the threshold follows from the bank alone.

The default bank needs no external data: the source classifier's class vectors (one
prototype per source class). An image bank can be built from any folder of source-domain
images (`automl-tl source-bank build`).

Secondary measures that need only the checkpoint: maximum softmax probability and
energy of the source classifier, and BatchNorm statistics drift per stage.

The verdict (`similarity_evidence`, used by the planner) does not rest on the
nearest-neighbour p-value alone. Class vectors are discriminative: a photo lines up with its
own class's vector and is almost orthogonal to the others, so photos whose classes group or
miss source classes (cats vs dogs, a breed that is not an ImageNet class) score as far from
the bank as X-rays do (docs/analysis.md measures it). Three pieces of evidence are combined:

- source classes: median p-value >= the threshold (0.5), as above;
- low-level statistics: the median over stages of the BatchNorm drift is at most
  `DRIFT_THRESHOLD` (0.125 = the KL divergence d^2/2 of a mean shift of d = 0.5 source
  standard deviations, a "medium" effect). BatchNorm statistics describe the whole source
  distribution, not its classes, so grouping classes does not move them;
- probe peak: the last stage's k-NN probe is within one binomial standard error of the best
  stage's (the noise rule the cut point uses): the source's most specific features separate
  the target classes as well as any earlier stage.

similar = (source classes OR low-level statistics) AND probe peak; evidence that was not
measured (no bank, a backbone without BatchNorm, no probes) is left out of the formula.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import AutoTLError

__all__ = [
    "SourceBank",
    "classifier_bank",
    "classifier_space",
    "image_bank",
    "nn_similarity",
    "conformal_pvalues",
    "classifier_scores",
    "BNDriftRecorder",
    "default_bank_dir",
    "similarity_evidence",
    "DRIFT_THRESHOLD",
]

# KL(N(d, 1) || N(0, 1)) = d^2 / 2 for a mean shift of d = 0.5 standard deviations.
DRIFT_THRESHOLD = 0.5**2 / 2


def default_bank_dir() -> Path:
    """$AUTOML_TL_CACHE_DIR/banks, else the user cache folder."""
    base = os.environ.get("AUTOML_TL_CACHE_DIR") or (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "automl-tl"
    )
    return Path(base) / "banks"


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _index(vectors: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


@dataclass
class SourceBank:
    """Normalised source vectors and their leave-one-out nearest-neighbour scores (sorted)."""

    backbone: str
    kind: str  # "classifier" or "images"
    vectors: np.ndarray
    reference: np.ndarray
    description: str

    @classmethod
    def from_vectors(cls, backbone: str, kind: str, vectors, description: str) -> SourceBank:
        vectors = _normalise(vectors)
        if len(vectors) < 2:
            raise AutoTLError("a source bank needs at least 2 vectors; give more source images")
        scores, _ = _index(vectors).search(vectors, 2)
        return cls(backbone, kind, vectors, np.sort(scores[:, 1]), description)

    def save(self, path: str | os.PathLike) -> Path:
        """Write an .npz (no pickle) atomically."""
        from ..core.files import publish

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"backbone": self.backbone, "kind": self.kind, "description": self.description}
        tmp = path.with_name(path.name + ".part.npz")
        np.savez(
            tmp,
            vectors=self.vectors.astype(np.float16),
            reference=self.reference,
            meta=np.array(json.dumps(meta)),
        )
        publish(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SourceBank:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                vectors, reference = z["vectors"].astype(np.float32), z["reference"]
            return cls(meta["backbone"], meta["kind"], vectors, reference, meta["description"])
        except (OSError, ValueError, KeyError, TypeError) as e:  # meta without those keys too
            raise AutoTLError(
                f"'{path}' is not a source bank ({e}); build one with "
                "`automl-tl source-bank build --backbone NAME DIR`"
            ) from None

    def scores(self, feats: np.ndarray) -> np.ndarray:
        """Cosine similarity of each feature to its nearest bank vector."""
        sims, _ = _index(self.vectors).search(_normalise(feats), 1)
        return sims[:, 0]


def classifier_bank(backbone: str, classifier: nn.Module) -> SourceBank:
    """The data-free default: the rows of the source classifier's last linear layer."""
    linear = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise AutoTLError(f"backbone {backbone} has no source classifier to build a bank from")
    weights = linear[-1].weight.detach().float().cpu().numpy()
    return SourceBank.from_vectors(
        backbone, "classifier", weights, f"{len(weights)} class vectors of the source classifier"
    )


def classifier_space(classifier: nn.Module, feats: np.ndarray) -> np.ndarray:
    """The input of the classifier's last linear layer for these pooled features: the space
    its class vectors live in (the features themselves for a plain linear classifier, after
    e.g. a LayerNorm or a hidden layer otherwise)."""
    last = [m for m in classifier.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach()))
    try:
        with torch.inference_mode():
            for chunk in np.array_split(np.asarray(feats, np.float32), max(1, len(feats) // 1024)):
                classifier.eval()(torch.from_numpy(chunk))
    finally:
        handle.remove()
    return torch.cat(captured).reshape(len(feats), -1).float().numpy()


def image_bank(backbone: str, feats: np.ndarray, folder: str) -> SourceBank:
    """A bank of pooled embeddings of source-domain images."""
    return SourceBank.from_vectors(backbone, "images", feats, f"{len(feats)} images from {folder}")


def nn_similarity(bank: SourceBank, feats: np.ndarray) -> dict:
    """Target scores against the bank, conformal p-values and their summary."""
    scores = bank.scores(feats)
    pvals = conformal_pvalues(scores, bank.reference)
    return {
        "bank": bank.description,
        "bank_kind": bank.kind,
        "median_score": float(np.median(scores)),
        "bank_median_score": float(np.median(bank.reference)),
        "median_pvalue": float(np.median(pvals)),
        "share_below_bank_q05": float(np.mean(pvals <= 0.05)),
    }


def similarity_evidence(
    similarity: dict,
    bn_drift: dict,
    probes: dict,
    probe_n: int,
    pvalue_threshold: float = 0.5,
    drift_threshold: float = DRIFT_THRESHOLD,
) -> dict:
    """The three pieces of evidence behind the similarity verdict (see the module docstring),
    each None when not measured, the numbers behind each, and the verdict itself."""
    ev: dict = {"source_classes": None, "low_level": None, "probe_peak": None}
    if similarity:
        p = float(similarity["median_pvalue"])
        ev.update(pvalue=p, pvalue_threshold=pvalue_threshold)
        ev["source_classes"] = p >= pvalue_threshold
    if bn_drift:
        drift = float(np.median(list(bn_drift.values())))
        ev.update(drift_median=drift, drift_stages=len(bn_drift), drift_threshold=drift_threshold)
        ev["low_level"] = drift <= drift_threshold
    if probes and len(probes) > 1:
        names = list(probes)
        best = max(names, key=probes.get)
        se = float(np.sqrt(max(probes[best] * (1 - probes[best]), 1e-12) / max(probe_n, 1)))
        last = names[-1]
        ev.update(probe_best=best, probe_best_acc=probes[best], probe_last=last)
        ev.update(probe_last_acc=probes[last], probe_se=se)
        ev["probe_peak"] = probes[last] >= probes[best] - se
    domain = [ev[k] for k in ("source_classes", "low_level") if ev[k] is not None]
    ev["measured"] = bool(domain)
    ev["similar"] = (any(domain) if domain else True) and ev["probe_peak"] is not False
    return ev


def conformal_pvalues(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Share of reference scores <= each score (reference sorted ascending); low = unusual."""
    return np.searchsorted(reference, scores, side="right") / len(reference)


def classifier_scores(classifier: nn.Module, feats: np.ndarray) -> dict:
    """Maximum softmax probability and energy (logsumexp of logits) of the source classifier."""
    with torch.inference_mode():
        logits = classifier(torch.from_numpy(np.asarray(feats, dtype=np.float32))).double()
    msp = torch.softmax(logits, 1).max(1).values.numpy()
    energy = torch.logsumexp(logits, 1).numpy()
    return {
        "n_source_classes": int(logits.shape[1]),
        "mean_max_softmax": float(msp.mean()),
        "median_max_softmax": float(np.median(msp)),
        "median_neg_energy": float(np.median(energy)),
    }


class BNDriftRecorder:
    """Forward hooks on every BatchNorm2d: per channel, how far the target activations,
    standardised with the layer's *source* running statistics, are from N(0, 1).

    drift = mean over channels of KL(N(m, v) || N(0, 1)) = (v + m^2 - 1 - ln v) / 2, which
    is 0 for data distributed like the source. Layers are grouped by the stage they run in.
    """

    def __init__(self, net: nn.Module, stage_names: list[str]):
        self.layers = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        self.stage_names = stage_names
        self.boundaries = self._stage_boundaries(net)
        self._sums = [None] * len(self.layers)
        self._handles = []

    def _stage_boundaries(self, net: nn.Module) -> list[int]:
        """Number of BN calls while running stages 0..i, for each i (tiny probe input)."""
        calls = [0]
        hooks = [
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
            for m in self.layers
        ]
        size = 64
        bounds = []
        with torch.inference_mode():
            for i in range(len(self.stage_names)):
                calls[0] = 0
                try:
                    net.forward_stages(torch.zeros(1, 3, size, size), i)
                except Exception:
                    size = 224
                    net.forward_stages(torch.zeros(1, 3, size, size), i)
                bounds.append(calls[0])
        for h in hooks:
            h.remove()
        return bounds

    def _hook(self, i: int):
        def record(module, inputs, output):
            x = inputs[0].detach()
            var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
            n = x.numel() / x.shape[1]
            batch = (n, mean.double(), var.double())
            prev = self._sums[i]
            self._sums[i] = batch if prev is None else _merge(prev, batch)

        return record

    def __enter__(self) -> BNDriftRecorder:
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def drift(self) -> dict[str, float]:
        """Mean drift of the BN layers of each stage (stages without BN are left out)."""
        per_layer = []
        for layer, acc in zip(self.layers, self._sums, strict=True):
            if acc is None:
                per_layer.append(np.nan)
                continue
            _, mean, var = acc
            live = (layer.running_var > layer.eps).numpy()  # dead channels carry no statistics
            if not live.any():
                per_layer.append(np.nan)
                continue
            rv = layer.running_var.double() + layer.eps
            m = ((mean - layer.running_mean.double()) / rv.sqrt()).numpy()[live]
            v = np.maximum((var / rv).numpy()[live], 1e-12)
            per_layer.append(float(np.mean(0.5 * (v + m * m - 1 - np.log(v)))))
        out, start = {}, 0
        for name, end in zip(self.stage_names, self.boundaries, strict=True):
            vals = [d for d in per_layer[start:end] if not np.isnan(d)]
            if vals:
                out[name] = float(np.mean(vals))
            start = end
        return out


def _merge(a: tuple, b: tuple) -> tuple:
    """Combine (count, mean, variance) of two batches (Chan et al.'s parallel formula)."""
    na, ma, va = a
    nb, mb, vb = b
    n = na + nb
    delta = mb - ma
    mean = ma + delta * (nb / n)
    var = (va * na + vb * nb + delta * delta * (na * nb / n)) / n
    return n, mean, var


def bank_file(backbone: str, weights_sha256: str | None) -> Path:
    """Default location of a built image bank for this backbone + weights."""
    tag = (weights_sha256 or "random")[:12]
    safe = hashlib.sha1(backbone.encode()).hexdigest()[:6]
    return default_bank_dir() / f"{backbone.replace('/', '_')}-{safe}-{tag}.npz"
