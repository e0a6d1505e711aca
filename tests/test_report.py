"""report.html: unit tests on synthetic data, and the rendered page in headless Chromium.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe, stdlib
only): `--enable-logging=stderr` prints console.error, console.warn and console.log alike
as INFO:CONSOLE and prints nothing at all for an image that fails to load, so it cannot
tell a clean page from a broken one. The protocol reports console calls with their level
(Runtime.consoleAPICalled), failed loads (Log.entryAdded, source "network"), uncaught
exceptions (Runtime.exceptionThrown) and every request made (Network.requestWillBeSent).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_tl.report.html import REPORT_NAME, render_report, write_report
from automl_tl.report.html_kit import misclassified, thumbnail_data_uri
from tests.helpers import SHARED

EVIL = "<script>alert(1)</script>"
UNICODE_FILE = "ñandú «fig» 蜂 & <b>.jpg"
IDS = ["summary", "audit", "decision", "curves", "confusion", "per-class", "misclassified"]
IDS += ["export-check"]


class _Tags(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def _history(n: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "train_acc": 1 - 0.5 / e,
            "val_loss": 1.2 / e,
            "val_acc": 1 - 0.6 / e,
        }
        for e in range(1, n + 1)
    ]


def _synthetic(classes=("ants", EVIL), n_epochs=7) -> dict:
    classes = list(classes)
    per_class = {c: {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10} for c in classes}
    return {
        "title": f"run on {EVIL}",
        "data_path": "/data/<imgs> & 'more'",
        "backbone": "efficientnet_lite0",
        "classes": classes,
        "audit": {
            "files_scanned": 23,
            "usable": 20,
            "classes": classes,
            "per_class": {c: 10 for c in classes},
            "left_out_classes": [f"empty {EVIL}"],
            "problems": [{"path": f"/data/{UNICODE_FILE}", "reason": "truncated <JPEG>"}],
            "conversions": {"P->RGB": 1},
        },
        "plan": {"case": 1, "strategy": "frozen_head", "cut": "head", "reasons": [EVIL]},
        "profile": {"probes": {"stem": 0.6, "head": 0.9}, "bn_drift": {"stem": 1.5}},
        "metrics": {
            "validation": {
                "n": 20,
                "accuracy": 0.85,
                "balanced_accuracy": 0.85,
                "per_class": per_class,
                "confusion_matrix": [[8, 2], [1, 9]],
            },
            "history": _history(n_epochs),
            "best_epoch": 3,
            "fit_seconds": 12.5,
            "notes": [f"note {EVIL}"],
        },
        "export_check": {"n_images": 16, "max_abs_diff": 2e-6, "tolerance": 1e-4, "passed": True},
        "misclassified": [
            {"path": f"/data/{UNICODE_FILE}", "true": EVIL, "pred": "ants", "thumbnail": ""}
        ],
    }


# ------------------------------------------------------------------ unit tests
def test_user_strings_are_escaped():
    page = render_report(_synthetic())
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "ñandú «fig» 蜂 &amp; &lt;b&gt;.jpg" in page  # unicode kept, markup escaped
    assert "/data/&lt;imgs&gt; &amp; &#x27;more&#x27;" in page
    tags = _tags(page)
    assert "script" not in {t for t, _ in tags}
    assert not [a for _, attrs in tags for a in attrs if a.startswith("on")]


def test_sections_have_stable_ids_and_content():
    page = render_report(_synthetic())
    ids = {attrs.get("id") for _, attrs in _tags(page)}
    assert set(IDS) <= ids
    assert "PASS" in page and "2.00e-06" in page
    assert 'class="chosen"' in page  # the cut point's row in the probe table
    assert "12.5 s" in page and "85.0%" in page
    assert '<details id="skipped" open>' in page  # a short list of left-out files is open
    data = _synthetic()
    data["audit"]["problems"] *= 11
    assert '<details id="skipped">' in render_report(data)  # a long one starts collapsed


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"plan": None, "profile": None, "metrics": None, "audit": None, "misclassified": None},
        {"metrics": {"validation": {}, "history": [], "test": None}, "profile": {}},
        {"metrics": {"history": [{"epoch": 1, "train_loss": None, "val_loss": float("nan")}]}},
    ],
)
def test_missing_parts_render(data):
    page = render_report(data)
    ids = {attrs.get("id") for _, attrs in _tags(page)}
    assert set(IDS) <= ids
    assert "not recorded" in page


def test_finetuning_run_without_train_predictions_and_with_test_split():
    data = _synthetic(classes=("a", "b"))
    data["metrics"]["test"] = dict(data["metrics"]["validation"], accuracy=0.75)
    for row in data["metrics"]["history"]:  # a fine-tuning history carries more keys
        row.update(lr_backbone=1e-4, lr_head=1e-3, seconds=3.0)
    page = render_report(data)
    ids = {attrs.get("id") for _, attrs in _tags(page)}
    assert {"confusion-test", "per-class-test"} <= ids
    assert "75.0%" in page and "training split" not in page
    data["metrics"]["train_accuracy"] = 0.99
    assert "99.0%" in render_report(data)


@pytest.mark.parametrize("n_epochs", [1, 7, 60])
def test_polyline_points_equal_epochs(n_epochs):
    data = _synthetic(n_epochs=n_epochs)
    data["metrics"]["best_epoch"] = min(3, n_epochs)
    page = render_report(data)
    lines = [a for t, a in _tags(page) if t == "polyline"]
    names = sorted(a["data-series"] for a in lines)
    assert names == ["train_acc", "train_loss", "val_acc", "val_loss"]
    for a in lines:
        assert len(a["points"].split()) == n_epochs
    best = [a for t, a in _tags(page) if t == "line" and a.get("stroke-dasharray") == "4 3"]
    assert len(best) == 2  # the best epoch is marked on both charts


def test_no_external_references(tmp_path):
    data = _synthetic()
    img = tmp_path / "x.png"
    Image.new("RGB", (300, 200), (200, 120, 40)).save(img)
    data["misclassified"][0]["thumbnail"] = thumbnail_data_uri(img)
    data["misclassified"].append({"path": "y.jpg", "true": "a", "pred": "b", "thumbnail": "y.jpg"})
    page = render_report(data)
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<link|<script|@import|url\(", page)
    srcs = [a["src"] for t, a in _tags(page) if "src" in a]
    assert srcs and all(s.startswith("data:image/jpeg;base64,") for s in srcs)


def test_write_report_is_atomic_and_complete(tmp_path):
    data = _synthetic()
    path = write_report(tmp_path, data)
    assert path == tmp_path / REPORT_NAME
    assert path.read_text(encoding="utf-8") == render_report(data)
    assert [p.name for p in tmp_path.iterdir()] == [REPORT_NAME]  # no temporary file left


def test_thumbnails_and_misclassified_selection(tmp_path):
    paths = []
    for i, mode in enumerate(["RGBA", "L", "P", "RGB", "RGB", "RGB"]):
        p = tmp_path / f"{i}-{UNICODE_FILE.replace('/', '_')}.png"
        Image.new(mode, (400, 300)).save(p)
        paths.append(p)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    paths.append(broken)
    y_true = np.array([0, 0, 0, 0, 1, 1, 1])
    y_pred = np.array([1, 1, 1, 0, 0, 1, 0])  # wrong: 0, 1, 2 (class 0), 4, 6 (class 1)
    items = misclassified(paths, y_true, y_pred, ["a", "b"], limit=4)
    assert [Path(it["path"]) for it in items] == [paths[0], paths[4], paths[1], broken]
    assert [(it["true"], it["pred"]) for it in items] == [("a", "b"), ("b", "a")] * 2
    assert items[-1]["thumbnail"] == ""  # unreadable: a placeholder, not a crash
    uri = items[0]["thumbnail"]
    assert uri.startswith("data:image/jpeg;base64,")
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert thumb.format == "JPEG" and max(thumb.size) == 128
    assert misclassified(paths, y_true, y_true, ["a", "b"]) == []


# ------------------------------------------------------------- headless Chromium
class _DevTools:
    """Headless Chromium driven over --remote-debugging-pipe (fd 3 in, fd 4 out, JSON + NUL)."""

    def __init__(self, exe: str, profile_dir: Path):
        to_child, from_child = os.pipe(), os.pipe()
        # Move the child's ends above 9 so the dup2 onto 3 and 4 cannot overwrite them.
        ends = [fcntl.fcntl(to_child[0], fcntl.F_DUPFD_CLOEXEC, 10)]
        ends.append(fcntl.fcntl(from_child[1], fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(to_child[0])
        os.close(from_child[1])

        def child_fds():
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        self.stderr = tempfile.TemporaryFile()
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
        args += [f"--user-data-dir={profile_dir}", "--remote-debugging-pipe", "--hide-scrollbars"]
        self.proc = subprocess.Popen(
            [exe, *args, "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            preexec_fn=child_fds,
            close_fds=False,  # the dup2'd 3 and 4 must survive; other fds are CLOEXEC
        )
        for fd in ends:
            os.close(fd)
        self.out, self.inp = to_child[1], from_child[0]
        self.buf, self.last_id, self.events, self.session = b"", 0, [], None

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.inp], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                self.stderr.seek(0)
                raise EOFError(f"chromium exited: {self.stderr.read()[-800:]!r}")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self.last_id += 1
        msg = {"id": self.last_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self.out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._message(deadline)
            if m.get("id") == self.last_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(m.get("method") == event for m in self.events):
            self.events.append(self._message(deadline))

    def open(self, url: str, width: int = 1280, height: int = 1000) -> None:
        """Open `url` in a new tab with console, log, network and page events recorded."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.call("Runtime.evaluate", expression="1", awaitPromise=True)  # flush pending events

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors/warnings/asserts, failed loads, uncaught exceptions."""
        found = []
        for m in self.events:
            p = m.get("params", {})
            if m.get("method") == "Runtime.consoleAPICalled" and p["type"] in (
                "error",
                "warning",
                "assert",
            ):
                text = " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
                found.append(f"console.{p['type']}: {text}")
            elif m.get("method") == "Log.entryAdded" and p["entry"]["level"] in (
                "error",
                "warning",
            ):
                e = p["entry"]
                found.append(f"{e['source']} {e['level']}: {e['text']} {e.get('url', '')}")
            elif m.get("method") == "Runtime.exceptionThrown":
                found.append(f"exception: {p['exceptionDetails'].get('text')}")
        return found

    def requests(self) -> list[str]:
        return [
            m["params"]["request"]["url"]
            for m in self.events
            if m.get("method") == "Network.requestWillBeSent"
        ]

    def screenshot(self, path: Path, width: int = 1280) -> None:
        """A PNG of the whole page (the viewport grown to the content height)."""
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=int(height),
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError, EOFError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.out)
        os.close(self.inp)
        self.stderr.close()


@pytest.fixture
def browser(chromium, tmp_path):
    tools = _DevTools(chromium, tmp_path / "chromium-profile")
    yield tools
    tools.close()


def test_console_problem_detector_catches_errors(browser, tmp_path):
    """Proof the detector works: a page with each kind of problem is flagged for each."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title></head><body>'
        '<p id="x">x</p><img src="missing.png" alt="">'
        "<script>console.error('deliberate error'); console.warn('deliberate warning');"
        "console.log('harmless log'); undefinedFunction();</script></body></html>",
        encoding="utf-8",
    )
    browser.open(page.as_uri())
    found = "\n".join(browser.problems())
    assert "console.error: deliberate error" in found
    assert "console.warning: deliberate warning" in found
    assert re.search(r"network error: Failed to load resource: \S+ .*missing\.png", found)
    assert "exception: Uncaught" in found
    assert "harmless log" not in found
    assert any(u.endswith("/missing.png") for u in browser.requests())


