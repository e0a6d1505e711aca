"""report.html: one self-contained page per run (inline CSS and SVG, thumbnails as data: URIs).

No JavaScript, no external CSS, fonts or images: the page works offline and from file://.
Every user-controlled string (class names, file names, paths, reasons) is HTML-escaped.

The `data` dict (every key optional; missing or None parts are shown as "not recorded"):

- "title", "created" (str), "data_path" (str), "backbone" (str)
- "audit": `AuditReport.to_dict()`: files_scanned, usable, classes, per_class {class: n},
  left_out_classes, problems [{path, reason}], conversions {"P->RGB": n}, layout {messages
  [{level, text}]}
- "plan": `Plan.to_dict()`: case, case_description, strategy, cut, reasons [str],
  expected_accuracy {low, high, probe_accuracy, basis}
- "profile": `DatasetProfile` as a dict (default: plan["profile"]): images, train_images,
  val_images, test_images, feature_width, classes, size, similar, similarity {median_pvalue,
  median_score, bank_median_score, share_below_bank_q05, bank}, source_classifier
  {mean_max_softmax, median_neg_energy, ...}, bn_drift {stage: drift}, probes {stage: acc},
  probe_n
- "metrics": what api.py writes to metrics.json: split {train, validation, test,
  validation_source, model_chosen_on, leakage_messages [str]}, validation and optional test
  {n, accuracy, balanced_accuracy, per_class {class: {precision, recall, f1, support}},
  confusion_matrix (rows true, columns predicted)}, history [{epoch, train_loss, train_acc,
  val_loss, val_acc}], best_epoch, fit_seconds, notes [str], optional train_accuracy and
  expected_accuracy {low, high, achieved, within}
- "export_check": {n_images, max_abs_diff, tolerance, top1_agreement, providers, passed}
  (default: metrics["export_check"])
- "classes": [str] (default: audit["classes"])
- "misclassified": [{path, true, pred, thumbnail}] as returned by `misclassified()`
- "cache": optional {hits, computed, backend}
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import numbers
import os
from html import escape
from pathlib import Path

from PIL import Image

from . import __version__
from .preprocess import load_rgb
from .report import RUN_FULL_FIX, write_atomic

__all__ = ["render_report", "write_report", "thumbnail_data_uri", "misclassified", "REPORT_NAME"]

REPORT_NAME = "report.html"
_LONG_LIST = 10  # problem lists longer than this start collapsed
_COLOURS = {"train": "#2563eb", "val": "#ea580c"}

_CSS = """
:root{--fg:#1f2933;--muted:#616e7c;--line:#e4e7eb;--bg:#f7f8fa;--ok:#15803d;--bad:#b91c1c}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.55
system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:24px 28px 48px}h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:0 0 12px}h3{font-size:15px;margin:16px 0 6px;color:var(--muted)}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 22px;
margin:16px 0}.sub{color:var(--muted);margin:0 0 14px;overflow-wrap:anywhere}
.kpis{display:flex;flex-wrap:wrap;gap:12px}.kpi{flex:1 1 150px;background:#fff;
border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.kpi b{display:block;font-size:22px}.kpi span{color:var(--muted);font-size:13px}
table{border-collapse:collapse;margin:4px 0 8px}th,td{padding:5px 12px;text-align:left;
border-bottom:1px solid var(--line);vertical-align:top}.scroll{overflow-x:auto}
th{font-weight:600;color:var(--muted);font-size:13px}tr.chosen td{background:#eef4ff;
font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:9px;background:#93b4f5;border-radius:2px;margin-right:6px}
.cm td{text-align:center;vertical-align:middle;min-width:58px;border:1px solid #fff}
.cm th{max-width:160px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;
vertical-align:middle}.cm small{display:block;font-size:11px;opacity:.8}
.badge{display:inline-block;padding:2px 12px;border-radius:999px;color:#fff;font-weight:700}
.pass{background:var(--ok)}.fail{background:var(--bad)}.warn{color:var(--bad);font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:18px}svg text{font:12px system-ui,sans-serif;
fill:var(--muted)}.grid{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;width:150px;font-size:13px}figure img,figure .noimg{width:150px;height:150px;
object-fit:cover;border-radius:6px;background:var(--line);display:block}
figcaption{margin-top:4px}figcaption span{overflow-wrap:anywhere}.muted{color:var(--muted)}
ol li{margin:3px 0}summary{cursor:pointer;font-weight:600}
"""


def _e(value) -> str:
    return escape(str(value), quote=True)


def _ok(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x) -> str:
    return f"{100 * x:.1f}%" if _ok(x) else "–"


def _num(x, fmt: str = ".3f") -> str:
    return format(x, fmt) if _ok(x) else "–"


def _duration(s) -> str:
    return "–" if not _ok(s) else f"{s:.1f} s" if s < 120 else f"{s // 60:.0f} min {s % 60:.0f} s"


def _dict(x) -> dict:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    return x if isinstance(x, dict) else {}


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _none(what: str) -> str:
    return f'<p class="muted">{_e(what)} not recorded for this run.</p>'


def _table(head: list[str], rows: list[list[str]], numeric=(), mark: int = -1) -> str:
    """Cells are HTML (escaped by the caller); `numeric` columns align right; row `mark` is
    highlighted; no header row when `head` is empty."""

    def tr(cells, tag, attr=""):
        n = [' class="n"' if i in numeric else "" for i in range(len(cells))]
        cols = "".join(f"<{tag}{n[i]}>{c}</{tag}>" for i, c in enumerate(cells))
        return f"<tr{attr}>{cols}</tr>"

    body = "".join(tr(r, "td", ' class="chosen"' if i == mark else "") for i, r in enumerate(rows))
    return f'<div class="scroll"><table>{tr(head, "th") if head else ""}{body}</table></div>'


def _bar(fraction, width: int = 120) -> str:
    w = max(0.0, min(1.0, fraction)) * width if _ok(fraction) else 0
    return f'<span class="bar" style="width:{w:.0f}px"></span>'


# ------------------------------------------------------------------ sections
def _grid(plan: dict) -> int:
    g = plan.get("grid", 1)
    return g if isinstance(g, int) else 1


def _best(metrics: dict) -> str:
    """The best epoch, or for a head solved per L2 strength, the C kept."""
    history = [r for r in metrics.get("history") or [] if isinstance(r, dict)]
    best = metrics.get("best_epoch")
    if history and "C" in history[0] and isinstance(best, int) and 0 < best <= len(history):
        return f"L2 strength C <b>{_num(history[best - 1]['C'], 'g')}</b>"
    return f"best epoch <b>{_e(best if best is not None else '–')}</b>"


def _header(data: dict, plan: dict, metrics: dict) -> str:
    val, test = _dict(metrics.get("validation")), _dict(metrics.get("test"))
    case = plan.get("case")
    kpis = [
        (_pct(val.get("accuracy")), f"validation accuracy (n={_e(val.get('n', '–'))})"),
        (_pct(val.get("balanced_accuracy")), "balanced accuracy"),
        (f"case {_e(case)}" if case is not None else "–", _e(plan.get("case_description", ""))),
        (_duration(metrics.get("fit_seconds")), "fit duration"),
    ]
    if test:
        kpis.insert(2, (_pct(test.get("accuracy")), f"test accuracy (n={_e(test.get('n', '–'))})"))
    cards = "".join(f'<div class="kpi"><b>{v}</b><span>{label}</span></div>' for v, label in kpis)
    facts = [
        f"data <b>{_e(data.get('data_path', '–'))}</b>",
        f"backbone <b>{_e(data.get('backbone') or plan.get('backbone', '–'))}</b>",
        f"strategy <b>{_e(plan.get('strategy', '–'))}</b>, cut <b>{_e(plan.get('cut', '–'))}</b>"
        + (f" pooled {_e(plan['grid'])}×{_e(plan['grid'])}" if _grid(plan) > 1 else "")
        + (f", head on <b>{_e(plan.get('view'))}</b> side by side" if plan.get("parts") else ""),
        _best(metrics),
    ] + ([f"created {_e(data['created'])}"] if data.get("created") else [])
    extra = ""
    exp = _dict(metrics.get("expected_accuracy")) or _dict(plan.get("expected_accuracy"))
    if exp:
        verdict = {True: " — achieved, within the band", False: " — outside the band"}
        basis = f"<span class=muted>({_e(exp.get('basis', ''))})</span>"
        extra += f"<p>Expected accuracy {_pct(exp.get('low'))}–{_pct(exp.get('high'))} {basis}"
        extra += f"{verdict.get(exp.get('within'), '')}</p>"
    cache = _dict(data.get("cache"))
    if cache:
        extra += (
            f"<p>Feature cache: {_e(cache.get('hits', 0))} hits, {_e(cache.get('computed', 0))}"
        )
        extra += f" computed ({_e(cache.get('backend', '?'))})</p>"
    extra += _splits(_dict(metrics.get("split")), val, test)
    notes = [n for n in metrics.get("notes") or [] if n]
    extra += "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>" if notes else ""
    return (
        f'<header id="summary"><h1>{_e(data.get("title") or "automl-tl run report")}</h1>'
        f'<p class="sub">{" · ".join(facts)}</p><div class="kpis">{cards}</div>{extra}</header>'
    )


def _splits(split: dict, val: dict, test: dict) -> str:
    """Which split chose the model, test beside it, and what leaked between the splits."""
    if not split:
        return ""
    text = f"<p>The model was chosen on the <b>validation</b> split (n={_e(val.get('n', '–'))}, "
    text += f"{_e(split.get('validation_source', ''))})"
    if test:
        text += f"; the <b>test</b> split (n={_e(test.get('n', '–'))}) was held out and "
        text += f"evaluated once at the end: accuracy {_pct(test.get('accuracy'))}, balanced "
        text += f"{_pct(test.get('balanced_accuracy'))} (validation {_pct(val.get('accuracy'))})"
    text += ".</p>"
    leaks = split.get("leakage_messages") or []
    text += "".join(f'<p class="warn">Leakage: {_e(m)}.</p>' for m in leaks)
    return text


def _audit(audit: dict) -> str:
    if not audit:
        return _section("audit", "Dataset audit", _none("The audit"))
    per_class = _dict(audit.get("per_class"))
    top = max((n for n in per_class.values() if _ok(n)), default=1) or 1
    body = f"<p>{_e(audit.get('files_scanned', '–'))} files scanned, <b>"
    body += f"{_e(audit.get('usable', '–'))}</b> usable in {len(per_class)} classes.</p>"
    rows = [[_e(c), f"{_bar(n / top if _ok(n) else 0)}{_e(n)}"] for c, n in per_class.items()]
    body += _table(["class", "usable images"], rows, numeric=(1,))
    for m in _dict(audit.get("layout")).get("messages") or []:  # how the folders were read
        warn = _dict(m).get("level") == "warning"
        body += f"<p{' class=warn' if warn else ''}>{_e(_dict(m).get('text', ''))}</p>"
    if audit.get("left_out_classes"):
        names = ", ".join(_e(c) for c in audit["left_out_classes"])
        body += f'<p class="warn">Left out (empty or all files unusable): {names}</p>'
    conv = _dict(audit.get("conversions"))
    if conv:
        body += "<p>Converted: " + ", ".join(f"{_e(k)} ×{_e(v)}" for k, v in conv.items()) + "</p>"
    problems = audit.get("problems") or []
    if problems:
        rows = [[_e(p.get("path", "")), _e(p.get("reason", ""))] for p in problems]
        is_open = "" if len(problems) > _LONG_LIST else " open"
        body += (
            f'<details id="skipped"{is_open}><summary>{len(problems)} files left out</summary>'
            f"{_table(['file', 'reason'], rows)}</details>"
        )
    else:
        body += '<p class="muted">No file was left out.</p>'
    return _section("audit", "Dataset audit", body)


def _stage_table(profile: dict, cut) -> str:
    probes, drift = _dict(profile.get("probes")), _dict(profile.get("bn_drift"))
    stages = list(probes) + [s for s in drift if s not in probes]
    if not stages:
        return _none("Stage probes and BatchNorm drift")
    top = max((d for d in drift.values() if _ok(d)), default=1.0) or 1.0
    rows = []
    for s in stages:
        p, d = probes.get(s), drift.get(s)
        d_bar = _bar(d / top if _ok(d) else 0)
        rows.append([_e(s) + (" ◀ cut" if s == cut else ""), _bar(p) + _num(p), d_bar + _num(d)])
    n = profile.get("probe_n")
    head = ["stage", f"k-NN probe accuracy{f' (n={_e(n)})' if n else ''}", "BatchNorm drift"]
    return _table(head, rows, numeric=(1, 2), mark=stages.index(cut) if cut in stages else -1)


def _evidence(sim: dict) -> str:
    """The drift and probe-peak evidence of the similarity verdict, when recorded."""
    ev = _dict(sim.get("verdict_evidence"))
    text = ""
    if ev.get("drift_median") is not None:
        text += f"; median BatchNorm drift {_num(ev['drift_median'])} (threshold "
        text += f"{_num(ev.get('drift_threshold'))})"
    if ev.get("probe_last") is not None:
        text += f"; last-stage probe {_num(ev.get('probe_last_acc'))} vs best "
        text += f"{_e(ev.get('probe_best'))} {_num(ev.get('probe_best_acc'))}"
    return text


def _verdicts(profile: dict) -> list[list[str]]:
    facts, sim = [], _dict(profile.get("similarity"))
    if profile.get("size"):
        width, k = profile.get("feature_width") or 0, profile.get("classes") or 0
        text = f"{_e(profile.get('train_images', '–'))} training images vs {_e(width * k)} head "
        text += f"parameters ({_e(width)} features × {_e(k)} classes)"
        facts.append(["size", f"<b>{_e(profile['size'])}</b>: {text}"])
    if profile.get("similar"):
        text = (
            f"median p-value {_num(sim.get('median_pvalue'))}, nearest-neighbour cosine "
            f"{_num(sim.get('median_score'))} vs the bank's own "
            f"{_num(sim.get('bank_median_score'))}, {_pct(sim.get('share_below_bank_q05'))} "
            f"below the bank's 5% quantile ({_e(sim.get('bank', ''))})" + _evidence(sim)
            if sim
            else "not measured (no source bank)"
        )
        facts.append(["similarity", f"<b>{_e(profile['similar'])}</b>: {text}"])
    src = _dict(profile.get("source_classifier"))
    if src:
        text = f"mean max-softmax {_num(src.get('mean_max_softmax'))}, median −energy "
        text += f"{_num(src.get('median_neg_energy'), '.2f')} over "
        facts.append(["source classifier", f"{text}{_e(src.get('n_source_classes', '?'))} classes"])
    return facts


def _decision(plan: dict, profile: dict) -> str:
    if not plan and not profile:
        return _section("decision", "Profile and decision", _none("The plan"))
    facts = _verdicts(profile)
    body = _table(["verdict", "evidence"], facts) if facts else ""
    if plan.get("reasons"):
        items = "".join(f"<li>{_e(r)}</li>" for r in plan["reasons"])
        body += f"<h3>Why this plan</h3><ol>{items}</ol>"
    body += "<h3>Cut points</h3>" + _stage_table(profile, plan.get("cut"))
    body += _candidates(plan)
    body += _estimates(plan)
    return _section("decision", "Profile and decision", body)


def _estimates(plan: dict) -> str:
    """Fine-tuning cases: each candidate's measured estimate, and which one the model is."""
    rows_in = [e for e in plan.get("estimates") or [] if isinstance(e, dict)]
    if not rows_in:
        return ""
    kept = plan.get("outcome")
    rows, mark = [], -1
    for i, e in enumerate(rows_in):
        ex = _dict(e.get("expected"))
        is_kept = e.get("kind") == kept and (kept != "partial" or e.get("ran"))
        if is_kept:
            mark = i
        rows.append(
            [
                _e(e.get("candidate")) + (" ◀ kept" if is_kept else ""),
                _e(e.get("stages", "")),
                _duration(e.get("seconds")) if e.get("kind") != "frozen" else "done",
                _e("yes" if e.get("fits") else "no: " + str(e.get("why_not", "over budget"))),
                f"{_num(ex.get('low'))}-{_num(ex.get('high'))}",
                _e(ex.get("basis", "")),
            ]
        )
    budget = _dict(plan.get("time_budget"))
    title = "<h3>Fine-tuning candidates, estimated before training"
    if budget.get("seconds"):
        title += f" (time budget {_duration(budget['seconds'])})"
    head = ["candidate", "trains", "estimated time", "fits", "expected accuracy", "basis"]
    return title + "</h3>" + _table(head, rows, mark=mark)


def _candidates(plan: dict) -> str:
    """Every frozen head measured (stage x pooling grid), the chosen one marked."""
    cands = [c for c in plan.get("candidates") or [] if isinstance(c, dict)]
    if not cands:
        return ""
    chosen = plan.get("view") or plan.get("cut")
    rows = [
        [
            _e(c.get("view")) + (" ◀ chosen" if c.get("view") == chosen else ""),
            _e(f"{c.get('grid')}×{c.get('grid')}" if c.get("grid") else "joined"),
            _e(c.get("width")),
            _bar(c.get("val_acc")) + _num(c.get("val_acc"), ".4f"),
            _num(c.get("val_loss"), ".4f"),
            _num(c.get("C"), "g"),
            _e(c.get("train_rows")),
        ]
        for c in cands
    ]
    head = ["view", "grid", "features", "validation accuracy", "loss", "C", "training rows"]
    mark = next((i for i, c in enumerate(cands) if c.get("view") == chosen), -1)
    title = (
        "<h3>Frozen heads measured (one per stage and pooling grid, and the leading stages "
        "joined)</h3>"
    )
    return title + _table(head, rows, numeric=(2, 3, 4, 5, 6), mark=mark)


def _chart(name: str, series: list[tuple[str, str, list]], epochs: list, best, y_max) -> str:
    """One SVG line chart: series of (key, colour, value per epoch); the best epoch marked."""
    w, h, left, right, top, bottom = 480, 280, 52, 14, 44, 40
    pts = [v for _, _, vals in series for v in vals if _ok(v)]
    hi = y_max or (max(pts, default=1.0) * 1.1) or 1.0
    lo_e, span = min(epochs), (max(epochs) - min(epochs)) or None

    def x(e):
        return left + (w - left - right) * ((e - lo_e) / span if span else 0.5)

    def y(v):
        return top + (h - top - bottom) * (1 - min(max(v / hi, 0.0), 1.0))

    out = [f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{name}">']
    for t in (hi * i / 4 for i in range(5)):
        out.append(
            f'<line x1="{left}" x2="{w - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e4e7eb"/>'
            f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.2g}</text>'
        )
    for e in epochs[:: max(1, math.ceil(len(epochs) / 8))]:
        out.append(f'<text x="{x(e):.1f}" y="{h - bottom + 16}" text-anchor="middle">{e}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 6}" text-anchor="middle">epoch</text>')
    if best in epochs:
        out.append(
            f'<line x1="{x(best):.1f}" x2="{x(best):.1f}" y1="{top}" y2="{h - bottom}" '
            f'stroke="#9aa5b1" stroke-dasharray="4 3"/><text x="{x(best):.1f}" y="{top - 8}" '
            f'text-anchor="middle">best epoch {best}</text>'
        )
    for i, (key, colour, vals) in enumerate(series):
        xy = [(x(e), y(v)) for e, v in zip(epochs, vals, strict=False) if _ok(v)]
        dash = ' stroke-dasharray="6 4"' if key.startswith("train") else ""
        style = f'stroke="{colour}" stroke-width="2"{dash}'
        if xy:
            points = " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)
            out.append(f'<polyline data-series="{key}" points="{points}" fill="none" {style}/>')
            dot = f'r="2.5" fill="{colour}"/>'
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" {dot}' for a, b in xy if len(xy) <= 40]
        lx = left + 120 * i
        out.append(
            f'<line x1="{lx}" x2="{lx + 22}" y1="14" y2="14" {style}/>'
            f'<text x="{lx + 28}" y="18">{key.replace("_", " ")}</text>'
        )
    out.append(f'<text x="{w - right}" y="18" text-anchor="end">{name}</text></svg>')
    return "".join(out)


def _curves(metrics: dict) -> str:
    history = [r for r in metrics.get("history") or [] if isinstance(r, dict) and "epoch" in r]
    path = [r for r in metrics.get("history") or [] if isinstance(r, dict) and "C" in r]
    if path and not history:
        return _section("curves", "Regularisation path", _path(path, metrics.get("best_epoch")))
    if not history:
        return _section("curves", "Training curves", _none("The training history"))
    epochs, best = [r["epoch"] for r in history], metrics.get("best_epoch")
    loss, acc = (
        [(f"{p}_{k}", c, [r.get(f"{p}_{k}") for r in history]) for p, c in _COLOURS.items()]
        for k in ("loss", "acc")
    )
    body = f'<div class="charts">{_chart("loss", loss, epochs, best, None)}'
    body += f"{_chart('accuracy', acc, epochs, best, 1.0)}</div>"
    if _ok(metrics.get("train_accuracy")):
        body += "<p>Accuracy of the best model on the training split: "
        body += f"{_pct(metrics['train_accuracy'])}</p>"
    return _section("curves", "Training curves", body)


def _confusion(block: dict, classes: list[str], sid: str, title: str) -> str:
    cm = block.get("confusion_matrix")
    if not cm:
        return _section(sid, title, _none("The confusion matrix"))
    names = classes if len(classes) == len(cm) else [str(i) for i in range(len(cm))]
    rows = []
    for i, row in enumerate(cm):
        cells = []
        for j, n in enumerate(row):
            f = n / (sum(row) or 1)
            rgb, ink = ("21,128,61" if i == j else "185,28,28"), ("#fff" if f > 0.5 else "inherit")
            shade = f"background:rgba({rgb},{0.08 + 0.85 * f:.2f});color:{ink}"
            style = f' style="{shade}"' if n else ""
            cells.append(f"<td{style}>{_e(n)}<small>{_pct(f)}</small></td>")
        rows.append(f'<tr><th title="{_e(names[i])}">{_e(names[i])}</th>{"".join(cells)}</tr>')
    head = "".join(f'<th title="{_e(c)}">{_e(c)}</th>' for c in names)
    table = f'<div class="scroll"><table class="cm"><tr><th></th>{head}</tr>{"".join(rows)}</table>'
    note = '<p class="muted">Rows: true class; columns: predicted class; % of the row.</p>'
    return _section(sid, title, f"{table}</div>{note}")


def _per_class(block: dict, sid: str, title: str) -> str:
    per = _dict(block.get("per_class"))
    if not per:
        return _section(sid, title, _none("Per-class metrics"))
    rows = []
    for c, m in per.items():
        p, r, f1 = (_num(m.get(k)) for k in ("precision", "recall", "f1"))
        rows.append([_e(c), p, r, _bar(m.get("f1"), 80) + f1, _e(m.get("support", "–"))])
    head = ["class", "precision", "recall", "F1", "support"]
    return _section(sid, title, _table(head, rows, numeric=(1, 2, 3, 4)))


def _misclassified(items) -> str:
    title = "Misclassified validation images"
    if items is None:
        return _section("misclassified", title, _none("Misclassified images"))
    if not items:
        return _section("misclassified", title, "<p>No validation image was misclassified.</p>")
    figs = []
    for it in items:
        thumb, name = str(it.get("thumbnail") or ""), Path(str(it.get("path", ""))).name
        img = '<div class="noimg"></div>'  # only inline images: nothing outside the page
        if thumb.startswith("data:image/"):
            img = f'<img src="{_e(thumb)}" alt="{_e(name)}">'
        figs.append(
            f"<figure>{img}<figcaption>true <b>{_e(it.get('true', '?'))}</b>, predicted <b "
            f'class=warn>{_e(it.get("pred", "?"))}</b><br><span class=muted title="'
            f'{_e(it.get("path", ""))}">{_e(name)}</span></figcaption></figure>'
        )
    return _section("misclassified", title, f'<div class="grid">{"".join(figs)}</div>')


def _export(check: dict) -> str:
    if not check:
        return _section("export-check", "ONNX export check", _none("The export check"))
    verdict = "pass" if check.get("passed") else "fail"
    rows = [
        ["images compared", _e(check.get("n_images", "–"))],
        ["max |logit diff|", _num(check.get("max_abs_diff"), ".2e")],
        ["tolerance", _num(check.get("tolerance"), ".2e")],
        ["top-1 agreement", _pct(check.get("top1_agreement"))],
        ["providers", _e(", ".join(map(str, check.get("providers") or [])) or "–")],
    ]
    body = f'<p><span class="badge {verdict}">{verdict.upper()}</span> onnxruntime against '
    body += "torch on real validation images</p>"
    return _section("export-check", "ONNX export check", body + _table([], rows))


# ---------------------------------------------------------------- public API
def _path(path: list[dict], best) -> str:
    """The logistic-regression head's L2 path: validation accuracy and loss per C."""
    rows = [
        [_num(r.get("C"), "g"), _bar(r.get("val_acc")) + _num(r.get("val_acc"), ".4f"),
         _num(r.get("val_loss"), ".4f")]
        for r in path
    ]  # fmt: skip
    mark = (best - 1) if isinstance(best, int) else -1
    text = "<p>The linear head is solved exactly for each L2 strength C (larger C, weaker "
    text += "regularisation); the one with the best validation accuracy is kept.</p>"
    return text + _table(["C", "validation accuracy", "validation loss"], rows, (1, 2), mark)


def render_report(data: dict) -> str:
    """The whole report as one HTML string (see the module docstring for `data`)."""
    data = _dict(data)
    plan, metrics, audit = (_dict(data.get(k)) for k in ("plan", "metrics", "audit"))
    profile = _dict(data.get("profile")) or _dict(plan.get("profile"))
    classes = list(data.get("classes") or audit.get("classes") or [])
    val, test = _dict(metrics.get("validation")), _dict(metrics.get("test"))
    parts = [
        _header(data, plan, metrics),
        _audit(audit),
        _decision(plan, profile),
        _curves(metrics),
        _confusion(val, classes, "confusion", "Confusion matrix (validation)"),
        _per_class(val, "per-class", "Per-class metrics (validation)"),
    ]
    if test:
        parts.append(_confusion(test, classes, "confusion-test", "Confusion matrix (test)"))
        parts.append(_per_class(test, "per-class-test", "Per-class metrics (test)"))
    parts.append(_misclassified(data.get("misclassified")))
    parts.append(_export(_dict(data.get("export_check")) or _dict(metrics.get("export_check"))))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        'content="width=device-width, initial-scale=1">'
        f"<title>{_e(data.get('title') or 'automl-tl run report')}</title><style>{_CSS}</style>"
        f"</head><body><main>{''.join(parts)}"
        f'<p class="muted">Generated by automl-tl {_e(__version__)}.</p></main></body></html>\n'
    )


def write_report(folder: str | os.PathLike, data: dict) -> Path:
    """Render and write `folder/report.html` atomically (temporary file + rename)."""
    target = Path(folder) / REPORT_NAME
    text = render_report(data)
    return write_atomic(target, text.encode("utf-8"), fix=RUN_FULL_FIX)


def thumbnail_data_uri(path: str | os.PathLike, size: int = 128) -> str:
    """A JPEG thumbnail (longer side `size`) of an image file as a base64 data: URI."""
    img = load_rgb(path, draft_size=size)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def misclassified(samples_paths, y_true, y_pred, classes: list[str], limit: int = 8) -> list[dict]:
    """Up to `limit` wrong predictions as {path, true, pred, thumbnail}, taking the true
    classes in turn so one class does not fill the list; unreadable images get thumbnail ""."""
    by_class: dict[int, list[int]] = {}
    for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)):
        if int(t) != int(p):
            by_class.setdefault(int(t), []).append(i)
    picked: list[int] = []
    while len(picked) < limit and any(by_class.values()):
        picked += [by_class[k].pop(0) for k in sorted(by_class) if by_class[k]]
    out = []
    for i in picked[:limit]:
        try:
            thumb = thumbnail_data_uri(samples_paths[i])
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # a bad file
            thumb = ""
        true, pred = classes[int(y_true[i])], classes[int(y_pred[i])]
        out.append({"path": str(samples_paths[i]), "true": true, "pred": pred, "thumbnail": thumb})
    return out
