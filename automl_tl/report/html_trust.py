"""The report's section on what the exported model knows of its limits: calibration (table and
reliability diagram), the out-of-distribution flag, a shifted test split, and the int8
variant (kept or not, with what was measured)."""

from __future__ import annotations

from .html_kit import as_dict, esc, not_recorded, num, pct, section, table

__all__ = ["trust_section", "reliability_svg"]

_BEFORE, _AFTER = "#94a3b8", "#2563eb"


def reliability_svg(before: list[dict], after: list[dict], bins: int = 15) -> str:
    """Accuracy against confidence per bin, before (grey) and after (blue) calibration, over
    the diagonal a calibrated model follows; bar width is the bin, marker size its count."""
    w, h, left, bottom, top, right = 360, 300, 44, 36, 16, 12
    pw, ph = w - left - right, h - top - bottom

    def x(v):
        return left + v * pw

    def y(v):
        return top + (1 - v) * ph

    parts = [
        f'<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
        'aria-label="reliability diagram">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#cbd5e1"/>',
        f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#64748b" '
        'stroke-dasharray="4 3"/>',
    ]
    for t in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{x(t)}" y="{h - 18}" font-size="11" text-anchor="middle">{t}</text>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y(t) + 4}" font-size="11" text-anchor="end">{t}</text>'
        )
    parts.append(f'<text x="{left + pw / 2}" y="{h - 3}" font-size="11" text-anchor="middle">'
                 "confidence (top-1 probability)</text>")  # fmt: skip
    total = max(1, sum(b.get("n", 0) for b in before))
    for colour, rows, shift in ((_BEFORE, before, -0.25), (_AFTER, after, 0.25)):
        for b in rows:
            bw = (b["high"] - b["low"]) * pw / 2.2
            cx = x((b["low"] + b["high"]) / 2) + shift * bw * 2
            acc = max(0.0, min(1.0, b["accuracy"]))
            parts.append(
                f'<rect x="{cx - bw / 2:.1f}" y="{y(acc):.1f}" width="{bw:.1f}" '
                f'height="{y(0) - y(acc):.1f}" fill="{colour}" opacity="0.75">'
                f"<title>{b['low']:.2f}-{b['high']:.2f}: {b['n']} images, confidence "
                f"{b['confidence']:.3f}, accuracy {b['accuracy']:.3f}</title></rect>"
            )
            r = 2 + 4 * (b["n"] / total) ** 0.5
            parts.append(f'<circle cx="{x(b["confidence"]):.1f}" cy="{y(acc):.1f}" r="{r:.1f}" '
                         f'fill="{colour}" stroke="white"/>')  # fmt: skip
    parts.append(
        f'<text x="{left + 8}" y="{top + 14}" font-size="11" fill="{_BEFORE}">before</text>'
        f'<text x="{left + 60}" y="{top + 14}" font-size="11" fill="{_AFTER}">after</text></svg>'
    )
    return "".join(parts)


def _calibration(cal: dict) -> str:
    rows = []
    v = as_dict(cal.get("validation"))
    if v:
        rows.append(["validation (fitted here)", esc(v.get("n")), num(v["before"]["ece"], ".4f"),
                     num(v["after"]["ece"], ".4f"), num(v["before"]["nll"], ".4f"),
                     num(v["after"]["nll"], ".4f")])  # fmt: skip
        c = as_dict(v.get("cross_fitted_after"))
        if c:
            rows.append(["validation, cross-fitted", esc(v.get("n")),
                         num(v["before"]["ece"], ".4f"), num(c.get("ece"), ".4f"),
                         num(v["before"]["nll"], ".4f"), num(c.get("nll"), ".4f")])  # fmt: skip
    t = as_dict(cal.get("test"))
    if t:
        rows.append(["test", esc(t.get("n")), num(t["before"]["ece"], ".4f"),
                     num(t["after"]["ece"], ".4f"), num(t["before"]["nll"], ".4f"),
                     num(t["after"]["nll"], ".4f")])  # fmt: skip
    applied = (
        f"the logits are divided by T = {esc(cal.get('temperature'))}, fitted on the "
        "validation split and folded into the exported graph"
        if not cal.get("note")
        else "fitted on the validation split, not applied (below)"
    )
    text = (
        f"<p>{esc(cal.get('method', 'temperature scaling'))}: {applied}. Expected "
        "calibration error (15 bins) and negative "
        "log-likelihood before and after; cross-fitted = fitted on one half of validation, "
        "measured on the other.</p>"
    )
    if cal.get("note"):
        text += f'<p class="muted">{esc(cal["note"])}.</p>'
    head = ["split", "images", "ECE before", "ECE after", "NLL before", "NLL after"]
    body = text + table(head, rows, (1, 2, 3, 4, 5))
    rel = as_dict(cal.get("reliability"))
    if rel.get("before"):
        body += f"<p>Reliability diagram ({esc(rel.get('split'))}):</p>"
        body += reliability_svg(rel["before"], rel.get("after") or [])
    return body


def _ood(ood: dict) -> str:
    rows = [
        ["threshold (p-value)", esc(ood.get("threshold"))],
        ["reference training images", esc(ood.get("reference_images"))],
        ["held-out validation images", esc(ood.get("held_out_images"))],
        ["validation flagged (cross-fitted)", pct(ood.get("validation_flagged_cross_fitted"))],
    ]
    if "test_flagged" in ood:
        rows.append(["test flagged", pct(ood.get("test_flagged"))])
        rows.append(["test median p-value", num(ood.get("test_median_pvalue"), ".3f")])
    text = (
        f"<p>Every prediction carries <code>ood_pvalue</code>: {esc(ood.get('method'))}. "
        "An image is flagged when it is at or below the threshold, which flags about that "
        "share of images from the training distribution.</p>"
    )
    return text + table([], rows)


def _int8(q: dict) -> str:
    head = ["model", "images/s", "validation accuracy"]
    rows = [
        ["fp32", num(q.get("fp32_images_per_second"), ".1f"), num(q.get("fp32_accuracy"), ".4f")],
        ["int8", num(q.get("int8_images_per_second"), ".1f"), num(q.get("int8_accuracy"), ".4f")],
    ]
    verdict = "kept as model.int8.onnx" if q.get("kept") else "not kept"
    return f"<p>int8 (static, QDQ, per-channel): {verdict}. {esc(q.get('reason'))}</p>" + table(
        head, rows, (1, 2)
    )


def trust_section(metrics: dict) -> str:
    cal, ood = as_dict(metrics.get("calibration")), as_dict(metrics.get("ood"))
    if not cal and not ood:
        return section("trust", "What the model knows of its limits",
                       not_recorded("Calibration and the OOD flag"))  # fmt: skip
    body = "".join(f'<p class="warn">shift: {esc(line)}</p>' for line in metrics.get("shift") or [])
    if cal:
        body += "<h3>Calibration</h3>" + _calibration(cal)
    if ood:
        body += "<h3>Out-of-distribution flag</h3>" + _ood(ood)
    q = as_dict(metrics.get("int8"))
    if q:
        body += "<h3>int8</h3>" + _int8(q)
    return section("trust", "What the model knows of its limits", body)
