"""The pieces report.html is built from: its stylesheet, escaping, number formats, tables,
bars, an SVG line chart and image thumbnails as data: URIs. Every user-controlled string
goes through `esc`."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import numbers
import os
from html import escape

from PIL import Image

from ..data.preprocess import load_rgb

CSS = """
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


def esc(value) -> str:
    return escape(str(value), quote=True)


def is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def pct(x) -> str:
    return f"{100 * x:.1f}%" if is_number(x) else "–"


def num(x, fmt: str = ".3f") -> str:
    return format(x, fmt) if is_number(x) else "–"


def seconds_text(s) -> str:
    return (
        "–"
        if not is_number(s)
        else f"{s:.1f} s"
        if s < 120
        else f"{s // 60:.0f} min {s % 60:.0f} s"
    )


def as_dict(x) -> dict:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    return x if isinstance(x, dict) else {}


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'


def not_recorded(what: str) -> str:
    return f'<p class="muted">{esc(what)} not recorded for this run.</p>'


def table(head: list[str], rows: list[list[str]], numeric=(), mark: int = -1) -> str:
    """Cells are HTML (escaped by the caller); `numeric` columns align right; row `mark` is
    highlighted; no header row when `head` is empty."""

    def tr(cells, tag, attr=""):
        n = [' class="n"' if i in numeric else "" for i in range(len(cells))]
        cols = "".join(f"<{tag}{n[i]}>{c}</{tag}>" for i, c in enumerate(cells))
        return f"<tr{attr}>{cols}</tr>"

    body = "".join(tr(r, "td", ' class="chosen"' if i == mark else "") for i, r in enumerate(rows))
    return f'<div class="scroll"><table>{tr(head, "th") if head else ""}{body}</table></div>'


def bar(fraction, width: int = 120) -> str:
    w = max(0.0, min(1.0, fraction)) * width if is_number(fraction) else 0
    return f'<span class="bar" style="width:{w:.0f}px"></span>'


def line_chart(name: str, series: list[tuple[str, str, list]], epochs: list, best, y_max) -> str:
    """One SVG line chart: series of (key, colour, value per epoch); the best epoch marked."""
    w, h, left, right, top, bottom = 480, 280, 52, 14, 44, 40
    pts = [v for _, _, vals in series for v in vals if is_number(v)]
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
        xy = [(x(e), y(v)) for e, v in zip(epochs, vals, strict=False) if is_number(v)]
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


def label_issue_items(rows: list[dict] | None, limit: int = 12) -> list[dict] | None:
    """The first `limit` label issues with a thumbnail each ("" for an unreadable image)."""
    if rows is None:
        return None
    out = []
    for r in rows[:limit]:
        try:
            thumb = thumbnail_data_uri(r["path"])
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            thumb = ""
        out.append({**r, "thumbnail": thumb})
    return out
