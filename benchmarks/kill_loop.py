"""Kill and resume: `automl-tl fit` killed with SIGKILL at random (seeded) moments of embedding,
head training and fine-tuning, every kill followed by the same command again (issue #6).

After every kill `automl-tl cache verify` must exit 0. Every re-run must complete, resume and
leave a valid model:
  embed     the re-run's cache hits equal the images committed before the kill (none of them
            is recomputed) and it computes only the rest;
  train     the re-run reads every row from the cache (computes nothing);
  finetune  `--resume` continues after the epoch of the checkpoint the kill left (0: none yet)
            and the history holds every epoch once;
  model     model.onnx loads in onnxruntime, `automl-tl predict` labels a folder, metrics.json,
            plan.json and report.html are there and the export check passed.

The CLI runs in subprocesses (own session, so the kill takes loader workers too) with stderr on
a pseudo-terminal: console.py redraws progress bars live on a TTY but prints only their final
line otherwise. A kill lands at a random delay after the targeted phase began (its first progress
line, or for fine-tuning the "no checkpoint" / "resuming" note), a seeded fraction of the phase's
duration measured by one uninterrupted calibration run (for embedding, as the rate its progress
bar shows in that very run predicts it: the machine's load changes from run to run). An attempt
whose phase ends before its kill time is let finish, reported as missed and repeated; it is not
counted as a kill.

    python benchmarks/kill_loop.py [--kills 21] [--seed 0] [--markdown out.md] [--work DIR]
"""

from __future__ import annotations

import argparse
import codecs
import functools
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("embed", "train", "finetune")
_BAR = re.compile(r"^(?P<label>\S.*?)\s+\[[# ]*\]\s+(?P<done>\d+)/(?P<total>\d+)")
_WHOLE_BAR = re.compile(_BAR.pattern + r"\s+[\d.]+\s+\S+/s")  # a redraw read in full
_RESUMED = re.compile(r"resuming fine-tuning after epoch (\d+)")
FINETUNE_EPOCHS = 3


# ------------------------------------------------------------------ watching a live run
@dataclass(frozen=True)
class Segment:
    """One redraw or line of the run's stderr: arrival time, text, ended by a newline."""

    t: float
    text: str
    final: bool

    def bar(self) -> tuple[str, int, int] | None:
        """(label, done, total) when this is a progress bar."""
        m = _BAR.match(self.text)
        return (m["label"], int(m["done"]), int(m["total"])) if m else None


def _child_setup(nice: int) -> None:
    """In the child before exec: Ctrl-C behaves as in a terminal even when this script runs
    in the background of a non-interactive shell (which starts it with SIGINT ignored, and
    Python then keeps it ignored); a lower priority lets the watcher aim closer."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if nice:
        os.nice(nice)


class Watched:
    """`python -m automl_tl ARGS` with stderr on a pseudo-terminal, read as timestamped
    segments (redraws end with a carriage return, lines with a newline)."""

    def __init__(self, args: list[str], cwd: Path = ROOT, env: dict | None = None, nice: int = 0):
        master, slave = pty.openpty()
        tty.setraw(slave)  # no newline translation: "\r" redraws and "\n" lines stay apart
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "automl_tl", *map(str, args)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            start_new_session=True,
            preexec_fn=functools.partial(_child_setup, nice),
        )
        os.close(slave)
        self._fd: int | None = master
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._live: str | None = None  # the unterminated redraw already in `segments`
        self.segments: list[Segment] = []
        self.text = ""

    def pump(self, timeout: float = 0.02) -> bool:
        """Read what arrives within `timeout` seconds; False once the terminal is closed."""
        if self._fd is None:
            time.sleep(timeout)
            return False
        if not select.select([self._fd], [], [], timeout)[0]:
            return True
        try:
            data = os.read(self._fd, 65536)
        except OSError:  # EIO: every writer is gone
            data = b""
        if not data:
            os.close(self._fd)
            self._fd = None
            return False
        text = self._decoder.decode(data)
        self.text += text
        now = time.monotonic()
        parts = re.split(r"([\r\n])", self._pending + text)
        for body, sep in zip(parts[0:-1:2], parts[1::2], strict=True):
            if body == self._live and self.segments[-1].text == body.rstrip():
                if sep == "\n":  # the redraw shown below was a bar's final line
                    self.segments[-1] = Segment(self.segments[-1].t, body.rstrip(), True)
            elif body.strip():
                self.segments.append(Segment(now, body.rstrip(), sep == "\n"))
            self._live = None
        self._pending = parts[-1]
        # A redraw ends only when the next one begins ("\r"): show a whole one at once.
        if self._live is None and _WHOLE_BAR.match(self._pending):
            self.segments.append(Segment(now, self._pending.rstrip(), False))
            self._live = self._pending
        return True

    def wait_for(self, predicate: Callable[[Segment], bool], timeout: float) -> Segment:
        """The first segment (already read or arriving) matching; RuntimeError when the run
        ends or `timeout` passes first."""
        deadline, seen = time.monotonic() + timeout, 0
        while True:
            for seg in self.segments[seen:]:
                if predicate(seg):
                    return seg
            seen = len(self.segments)
            if not self.pump(0.02) and self.proc.poll() is not None:
                raise RuntimeError(f"run ended (exit {self.proc.returncode}):\n{self.text[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"nothing matched within {timeout:.0f}s:\n{self.text[-2000:]}")

    def signal(self, sig: int) -> None:
        """Send `sig` to the run's whole process group (as a terminal's Ctrl-C would)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> int:
        """SIGKILL the process group; returns the exit code (-9)."""
        self.signal(signal.SIGKILL)
        return self.finish(60)

    def finish(self, timeout: float) -> int:
        """Read the terminal until it closes and wait for the exit code."""
        deadline = time.monotonic() + timeout
        while self.pump(0.05) and time.monotonic() < deadline:
            pass
        return self.proc.wait(max(1.0, deadline - time.monotonic()))


