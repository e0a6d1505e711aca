"""The decision section of report.html: the profile per stage, the verdicts with their
evidence, the plan's reasons, the frozen heads measured and the fine-tuning estimates."""

from __future__ import annotations

from .html_kit import (
    as_dict,
    bar,
    esc,
    is_number,
    not_recorded,
    num,
    pct,
    seconds_text,
    section,
    table,
)

__all__ = ["decision_section"]


def _grid(plan: dict) -> int:
    g = plan.get("grid", 1)
    return g if isinstance(g, int) else 1


def _stage_table(profile: dict, cut) -> str:
    probes, drift = as_dict(profile.get("probes")), as_dict(profile.get("bn_drift"))
    stages = list(probes) + [s for s in drift if s not in probes]
    if not stages:
        return not_recorded("Stage probes and BatchNorm drift")
    top = max((d for d in drift.values() if is_number(d)), default=1.0) or 1.0
    rows = []
    for s in stages:
        p, d = probes.get(s), drift.get(s)
        d_bar = bar(d / top if is_number(d) else 0)
        rows.append([esc(s) + (" ◀ cut" if s == cut else ""), bar(p) + num(p), d_bar + num(d)])
    n = profile.get("probe_n")
    head = ["stage", f"k-NN probe accuracy{f' (n={esc(n)})' if n else ''}", "BatchNorm drift"]
    return table(head, rows, numeric=(1, 2), mark=stages.index(cut) if cut in stages else -1)


def _evidence(sim: dict) -> str:
    """The drift and probe-peak evidence of the similarity verdict, when recorded."""
    ev = as_dict(sim.get("verdict_evidence"))
    text = ""
    if ev.get("drift_median") is not None:
        text += f"; median BatchNorm drift {num(ev['drift_median'])} (threshold "
        text += f"{num(ev.get('drift_threshold'))})"
    if ev.get("probe_last") is not None:
        text += f"; last-stage probe {num(ev.get('probe_last_acc'))} vs best "
        text += f"{esc(ev.get('probe_best'))} {num(ev.get('probe_best_acc'))}"
    return text


def _verdicts(profile: dict) -> list[list[str]]:
    facts, sim = [], as_dict(profile.get("similarity"))
    if profile.get("size"):
        width, k = profile.get("feature_width") or 0, profile.get("classes") or 0
        text = f"{esc(profile.get('train_images', '–'))} training images vs {esc(width * k)} head "
        text += f"parameters ({esc(width)} features × {esc(k)} classes)"
        facts.append(["size", f"<b>{esc(profile['size'])}</b>: {text}"])
    if profile.get("similar"):
        text = (
            f"median p-value {num(sim.get('median_pvalue'))}, nearest-neighbour cosine "
            f"{num(sim.get('median_score'))} vs the bank's own "
            f"{num(sim.get('bank_median_score'))}, {pct(sim.get('share_below_bank_q05'))} "
            f"below the bank's 5% quantile ({esc(sim.get('bank', ''))})" + _evidence(sim)
            if sim
            else "not measured (no source bank)"
        )
        facts.append(["similarity", f"<b>{esc(profile['similar'])}</b>: {text}"])
    src = as_dict(profile.get("source_classifier"))
    if src:
        text = f"mean max-softmax {num(src.get('mean_max_softmax'))}, median −energy "
        text += f"{num(src.get('median_neg_energy'), '.2f')} over "
        facts.append(
            ["source classifier", f"{text}{esc(src.get('n_source_classes', '?'))} classes"]
        )
    return facts


def decision_section(plan: dict, profile: dict) -> str:
    if not plan and not profile:
        return section("decision", "Profile and decision", not_recorded("The plan"))
    facts = _verdicts(profile)
    body = table(["verdict", "evidence"], facts) if facts else ""
    if plan.get("reasons"):
        items = "".join(f"<li>{esc(r)}</li>" for r in plan["reasons"])
        body += f"<h3>Why this plan</h3><ol>{items}</ol>"
    body += _backbones(plan)
    body += "<h3>Cut points</h3>" + _stage_table(profile, plan.get("cut"))
    body += _candidates(plan)
    body += _estimates(plan)
    return section("decision", "Profile and decision", body)


