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
- "metrics": what report.metrics writes to metrics.json: split {train, validation, test,
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

import os
from pathlib import Path

from .. import __version__
from ..core.files import RUN_FULL_FIX, write_atomic
from .html_decision import _grid, decision_section
from .html_kit import (
    CSS,
    as_dict,
    bar,
    esc,
    is_number,
    line_chart,
    not_recorded,
    num,
    pct,
    seconds_text,
    section,
    table,
)
from .html_trust import trust_section

__all__ = ["render_report", "write_report", "REPORT_NAME"]

REPORT_NAME = "report.html"
_LONG_LIST = 10  # problem lists longer than this start collapsed
_COLOURS = {"train": "#2563eb", "val": "#ea580c"}


def _best(metrics: dict) -> str:
    """The best epoch, or for a head solved per L2 strength, the C kept."""
    history = [r for r in metrics.get("history") or [] if isinstance(r, dict)]
    best = metrics.get("best_epoch")
    if history and "C" in history[0] and isinstance(best, int) and 0 < best <= len(history):
        return f"L2 strength C <b>{num(history[best - 1]['C'], 'g')}</b>"
    return f"best epoch <b>{esc(best if best is not None else '–')}</b>"


def _header(data: dict, plan: dict, metrics: dict) -> str:
    val, test = as_dict(metrics.get("validation")), as_dict(metrics.get("test"))
    case = plan.get("case")
    kpis = [
        (pct(val.get("accuracy")), f"validation accuracy (n={esc(val.get('n', '–'))})"),
        (pct(val.get("balanced_accuracy")), "balanced accuracy"),
        (f"case {esc(case)}" if case is not None else "–", esc(plan.get("case_description", ""))),
        (seconds_text(metrics.get("fit_seconds")), "fit duration"),
    ]
    if test:
        kpis.insert(2, (pct(test.get("accuracy")), f"test accuracy (n={esc(test.get('n', '–'))})"))
    cards = "".join(f'<div class="kpi"><b>{v}</b><span>{label}</span></div>' for v, label in kpis)
    facts = [
        f"data <b>{esc(data.get('data_path', '–'))}</b>",
        f"backbone <b>{esc(data.get('backbone') or plan.get('backbone', '–'))}</b>"
        + (
            f" with <b>{esc(as_dict(plan.get('paired')).get('backbone'))}</b> beside it "
            f"({esc(as_dict(plan.get('paired')).get('view'))})"
            if plan.get("paired")
            else ""
        ),
        f"strategy <b>{esc(plan.get('strategy', '–'))}</b>, cut <b>{esc(plan.get('cut', '–'))}</b>"
        + (f" pooled {esc(plan['grid'])}×{esc(plan['grid'])}" if _grid(plan) > 1 else "")
        + (f", head on <b>{esc(plan.get('view'))}</b> side by side" if plan.get("parts") else ""),
        _best(metrics),
    ] + ([f"created {esc(data['created'])}"] if data.get("created") else [])
    extra = ""
    exp = as_dict(metrics.get("expected_accuracy")) or as_dict(plan.get("expected_accuracy"))
    if exp:
        verdict = {True: " — achieved, within the band", False: " — outside the band"}
        basis = f"<span class=muted>({esc(exp.get('basis', ''))})</span>"
        extra += f"<p>Expected accuracy {pct(exp.get('low'))}–{pct(exp.get('high'))} {basis}"
        extra += f"{verdict.get(exp.get('within'), '')}</p>"
    cache = as_dict(data.get("cache"))
    if cache:
        extra += (
            f"<p>Feature cache: {esc(cache.get('hits', 0))} hits, {esc(cache.get('computed', 0))}"
        )
        extra += f" computed ({esc(cache.get('backend', '?'))})</p>"
    extra += _splits(as_dict(metrics.get("split")), val, test)
    notes = [n for n in metrics.get("notes") or [] if n]
    extra += "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else ""
    return (
        f'<header id="summary"><h1>{esc(data.get("title") or "automl-tl run report")}</h1>'
        f'<p class="sub">{" · ".join(facts)}</p><div class="kpis">{cards}</div>{extra}</header>'
    )


def _splits(split: dict, val: dict, test: dict) -> str:
    """Which split chose the model, test beside it, and what leaked between the splits."""
    if not split:
        return ""
    text = f"<p>The model was chosen on the <b>validation</b> split (n={esc(val.get('n', '–'))}, "
    text += f"{esc(split.get('validation_source', ''))})"
    if test:
        text += f"; the <b>test</b> split (n={esc(test.get('n', '–'))}) was held out and "
        text += f"evaluated once at the end: accuracy {pct(test.get('accuracy'))}, balanced "
        text += f"{pct(test.get('balanced_accuracy'))} (validation {pct(val.get('accuracy'))})"
    text += ".</p>"
    leaks = split.get("leakage_messages") or []
    text += "".join(f'<p class="warn">Leakage: {esc(m)}.</p>' for m in leaks)
    return text


def _audit(audit: dict) -> str:
    if not audit:
        return section("audit", "Dataset audit", not_recorded("The audit"))
    per_class = as_dict(audit.get("per_class"))
    top = max((n for n in per_class.values() if is_number(n)), default=1) or 1
    body = f"<p>{esc(audit.get('files_scanned', '–'))} files scanned, <b>"
    body += f"{esc(audit.get('usable', '–'))}</b> usable in {len(per_class)} classes.</p>"
    rows = [
        [esc(c), f"{bar(n / top if is_number(n) else 0)}{esc(n)}"] for c, n in per_class.items()
    ]
    body += table(["class", "usable images"], rows, numeric=(1,))
    for m in as_dict(audit.get("layout")).get("messages") or []:  # how the folders were read
        warn = as_dict(m).get("level") == "warning"
        body += f"<p{' class=warn' if warn else ''}>{esc(as_dict(m).get('text', ''))}</p>"
    if audit.get("left_out_classes"):
        names = ", ".join(esc(c) for c in audit["left_out_classes"])
        body += f'<p class="warn">Left out (empty or all files unusable): {names}</p>'
    conv = as_dict(audit.get("conversions"))
    if conv:
        body += (
            "<p>Converted: " + ", ".join(f"{esc(k)} ×{esc(v)}" for k, v in conv.items()) + "</p>"
        )
    problems = audit.get("problems") or []
    if problems:
        rows = [[esc(p.get("path", "")), esc(p.get("reason", ""))] for p in problems]
        is_open = "" if len(problems) > _LONG_LIST else " open"
        body += (
            f'<details id="skipped"{is_open}><summary>{len(problems)} files left out</summary>'
            f"{table(['file', 'reason'], rows)}</details>"
        )
    else:
        body += '<p class="muted">No file was left out.</p>'
    return section("audit", "Dataset audit", body)


def _curves(metrics: dict) -> str:
    history = [r for r in metrics.get("history") or [] if isinstance(r, dict) and "epoch" in r]
    path = [r for r in metrics.get("history") or [] if isinstance(r, dict) and "C" in r]
    if path and not history:
        return section("curves", "Regularisation path", _path(path, metrics.get("best_epoch")))
    if not history:
        return section("curves", "Training curves", not_recorded("The training history"))
    epochs, best = [r["epoch"] for r in history], metrics.get("best_epoch")
    loss, acc = (
        [(f"{p}_{k}", c, [r.get(f"{p}_{k}") for r in history]) for p, c in _COLOURS.items()]
        for k in ("loss", "acc")
    )
    body = f'<div class="charts">{line_chart("loss", loss, epochs, best, None)}'
    body += f"{line_chart('accuracy', acc, epochs, best, 1.0)}</div>"
    if is_number(metrics.get("train_accuracy")):
        body += "<p>Accuracy of the best model on the training split: "
        body += f"{pct(metrics['train_accuracy'])}</p>"
    return section("curves", "Training curves", body)


def _confusion(block: dict, classes: list[str], sid: str, title: str) -> str:
    cm = block.get("confusion_matrix")
    if not cm:
        return section(sid, title, not_recorded("The confusion matrix"))
    names = classes if len(classes) == len(cm) else [str(i) for i in range(len(cm))]
    rows = []
    for i, row in enumerate(cm):
        cells = []
        for j, n in enumerate(row):
            f = n / (sum(row) or 1)
            rgb, ink = ("21,128,61" if i == j else "185,28,28"), ("#fff" if f > 0.5 else "inherit")
            shade = f"background:rgba({rgb},{0.08 + 0.85 * f:.2f});color:{ink}"
            style = f' style="{shade}"' if n else ""
            cells.append(f"<td{style}>{esc(n)}<small>{pct(f)}</small></td>")
        rows.append(f'<tr><th title="{esc(names[i])}">{esc(names[i])}</th>{"".join(cells)}</tr>')
    head = "".join(f'<th title="{esc(c)}">{esc(c)}</th>' for c in names)
    table = f'<div class="scroll"><table class="cm"><tr><th></th>{head}</tr>{"".join(rows)}</table>'
    note = '<p class="muted">Rows: true class; columns: predicted class; % of the row.</p>'
    return section(sid, title, f"{table}</div>{note}")


def _per_class(block: dict, sid: str, title: str) -> str:
    per = as_dict(block.get("per_class"))
    if not per:
        return section(sid, title, not_recorded("Per-class metrics"))
    rows = []
    for c, m in per.items():
        p, r, f1 = (num(m.get(k)) for k in ("precision", "recall", "f1"))
        rows.append([esc(c), p, r, bar(m.get("f1"), 80) + f1, esc(m.get("support", "–"))])
    head = ["class", "precision", "recall", "F1", "support"]
    return section(sid, title, table(head, rows, numeric=(1, 2, 3, 4)))


def _misclassified(items) -> str:
    title = "Misclassified validation images"
    if items is None:
        return section("misclassified", title, not_recorded("Misclassified images"))
    if not items:
        return section("misclassified", title, "<p>No validation image was misclassified.</p>")
    figs = []
    for it in items:
        thumb, name = str(it.get("thumbnail") or ""), Path(str(it.get("path", ""))).name
        img = '<div class="noimg"></div>'  # only inline images: nothing outside the page
        if thumb.startswith("data:image/"):
            img = f'<img src="{esc(thumb)}" alt="{esc(name)}">'
        figs.append(
            f"<figure>{img}<figcaption>true <b>{esc(it.get('true', '?'))}</b>, predicted <b "
            f'class=warn>{esc(it.get("pred", "?"))}</b><br><span class=muted title="'
            f'{esc(it.get("path", ""))}">{esc(name)}</span></figcaption></figure>'
        )
    return section("misclassified", title, f'<div class="grid">{"".join(figs)}</div>')


def _label_issues(items, record: dict) -> str:
    title = "Possible label errors"
    if items is None:
        return section("label-issues", title, not_recorded("Label issues"))
    head = (
        f"<p>{esc(record.get('count', len(items)))} of {esc(record.get('images_checked', '?'))} "
        f"training and validation images look mislabelled ({esc(record.get('method', ''))}); "
        "all of them, most likely first, are in <code>label_issues.csv</code>. Nothing was "
        "moved or deleted.</p>"
    )
    figs = []
    for it in items:
        thumb, name = str(it.get("thumbnail") or ""), Path(str(it.get("path", ""))).name
        img = '<div class="noimg"></div>'
        if thumb.startswith("data:image/"):
            img = f'<img src="{esc(thumb)}" alt="{esc(name)}">'
        figs.append(
            f"<figure>{img}<figcaption>labelled <b>{esc(it.get('given', '?'))}</b>, looks like "
            f"<b class=warn>{esc(it.get('suggested', '?'))}</b> ({num(it.get('score'), '.2f')})"
            f'<br><span class=muted title="{esc(it.get("path", ""))}">{esc(name)}</span>'
            "</figcaption></figure>"
        )
    return section("label-issues", title, head + f'<div class="grid">{"".join(figs)}</div>')


def _export(check: dict) -> str:
    if not check:
        return section("export-check", "ONNX export check", not_recorded("The export check"))
    verdict = "pass" if check.get("passed") else "fail"
    rows = [
        ["images compared", esc(check.get("n_images", "–"))],
        ["max |logit diff|", num(check.get("max_abs_diff"), ".2e")],
        ["tolerance", num(check.get("tolerance"), ".2e")],
        ["top-1 agreement", pct(check.get("top1_agreement"))],
        ["providers", esc(", ".join(map(str, check.get("providers") or [])) or "–")],
    ]
    body = f'<p><span class="badge {verdict}">{verdict.upper()}</span> onnxruntime against '
    body += "torch on real validation images</p>"
    return section("export-check", "ONNX export check", body + table([], rows))


# ---------------------------------------------------------------- public API
def _path(path: list[dict], best) -> str:
    """The logistic-regression head's L2 path: validation accuracy and loss per C."""
    rows = [
        [num(r.get("C"), "g"), bar(r.get("val_acc")) + num(r.get("val_acc"), ".4f"),
         num(r.get("val_loss"), ".4f")]
        for r in path
    ]  # fmt: skip
    mark = (best - 1) if isinstance(best, int) else -1
    text = "<p>The linear head is solved exactly for each L2 strength C (larger C, weaker "
    text += "regularisation); the one with the best validation accuracy is kept.</p>"
    return text + table(["C", "validation accuracy", "validation loss"], rows, (1, 2), mark)


def render_report(data: dict) -> str:
    """The whole report as one HTML string (see the module docstring for `data`)."""
    data = as_dict(data)
    plan, metrics, audit = (as_dict(data.get(k)) for k in ("plan", "metrics", "audit"))
    profile = as_dict(data.get("profile")) or as_dict(plan.get("profile"))
    classes = list(data.get("classes") or audit.get("classes") or [])
    val, test = as_dict(metrics.get("validation")), as_dict(metrics.get("test"))
    parts = [
        _header(data, plan, metrics),
        _audit(audit),
        decision_section(plan, profile),
        _curves(metrics),
        _confusion(val, classes, "confusion", "Confusion matrix (validation)"),
        _per_class(val, "per-class", "Per-class metrics (validation)"),
    ]
    if test:
        parts.append(_confusion(test, classes, "confusion-test", "Confusion matrix (test)"))
        parts.append(_per_class(test, "per-class-test", "Per-class metrics (test)"))
    parts.append(_misclassified(data.get("misclassified")))
    parts.append(_label_issues(data.get("label_issues"), as_dict(metrics.get("label_issues"))))
    parts.append(trust_section(metrics))
    parts.append(_export(as_dict(data.get("export_check")) or as_dict(metrics.get("export_check"))))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        'content="width=device-width, initial-scale=1">'
        f"<title>{esc(data.get('title') or 'automl-tl run report')}</title><style>{CSS}</style>"
        f"</head><body><main>{''.join(parts)}"
        f'<p class="muted">Generated by automl-tl {esc(__version__)}.</p></main></body></html>\n'
    )


def write_report(folder: str | os.PathLike, data: dict) -> Path:
    """Render and write `folder/report.html` atomically (temporary file + rename)."""
    target = Path(folder) / REPORT_NAME
    text = render_report(data)
    return write_atomic(target, text.encode("utf-8"), fix=RUN_FULL_FIX)