# ------------------------------------------------------------------ CLI helpers
def cli(*args, timeout: float = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m automl_tl ARGS`, output captured (stderr is not a TTY: final lines only)."""
    cmd = [sys.executable, "-m", "automl_tl", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def verify_cache(cache: Path) -> tuple[bool, str]:
    """(clean, summary) of `automl-tl cache verify`: clean means exit 0 and no problem."""
    res = cli("cache", "verify", "--cache-dir", cache, "--json", timeout=300)
    try:
        report = json.loads(res.stdout)
    except ValueError:
        return False, f"exit {res.returncode}: {res.stderr.strip()[-200:]}"
    ok = res.returncode == 0 and report.get("ok") and not report.get("problems")
    return bool(ok), "clean" if ok else "; ".join(report.get("problems", []))[:200]


def committed_images(cache: Path) -> int:
    """Images whose rows the cache holds for every stage (a put commits all stages at once)."""
    res = cli("cache", "info", "--cache-dir", cache, "--json", timeout=300)
    info = json.loads(res.stdout)
    counts = [s["entries"] for sp in info["spaces"] for s in sp["stages"].values()]
    return min(counts) if counts else 0


def image_count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.png"))


def check_model(run_dir: Path, predict_dir: Path) -> list[str]:
    """What is wrong with a finished run folder (empty: a valid model)."""
    import onnxruntime as ort

    problems = [
        f"{name} missing"
        for name in ("model.onnx", "metrics.json", "plan.json", "report.html")
        if not (run_dir / name).is_file()
    ]
    if problems:
        return problems
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if not metrics.get("export_check", {}).get("passed"):
        problems.append(f"export check: {metrics.get('export_check')}")
    try:
        ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - reported, not raised
        problems.append(f"onnxruntime cannot load model.onnx: {type(e).__name__}")
    res = cli("predict", run_dir / "model.onnx", predict_dir, timeout=600)
    labelled = [ln for ln in res.stdout.splitlines() if "\t" in ln and "\tERROR" not in ln]
    if res.returncode != 0 or len(labelled) != image_count(predict_dir):
        problems.append(f"predict: exit {res.returncode}, {len(labelled)} images labelled")
    return problems


def checkpoint_epoch(run_dir: Path) -> int | str:
    """Epoch of the fine-tuning checkpoint in `run_dir` (0: none), or why it is unreadable."""
    from automl_tl.train.checkpoints import CheckpointError, load_checkpoint

    path = run_dir / "checkpoints" / "pretrained" / "finetune.pt"
    if not path.exists():
        return 0
    try:
        return int(load_checkpoint(path)["epoch"])
    except CheckpointError as e:
        return f"unreadable: {e}"


def resumed_from(stderr: str) -> int | None:
    """The epoch a fine-tuning run says it resumed after (0: from the start), else None."""
    m = _RESUMED.search(stderr)
    if m:
        return int(m[1])
    return 0 if "no checkpoint at" in stderr else None


# ------------------------------------------------------------------ phases and scenarios
@dataclass(frozen=True)
class Phase:
    """Where a phase starts and ends in the stderr segments, and the kill window (fractions
    of its calibrated duration)."""

    name: str
    starts: Callable[[Segment], bool]
    ends: Callable[[Segment], bool]
    window: tuple[float, float]


def _bar_is(label: str, seg: Segment) -> bool:
    b = seg.bar()
    return b is not None and b[0] == label


PHASE = {
    # Rows are committed every 256 images: a kill after 45% of 800 images finds some stored
    # (the kill time scales with the rate the bar shows in that run, see expected()).
    "embed": Phase(
        "embed",
        lambda s: _bar_is("embed", s),
        lambda s: _bar_is("embed", s) and s.bar()[1] >= s.bar()[2],
        (0.45, 0.9),
    ),
    # Head training is the frozen heads' measurement: one fit per cached view.
    "train": Phase(
        "train",
        lambda s: _bar_is("candidates", s),
        lambda s: s.final and _bar_is("candidates", s),
        (0.1, 0.9),
    ),
    # Kills mostly after the first epoch's checkpoint, so most re-runs really resume.
    "finetune": Phase(
        "finetune",
        lambda s: s.text.startswith(("no checkpoint at", "resuming fine-tuning")),
        lambda s: s.text.startswith("train: fine-tuned"),
        (0.4, 0.95),
    ),
}


@dataclass
class Scenario:
    """One phase's command (same for the killed run and its re-run) and its reset."""

    phase: Phase
    args: list
    data: Path
    out: Path
    cache: Path
    reset: Callable[[], None]
    duration: float = 0.0

    @property
    def predict_dir(self) -> Path:
        return sorted(p for p in self.data.iterdir() if p.is_dir())[0]


def make_scenarios(work: Path) -> dict[str, Scenario]:
    """Digits data (10 classes x 80 for embedding, all ~1800 for head training so its epochs
    take a while, 3 x 10 for fine-tuning), one private cache, a fixed --out per scenario."""
    from automl_tl.data.demo import write_digits

    data = {
        "embed": write_digits(work / "digits800", per_class=80),
        "train": write_digits(work / "digits-all", per_class=200),  # ~1800: longer epochs
        "finetune": write_digits(work / "digits30", per_class=10, digits=(0, 1, 7)),
    }
    cache = work / "cache"
    out = {p: work / f"run-{p}" for p in PHASES}

    def fresh(folder: Path, clear_cache: bool = False) -> Callable[[], None]:
        def reset() -> None:
            shutil.rmtree(folder, ignore_errors=True)
            if clear_cache:  # features only; the onnxruntime export and memo stay
                res = cli("cache", "clear", "--yes", "--cache-dir", cache, timeout=300)
                if res.returncode != 0:
                    raise RuntimeError(f"cache clear failed: {res.stderr.strip()}")

        return reset

    head = ["--case", "1", "--batch-size", "16", "--cache-dir", cache]
    ft = [
        "--case",
        "3",
        "--finetune-epochs",
        str(FINETUNE_EPOCHS),
        "--resume",
        "--cache-dir",
        cache,
    ]
    argv = {
        "embed": ["fit", data["embed"], *head, "--epochs", "30"],
        # --case 2: the frozen heads are measured on every cached view (seconds of fitting)
        "train": ["fit", data["train"], "--case", "2", *head[2:]],
        "finetune": ["fit", data["finetune"], *ft],
    }
    return {
        p: Scenario(
            PHASE[p],
            [*argv[p], "--out", out[p]],
            data[p],
            out[p],
            cache,
            fresh(out[p], clear_cache=p == "embed"),
        )
        for p in PHASES
    }


def phase_bounds(phase: Phase, segments: list[Segment]) -> tuple[float | None, float | None]:
    """(start, end) arrival times of the phase's first occurrence (None: not seen yet)."""
    start = None
    for seg in segments:
        if start is None and phase.starts(seg):
            start = seg.t
        if start is not None and phase.ends(seg):
            return start, seg.t
    return start, None


def calibrate(sc: Scenario) -> float:
    """Run the scenario once uninterrupted; the phase's duration in seconds."""
    sc.reset()
    w = Watched(sc.args)
    rc = w.finish(3600)
    start, end = phase_bounds(sc.phase, w.segments)
    if rc != 0 or start is None or end is None:
        raise RuntimeError(f"calibration of {sc.phase.name} failed (exit {rc}):\n{w.text[-3000:]}")
    return max(end - start, 0.5)


# ------------------------------------------------------------------ one kill
@dataclass
class Kill:
    """What one kill and its re-run showed."""

    n: int
    phase: str
    delay: float = 0.0
    at_kill: str = ""
    state: str = ""
    verify: str = ""
    verify_ok: bool = False
    rerun_ok: bool = False
    rerun: str = ""
    resume: str = ""
    resumed: bool = False
    model: str = ""
    model_ok: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verify_ok and self.rerun_ok and self.resumed and self.model_ok


def where(phase: Phase, segments: list[Segment]) -> str:
    """How far the phase had got by the last segment: its progress bar, or for fine-tuning
    the epoch running (one loader batch holds a whole epoch, so no bar shows before its end)."""
    if phase.name == "finetune":
        done = sum("| val loss" in s.text for s in segments)
        return f"epoch {done + 1}/{FINETUNE_EPOCHS}" if done < FINETUNE_EPOCHS else "after epochs"
    bars = [s.bar() for s in segments if _bar_is(phase.name, s)]
    return f"{phase.name} {bars[-1][1]}/{bars[-1][2]}" if bars else "-"


def expected(sc: Scenario, segments: list[Segment]) -> float:
    """The phase's expected duration in this run: for embedding, from the rate its progress
    bar shows so far (other processes on the machine change it from run to run; the kill
    must land after the first commit); otherwise the calibrated duration."""
    bars = [(s.t, *s.bar()[1:]) for s in segments if _bar_is("embed", s)]
    if sc.phase.name != "embed" or len(bars) < 2 or bars[-1][1] <= bars[0][1]:
        return sc.duration
    (t0, done0, total), (t1, done1, _) = bars[0], bars[-1]
    return (t1 - t0) * (total - done0) / (done1 - done0)


def attempt_kill(sc: Scenario, fraction: float) -> tuple[float, str] | None:
    """Start the command, SIGKILL it `fraction` of the phase's expected duration after it
    began; (delay, how far the phase had got), or None when the phase ended first (the run
    is let finish and the calibrated duration updated)."""
    sc.reset()
    w = Watched(sc.args)
    deadline = time.monotonic() + 3600
    while True:
        alive = w.pump(0.01)
        start, end = phase_bounds(sc.phase, w.segments)
        if end is not None:
            w.finish(3600)
            sc.duration = max(end - start, 0.5)
            return None
        now = time.monotonic()
        if start is not None and now >= start + fraction * expected(sc, w.segments):
            seen = list(w.segments)
            rc = w.kill()
            if rc != -signal.SIGKILL:
                raise RuntimeError(f"killed run exited {rc}, not by SIGKILL")
            return now - start, where(sc.phase, seen)
        if (not alive and w.proc.poll() is not None) or now > deadline:
            w.kill()
            raise RuntimeError(f"{sc.phase.name} never started or ended:\n{w.text[-3000:]}")


def state_after_kill(sc: Scenario) -> tuple[str, int | str]:
    """(text, value) of what the kill left: committed images or the checkpoint epoch."""
    if sc.phase.name == "finetune":
        epoch = checkpoint_epoch(sc.out)
        return f"checkpoint epoch {epoch}", epoch
    n = committed_images(sc.cache)
    return f"{n} images stored", n


def check_rerun(sc: Scenario, k: Kill, left: int | str, res) -> None:
    """Fill k.resume / k.resumed from the re-run's output and metrics.json."""
    metrics = json.loads((sc.out / "metrics.json").read_text())
    fc = metrics.get("feature_cache") or {}
    hits, computed = fc.get("hits"), fc.get("computed")
    n = image_count(sc.data)
    if sc.phase.name == "embed":
        k.resume = f"hits {hits}, computed {computed}"
        k.resumed = hits == left and left > 0 and computed == n - left
    elif sc.phase.name == "train":
        k.resume = f"hits {hits}, computed {computed}"
        k.resumed = hits == n and computed == 0
    else:
        after = resumed_from(res.stderr)
        epochs = [h["epoch"] for h in metrics.get("history", [])]
        k.resume = f"resumed after epoch {after}" if after else "started over (no checkpoint)"
        k.resumed = after == left and epochs == list(range(1, FINETUNE_EPOCHS + 1))
        if epochs != list(range(1, FINETUNE_EPOCHS + 1)):
            k.problems.append(f"history epochs {epochs}")
    if not k.resumed:
        k.problems.append(f"did not resume: left {left}, re-run {k.resume}")


def one_kill(sc: Scenario, n: int, rng: random.Random, log=print) -> tuple[Kill, int]:
    """Kill (repeating attempts whose phase ended first), verify, re-run, check; the record
    and the number of missed attempts."""
    k, missed = Kill(n, sc.phase.name), 0
    while True:
        fraction = rng.uniform(*sc.phase.window)
        got = attempt_kill(sc, fraction)
        if got is not None:
            break
        missed += 1
        log(f"  missed: {sc.phase.name} ended before {fraction:.2f} of it; repeating")
        if missed >= 5:
            raise RuntimeError(f"could not land a kill in {sc.phase.name} in 5 attempts")
    k.delay, k.at_kill = got
    k.verify_ok, k.verify = verify_cache(sc.cache)
    k.state, left = state_after_kill(sc)
    t0 = time.monotonic()
    res = cli(*sc.args)
    k.rerun_ok = res.returncode == 0
    k.rerun = f"{'ok' if k.rerun_ok else f'exit {res.returncode}'} {time.monotonic() - t0:.0f}s"
    if not k.rerun_ok:
        k.problems.append(f"re-run failed: {res.stderr.strip()[-300:]}")
        return k, missed
    check_rerun(sc, k, left, res)
    problems = check_model(sc.out, sc.predict_dir)
    after_ok, after = verify_cache(sc.cache)
    if not after_ok:
        problems.append(f"cache verify after the re-run: {after}")
    k.model_ok, k.model = not problems, "valid" if not problems else "; ".join(problems)
    k.problems += problems
    return k, missed


# ------------------------------------------------------------------ report
COLUMNS = [
    ("#", "n"),
    ("phase", "phase"),
    ("delay s", "delay"),
    ("progress at kill", "at_kill"),
    ("left by the kill", "state"),
    ("cache verify", "verify"),
    ("re-run", "rerun"),
    ("re-run resumed", "resume"),
    ("model", "model"),
]


def _cells(k: Kill) -> list[str]:
    return [f"{getattr(k, a):.2f}" if a == "delay" else str(getattr(k, a)) for _, a in COLUMNS]


def table(kills: list[Kill]) -> str:
    rows = [[c for c, _ in COLUMNS]] + [_cells(k) for k in kills]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def markdown(kills: list[Kill], summary: str, command: str) -> str:
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cells(k)) + " |" for k in kills]
    return "\n".join([f"`{command}`", "", head, rule, *body, "", f"**{summary}**", ""])


def summarise(kills: list[Kill], missed: int) -> str:
    n = len(kills)
    per = ", ".join(f"{sum(k.phase == p for k in kills)} {p}" for p in PHASES)
    count = lambda attr: sum(bool(getattr(k, attr)) for k in kills)  # noqa: E731
    return (
        f"{n} kills: {per}; {count('rerun_ok')} re-runs completed; cache verify clean "
        f"{count('verify_ok')}/{n}; resumed {count('resumed')}/{n}; models valid "
        f"{count('model_ok')}/{n}; {missed} attempts missed their phase and were repeated"
    )


def plan_kills(kills: int) -> list[str]:
    """Phases in order, as evenly spread as `kills` allows (embed first)."""
    per = {p: kills // 3 + (i < kills % 3) for i, p in enumerate(PHASES)}
    return [p for p in PHASES for _ in range(per[p])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=21, help="kills in total (default 21)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill delays")
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    rng, kills, missed = random.Random(args.seed), [], 0
    try:
        scenarios = make_scenarios(work)
        for phase in dict.fromkeys(plan_kills(args.kills)):
            sc = scenarios[phase]
            sc.duration = calibrate(sc)
            print(f"{phase}: calibrated phase duration {sc.duration:.1f}s", flush=True)
            for _ in range(plan_kills(args.kills).count(phase)):
                k, m = one_kill(sc, len(kills) + 1, rng)
                kills.append(k)
                missed += m
                print("  " + " | ".join(_cells(k)), flush=True)
                for p in k.problems:
                    print(f"  PROBLEM: {p}", flush=True)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarise(kills, missed)
    print("\n" + table(kills) + "\n\n" + summary)
    if args.markdown:
        command = "python benchmarks/kill_loop.py " + " ".join(argv or sys.argv[1:])
        args.markdown.write_text(markdown(kills, summary, command.strip()))
    return 0 if kills and all(k.ok for k in kills) else 1


if __name__ == "__main__":
    sys.exit(main())