def _photos(folder: Path, n: int) -> list[Path]:
    """Real hymenoptera validation photos when the shared data is there, else drawn ones."""
    real = SHARED / "hymenoptera_data" / "val"
    if real.is_dir():
        return sorted(real.glob("*/*.jpg"))[:: max(1, 150 // n)][:n]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        y, x = np.mgrid[0:240, 0:320]
        rgb = np.stack([(x + 40 * i) % 256, (y * 2) % 256, (x + y + 90 * i) % 256], -1)
        p = folder / f"photo_{i}.jpg"  # no class folder: labels alternate
        Image.fromarray(rgb.astype(np.uint8)).save(p)
        out.append(p)
    return out


def _realistic(tmp_path: Path) -> dict:
    """What a fit on hymenoptera_data (ants vs bees, 398 photos) produced, numbers included."""
    photos = _photos(tmp_path / "photos", 6)
    classes = ["ants", "bees"]
    y_true = np.array(
        [
            classes.index(p.parent.name) if p.parent.name in classes else i % 2
            for i, p in enumerate(photos)
        ]
    )
    items = misclassified(photos, y_true, 1 - y_true, classes)
    history = [
        {"epoch": e + 1, "train_loss": a, "train_acc": b, "val_loss": c, "val_acc": d}
        for e, (a, b, c, d) in enumerate(
            [(0.324, 0.914, 0.374, 0.895), (0.159, 0.955, 0.218, 0.941)]
            + [(0.104, 0.967, 0.174, 0.948), (0.077, 0.980, 0.156, 0.948)]
            + [
                (0.059 * 0.85**k, min(1.0, 0.984 + 0.004 * k), 0.145 - 0.004 * min(k, 6), 0.941)
                for k in range(15)
            ]
        )
    ]
    per_class = {
        "ants": {"precision": 0.9306, "recall": 0.9571, "f1": 0.9437, "support": 70},
        "bees": {"precision": 0.9630, "recall": 0.9398, "f1": 0.9512, "support": 83},
    }
    stages = [f"block{i}" for i in range(7)]
    probes = dict(zip(stages, [0.588, 0.676, 0.734, 0.827, 0.854, 0.899, 0.927], strict=True))
    drift = dict(zip(stages, [0.883, 0.140, 0.078, 0.091, 0.088, 0.177, 0.226], strict=True))
    reasons = [
        "data: 398 usable images in 2 classes (train 245, validation 153, test 0); "
        "largest/smallest class = 1.05",
        "backbone: efficientnet_lite0 pretrained on imagenet-1k",
        "size: small: 245 training images vs 2560 = 1 x 1280 features x 2 classes "
        "(the new head's parameters); ratio 0.10",
        "similarity: similar: median p-value 0.596 vs threshold 0.5 (margin +0.096); median "
        "nearest-neighbour cosine 0.298 vs the bank's own 0.276 (1000 class vectors of the "
        "source classifier)",
        "case 1: small + similar: freeze the backbone, train a new fully connected head; "
        "strategy 'frozen_head'",
        "cut point: last stage 'head' (1280 features)",
    ]
    return {
        "title": "automl-tl run: hymenoptera_data",
        "created": "2026-11-22T03:20:11Z",
        "data_path": "/work/shared/datasets/hymenoptera_data",
        "backbone": "efficientnet_lite0",
        "classes": classes,
        "audit": {
            "files_scanned": 401,
            "usable": 398,
            "classes": classes,
            "per_class": {"ants": 194, "bees": 204},
            "left_out_classes": [],
            "problems": [
                {"path": "train/ants/imageNotFound.gif", "reason": "not an image (GIF text)"},
                {"path": "train/bees/2405441001_b06c36fa72.jpg", "reason": "truncated JPEG"},
                {"path": "val/bees/copy of 72100438_73de9f17af.jpg", "reason": "duplicate"},
            ],
            "conversions": {"P->RGB": 1},
        },
        "plan": {
            "case": 1,
            "case_description": "small + similar: freeze the backbone, train a new fully "
            "connected head",
            "strategy": "frozen_head",
            "backbone": "efficientnet_lite0",
            "cut": "head",
            "reasons": reasons,
            "expected_accuracy": {"low": 0.9223, "high": 0.9672, "probe_accuracy": 0.9447},
        },
        "profile": {
            "images": 398,
            "classes": 2,
            "train_images": 245,
            "val_images": 153,
            "test_images": 0,
            "feature_width": 1280,
            "size": "small",
            "similar": "similar",
            "similarity": {
                "bank": "1000 class vectors of the source classifier",
                "median_score": 0.2979,
                "bank_median_score": 0.2763,
                "median_pvalue": 0.596,
                "share_below_bank_q05": 0.0226,
            },
            "source_classifier": {
                "n_source_classes": 1000,
                "mean_max_softmax": 0.707,
                "median_neg_energy": 10.02,
            },
            "bn_drift": {"stem": 1.588, **drift, "head": 0.072},
            "probes": {"stem": 0.656, **probes, "head": 0.945},
            "probe_n": 398,
        },
        "metrics": {
            "validation": {
                "n": 153,
                "accuracy": 0.9477,
                "balanced_accuracy": 0.9485,
                "per_class": per_class,
                "confusion_matrix": [[67, 3], [5, 78]],
            },
            "train_accuracy": 0.9796,
            "history": history,
            "best_epoch": 4,
            "fit_seconds": 18.78,
            "expected_accuracy": {
                "low": 0.9223,
                "high": 0.9672,
                "achieved": 0.9477,
                "within": True,
                "basis": "95% interval of the leave-one-out k-NN probe on 'head' features",
            },
            "notes": [],
        },
        "export_check": {
            "n_images": 16,
            "max_abs_diff": 2.38e-6,
            "tolerance": 1e-4,
            "top1_agreement": 1.0,
            "providers": ["CPUExecutionProvider"],
            "passed": True,
        },
        "misclassified": items,
        "cache": {"hits": 398, "computed": 0, "backend": "cpu-extension"},
    }


def test_report_renders_cleanly_in_chromium(browser, tmp_path):
    data = _realistic(tmp_path)
    report = write_report(tmp_path, data)
    browser.open(report.as_uri())
    assert browser.problems() == []
    requests = browser.requests()  # the page itself, then its inline thumbnails
    assert requests[0] == report.as_uri()
    assert all(u.startswith("data:image/jpeg;base64,") for u in requests[1:])
    found = browser.evaluate(
        f"JSON.stringify({json.dumps(IDS)}.map(id => {{"
        "const e = document.getElementById(id); return [id, !!e && e.offsetHeight > 0]}))"
    )
    assert dict(json.loads(found)) == dict.fromkeys(IDS, True)
    images = json.loads(
        browser.evaluate(
            "JSON.stringify([...document.images].map(i => i.complete && i.naturalWidth > 0))"
        )
    )
    assert images == [True] * len(data["misclassified"])  # every thumbnail decoded
    assert browser.evaluate("document.querySelectorAll('svg polyline').length") == 4
    shot = tmp_path / "report.png"
    browser.screenshot(shot)
    with Image.open(shot) as img:
        assert img.width == 1280 and img.height > 1500
    if os.environ.get("AUTOML_TL_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["AUTOML_TL_REPORT_SCREENSHOT"])


def test_a_real_runs_report_renders_cleanly(browser, fitted, tmp_path):
    """The report.html a real `fit` wrote (conftest's fitted digits run): every section
    present and visible, no console problems, nothing fetched from outside the page."""
    report = Path(fitted.run_dir_) / "report.html"
    assert report == Path(fitted.report_path_)
    browser.open(report.as_uri())
    assert browser.problems() == []
    assert all(u.startswith("data:image/") for u in browser.requests()[1:])
    found = browser.evaluate(
        f"JSON.stringify({json.dumps(IDS)}.map(id => {{"
        "const e = document.getElementById(id); return [id, !!e && e.offsetHeight > 0]}))"
    )
    assert dict(json.loads(found)) == dict.fromkeys(IDS, True)
    text = browser.evaluate("document.body.innerText")
    acc = fitted.metrics_["validation"]["accuracy"]
    assert f"{100 * acc:.1f}%" in text and "PASS" in text
    for name in fitted.classes_:
        assert name in text
    shot = tmp_path / "real-report.png"
    browser.screenshot(shot)
    with Image.open(shot) as img:
        assert img.width == 1280 and img.height > 1000
