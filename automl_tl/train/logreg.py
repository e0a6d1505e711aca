"""Linear heads fitted exactly: L2-regularised multinomial logistic regression by L-BFGS.

On frozen features a linear head is a convex problem. Solving it to convergence on the whole
training set (full batch, L-BFGS with a backtracking line search, in torch) and choosing the
L2 strength on the validation split gives the head a tuned scikit-learn
LogisticRegression would give, at a fraction of its cost, and without the epochs, learning
rate and patience of stochastic training. The strength is searched from strong to weak with
warm starts, so each step costs a few iterations.

Features are standardised with training-set statistics (the scale kept inside the head, so the
exported graph takes raw features).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..core.console import Console
from ..core.tasks import TrainResult
from .heads import LinearHead, _dequantize_all, _feature_scale, _threads, balanced_weights

__all__ = ["LogRegResult", "fit_logreg", "logreg_result", "DEFAULT_CS", "as_float_rows"]

# Inverse L2 strengths in scikit-learn's convention (loss = C * sum CE + |W|^2 / 2), from
# strong to weak regularisation.
DEFAULT_CS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


@dataclass
class LogRegResult:
    """The best head on the validation split, its C, and every C tried."""

    head: LinearHead
    C: float
    val_acc: float
    val_loss: float
    path: list[dict] = field(default_factory=list)


def as_float_rows(x) -> torch.Tensor:
    """Float32 rows of an array or of stored (quantised) feature-cache rows."""
    if hasattr(x, "values") and hasattr(x, "scales"):
        return _dequantize_all(x.values, x.scales)
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def _unpack(theta: torch.Tensor, k: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    return theta[: k * d].view(k, d), theta[k * d :]


def _loss_grad(theta, z, y, sw, lam, k) -> tuple[float, torch.Tensor]:
    """Weighted mean cross-entropy + lam/2 |W|^2 and its gradient (closed form: no autograd,
    no torch.optim, whose first step imports torch._dynamo, seconds on a warm fit)."""
    n, d = z.shape
    w, b = _unpack(theta, k, d)
    logp = torch.log_softmax(torch.addmm(b, z, w.t()), 1)
    rows = torch.arange(n)
    total = float(sw.sum())
    loss = -float((sw * logp[rows, y]).sum()) / total + 0.5 * lam * float((w * w).sum())
    g = logp.exp_().mul_(sw[:, None])
    g[rows, y] -= sw
    g /= total
    grad = torch.cat([(g.t() @ z + lam * w).reshape(-1), g.sum(0)])
    return loss, grad


def _lbfgs(fg, x: torch.Tensor, max_iter: int, memory: int = 10, tol: float = 1e-5):
    """Minimise a smooth convex function by L-BFGS with a backtracking (Armijo) line search."""
    f, g = fg(x)
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    for _ in range(max_iter):
        if float(g.abs().max()) <= tol:
            break
        q, alphas = g.clone(), []
        for s_, y_ in zip(reversed(s_hist), reversed(y_hist), strict=True):
            a = float(s_ @ q) / float(y_ @ s_)
            alphas.append(a)
            q -= a * y_
        if y_hist:
            q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
        else:
            q /= max(float(g.norm()), 1e-12)
        for (s_, y_), a in zip(zip(s_hist, y_hist, strict=True), reversed(alphas), strict=True):
            q += (a - float(y_ @ q) / float(y_ @ s_)) * s_
        direction, slope, step = -q, -float(g @ q), 1.0
        if slope >= 0:  # not a descent direction: restart from the gradient
            s_hist.clear(), y_hist.clear()
            direction, slope = -g / max(float(g.norm()), 1e-12), -float(g.norm())
        while True:
            x_new = x + step * direction
            f_new, g_new = fg(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s_, y_ = x_new - x, g_new - g
        if float(s_ @ y_) > 1e-10:
            s_hist.append(s_), y_hist.append(y_)
            if len(s_hist) > memory:
                s_hist.pop(0), y_hist.pop(0)
        converged = abs(f - f_new) <= 1e-9 * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if converged:
            break
    return x


def fit_logreg(
    x_train,
    y_train,
    x_val,
    y_val,
    n_classes: int,
    Cs: tuple[float, ...] = DEFAULT_CS,
    balanced: bool = True,
    max_iter: int = 60,
    patience: int = 2,
    console: Console | None = None,
) -> LogRegResult:
    """Fit one head per C (strong to weak, warm-started) and keep the best on validation
    (accuracy, then lower validation loss); stop after `patience` Cs without gain.

    `x_*` are float arrays, tensors or stored feature-cache rows.
    """
    xt, xv = as_float_rows(x_train), as_float_rows(x_val)
    yt = torch.as_tensor(np.asarray(y_train)).long()
    yv = torch.as_tensor(np.asarray(y_val)).long()
    mean, std = _feature_scale(xt, None)
    m, s = torch.as_tensor(mean), torch.as_tensor(std)
    zt, zv = (xt - m) / s, (xv - m) / s
    n, d = zt.shape
    sw = (balanced_weights(yt, n_classes) if balanced else torch.ones(n_classes))[yt]
    theta = torch.zeros(n_classes * (d + 1), dtype=torch.float32)
    threads = 1 if n * d < 1 << 21 else torch.get_num_threads()
    best, path, since = None, [], 0
    console = console or Console(quiet=True)
    with _threads(threads), torch.no_grad(), console.progress("train", len(Cs), unit="C") as bar:
        for C in Cs:
            bar.update()
            lam = 1.0 / (C * float(sw.sum()))
            objective = functools.partial(_loss_grad, z=zt, y=yt, sw=sw, lam=lam, k=n_classes)
            theta = _lbfgs(objective, theta, max_iter)
            w, b = _unpack(theta, n_classes, d)
            logits = torch.addmm(b, zv, w.t())
            acc = float((logits.argmax(1) == yv).float().mean()) if len(yv) else 0.0
            loss = float(nn.functional.cross_entropy(logits, yv)) if len(yv) else math.inf
            path.append({"C": C, "val_acc": round(acc, 4), "val_loss": round(loss, 4)})
            if best is None or (acc, -loss) > (best[1], -best[2]):
                best, since = (C, acc, loss, w.clone(), b.clone()), 0
            else:
                since += 1
                if since >= patience:
                    bar.total = bar.done  # the path stopped early: the bar ends full
                    break
    C, acc, loss, wb, bb = best
    head = LinearHead(mean, std, n_classes, dropout=0.0)
    with torch.no_grad():
        head.fc.weight.copy_(wb)
        head.fc.bias.copy_(bb)
    return LogRegResult(head.eval(), C, acc, loss, path)


def logreg_result(result: LogRegResult) -> TrainResult:
    """The TrainResult a feature strategy returns: the head, the position of the chosen C on
    the path (as `best_epoch`) and the path as history (C, validation accuracy and loss)."""
    history = [{"step": i + 1, **p} for i, p in enumerate(result.path)]
    best = next(i for i, p in enumerate(result.path) if p["C"] == result.C) + 1
    return TrainResult(result.head, best, history)
