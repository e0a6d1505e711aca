"""Progress in logs (issue #10): with stderr not a terminal, a plain line (label, done/total,
rate, ETA) is written every interval while a phase runs, not only when it ends."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from automl_tl.core.console import INTERVAL_ENV, Console, Progress, progress_interval
from automl_tl.data.demo import write_digits

CLI = str(Path(sys.executable).parent / "automl-tl")
LINE = re.compile(
    r"^(?P<label>.+) (?P<done>\d+)/(?P<total>\d+) +(\d+% )?[\d.]+ \S+/s elapsed \S+ ETA \S+$"
)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_every_interval_with_an_injected_clock():
    clock, out = Clock(), io.StringIO()
    bar = Progress(Console(stream=out), "embed", 100, clock=clock, interval=30, heartbeat=False)
    clock.now += 10
    bar.update(10)
    assert out.getvalue() == ""  # not due yet
    clock.now += 20  # 30 s after the start, 20 images done: 0.7 img/s, 80 left -> 120 s
    bar.update(10)
    assert out.getvalue() == "embed 20/100  20% 0.7 img/s elapsed 30s ETA 2m00s\n"
    clock.now += 29
    bar.update(10)
    assert out.getvalue().count("\n") == 1  # 29 s since the last line
    clock.now += 1
    bar.update(0)
    lines = out.getvalue().splitlines()
    assert lines[1] == "embed 30/100  30% 0.5 img/s elapsed 1m00s ETA 2m20s"
    bar.close()
    final = out.getvalue().splitlines()[2]
    assert final.startswith("embed      [#######") and "30/100" in final and "60.0s" in final


def test_no_plain_lines_on_a_terminal_or_when_quiet():
    clock, tty, quiet = Clock(), TTY(), io.StringIO()
    bars = [
        Progress(Console(stream=tty), "a", 10, clock=clock, interval=1),
        Progress(Console(quiet=True, stream=quiet), "b", 10, clock=clock, interval=1),
    ]
    for _ in range(3):
        clock.now += 5
        for bar in bars:
            bar.update()
    assert quiet.getvalue() == ""
    assert "\n" not in tty.getvalue() and tty.getvalue().startswith("\ra ")  # redrawn in place


def test_heartbeat_writes_while_nothing_finishes():
    out = io.StringIO()
    bar = Progress(Console(stream=out), "epoch 1/3", 50, unit="img", interval=0.05)
    time.sleep(0.4)  # one slow item: update() is never called
    bar.close()
    lines = out.getvalue().splitlines()
    plain = [ln for ln in lines if ln.startswith("epoch 1/3 0/50")]
    assert len(plain) >= 3, lines
    assert plain[0].endswith("ETA ?")  # no rate yet
    assert bar._thread is not None and not bar._thread.is_alive()


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0.5")
    assert progress_interval() == 0.5 and Console().progress_interval == 0.5
    assert Console(progress_interval=3).progress_interval == 3
    for bad in ("soon", "-1", ""):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        assert progress_interval() == 20.0


def test_fit_with_stderr_to_a_file_logs_during_phases(tmp_path):
    """A real fine-tuning fit, stderr redirected to a file, lines every 0.1 s."""
    data = write_digits(tmp_path / "d", per_class=6, digits=(0, 1))
    log = tmp_path / "stderr.log"
    env = {**os.environ, INTERVAL_ENV: "0.1", "AUTOML_TL_CACHE_DIR": str(tmp_path / "cache")}
    with open(log, "w") as err:
        res = subprocess.run(
            [CLI, "fit", data, "--out", tmp_path / "run", "--case", "3"]
            + ["--finetune-epochs", "1", "--engine", "torch"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
    text = log.read_text()
    assert res.returncode == 0, text
    plain = [m for m in map(LINE.match, text.splitlines()) if m]
    labels = {m.group("label") for m in plain}
    assert {"embed", "epoch 1/1"} <= labels, text
    # intermediate: written before the phase's final bar line, with a count below the total
    assert any(int(m.group("done")) < int(m.group("total")) for m in plain), text
    assert "\r" not in text  # no terminal redraws in a log file