def _estimates(plan: dict) -> str:
    """Fine-tuning cases: each candidate's measured estimate, and which one the model is."""
    rows_in = [e for e in plan.get("estimates") or [] if isinstance(e, dict)]
    if not rows_in:
        return ""
    kept = plan.get("outcome")
    rows, mark = [], -1
    for i, e in enumerate(rows_in):
        ex = as_dict(e.get("expected"))
        is_kept = e.get("kind") == kept and (kept != "partial" or e.get("ran"))
        if is_kept:
            mark = i
        rows.append(
            [
                esc(e.get("candidate")) + (" ◀ kept" if is_kept else ""),
                esc(e.get("stages", "")),
                seconds_text(e.get("seconds")) if e.get("kind") != "frozen" else "done",
                esc("yes" if e.get("fits") else "no: " + str(e.get("why_not", "over budget"))),
                f"{num(ex.get('low'))}-{num(ex.get('high'))}",
                esc(ex.get("basis", "")),
            ]
        )
    budget = as_dict(plan.get("time_budget"))
    title = "<h3>Fine-tuning candidates, estimated before training"
    if budget.get("seconds"):
        title += f" (time budget {seconds_text(budget['seconds'])})"
    head = ["candidate", "trains", "estimated time", "fits", "expected accuracy", "basis"]
    return title + "</h3>" + table(head, rows, mark=mark)


def _candidates(plan: dict) -> str:
    """Every frozen head measured (stage x pooling grid), the chosen one marked."""
    cands = [c for c in plan.get("candidates") or [] if isinstance(c, dict)]
    if not cands:
        return ""
    chosen = plan.get("view") or plan.get("cut")
    rows = [
        [
            esc(c.get("view")) + (" ◀ chosen" if c.get("view") == chosen else ""),
            esc(f"{c.get('grid')}×{c.get('grid')}" if c.get("grid") else "joined"),
            esc(c.get("width")),
            bar(c.get("val_acc")) + num(c.get("val_acc"), ".4f"),
            num(c.get("val_loss"), ".4f"),
            num(c.get("C"), "g"),
            esc(c.get("train_rows")),
        ]
        for c in cands
    ]
    head = ["view", "grid", "features", "validation accuracy", "loss", "C", "training rows"]
    mark = next((i for i, c in enumerate(cands) if c.get("view") == chosen), -1)
    title = (
        "<h3>Frozen heads measured (one per stage and pooling grid, and the leading stages "
        "joined)</h3>"
    )
    return title + table(head, rows, numeric=(2, 3, 4, 5, 6), mark=mark)


def _backbones(plan: dict) -> str:
    """--backbone auto: every backbone tried, cheapest first, the chosen one marked."""
    tried = [t for t in plan.get("backbones") or [] if isinstance(t, dict)]
    if not tried:
        return ""
    rows = []
    for i, t in enumerate(tried):
        status = t.get("status", "")
        said = f"{status}: {t['reason']}" if t.get("reason") else status
        estimate = t.get("estimate_seconds")
        rows.append(
            [
                esc(t.get("backbone"))
                + (" ◀ chosen" if status == "chosen" else "")
                + f"<br><span class=muted>{esc(t.get('input'))} px</span>",
                bar(t.get("cv_acc")) + num(t.get("cv_acc"), ".4f"),
                num(t.get("val_acc"), ".4f"),
                esc(t.get("view") or "–").replace("+", "+<wbr>"),  # joined views wrap
                f"{seconds_text(t.get('embed_seconds'))} + {seconds_text(t.get('choice_seconds'))}"
                + "<br><span class=muted>"
                + (
                    f"estimated {seconds_text(estimate)}"
                    if estimate is not None
                    else "the first: always runs"
                    if i == 0
                    else ""
                )
                + "</span>",
                num(t.get("images_per_second"), ".1f"),
                esc(said),
            ]
        )
    head = ["backbone", "cross-fitted accuracy (training + validation)", "validation accuracy",
            "view", "embedding + choice (this run)", "images/s (decode + graph)",
            "outcome"]  # fmt: skip
    mark = next((i for i, t in enumerate(tried) if t.get("status") == "chosen"), -1)
    why = next((r for r in plan.get("reasons") or [] if r.startswith("backbone search: ")), "")
    title = "<h3>Backbones tried (cheapest first)</h3>"
    return (
        title
        + table(head, rows, numeric=(1, 2, 4, 5), mark=mark)
        + (f"<p>{esc(why)}</p>" if why else "")
    )
