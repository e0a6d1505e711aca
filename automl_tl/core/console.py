"""Terminal output: warnings, notes and progress bars on stderr, silent when quiet."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Console", "Progress", "INTERVAL_ENV", "progress_interval"]

INTERVAL_ENV = "AUTOML_TL_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 20.0  # seconds between plain progress lines when stderr is not a terminal


def progress_interval() -> float:
    """Seconds between progress lines in logs: $AUTOML_TL_PROGRESS_INTERVAL, else 20."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class Progress:
    """A progress bar with rate and ETA. On a terminal it is redrawn in place; otherwise (a log
    file, CI, nohup) a plain line is written every `interval` seconds while the phase runs,
    also when no item finishes in that time (a heartbeat thread), and one final line.

    Args:
        interval: seconds between plain lines (default: the console's, see progress_interval).
        clock: monotonic seconds; injectable so tests need not sleep.
        heartbeat: write due lines from a background thread too, not only from update().
    """

    def __init__(
        self,
        console: Console,
        label: str,
        total: int,
        unit: str = "img",
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: bool = True,
    ):
        self.console, self.label, self.total, self.unit = console, label, total, unit
        self.interval = interval if interval is not None else console.progress_interval
        self.done = 0
        self._clock = clock
        self._start = self._last_draw = self._last_line = clock()
        isatty = getattr(console.stream, "isatty", None)
        self._tty = bool(isatty and isatty())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if heartbeat and not self._tty and not console.quiet:
            self._thread = threading.Thread(target=self._beat, name="automl-tl-progress")
            self._thread.daemon = True
            self._thread.start()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = self._clock()
            if self._tty:
                if self.done >= self.total or now - self._last_draw >= 0.2:
                    self._last_draw = now
                    self._draw(now, final=False)
            elif now - self._last_line >= self.interval:
                self._line(now)

    def _beat(self) -> None:
        """Write a line whenever one is due, even while an item takes longer than `interval`."""
        while True:
            with self._lock:
                wait = self._last_line + self.interval - self._clock()
            if self._stop.wait(max(wait, 0.01)):
                return
            with self._lock:
                now = self._clock()
                if now - self._last_line >= self.interval and not self._stop.is_set():
                    self._line(now)

    def _line(self, now: float) -> None:
        """One plain line: label, done/total, rate, ETA (for logs; caller holds the lock)."""
        self._last_line = now
        if self.console.quiet:
            return
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        pct = f" {100 * self.done / self.total:3.0f}%" if self.total else ""
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        self.console.stream.write(
            f"{self.label} {self.done}/{self.total}{pct} {rate:.1f} {self.unit}/s "
            f"elapsed {_duration(elapsed)} ETA {eta}\n"
        )
        self.console.stream.flush()

    def _draw(self, now: float, final: bool) -> None:
        if self.console.quiet:
            return
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        frac = self.done / self.total if self.total else 1.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        bar = "#" * int(frac * 24)
        text = (
            f"{self.label:<10} [{bar:<24}] {self.done}/{self.total} "
            f"{rate:6.1f} {self.unit}/s  " + (f"{elapsed:5.1f}s" if final else f"ETA {eta:5.1f}s")
        )
        if self._tty:
            end = "\n" if final else ""
            self.console.stream.write("\r" + text + end)
        elif final:
            self.console.stream.write(text + "\n")
        self.console.stream.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._draw(self._clock(), final=True)


class Console:
    """Where the engine talks to the user; `quiet` silences notes and bars, never warnings.

    `progress_interval`: seconds between progress lines when the stream is not a terminal
    (default: $AUTOML_TL_PROGRESS_INTERVAL, else 20)."""

    def __init__(self, quiet: bool = False, stream=None, progress_interval: float | None = None):
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self._interval = progress_interval
        self._warned: set = set()  # keys of warn_once warnings already shown

    @property
    def progress_interval(self) -> float:
        return self._interval if self._interval is not None else progress_interval()

    def note(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        print(f"WARNING: {message}", file=self.stream, flush=True)

    def warn_once(self, key, message: str) -> bool:
        """Warn unless this console already warned under `key` (a condition that would
        otherwise repeat, e.g. a full cache disk seen by several writers); True if shown."""
        if key in self._warned:
            return False
        self._warned.add(key)
        self.warn(message)
        return True

    @contextmanager
    def progress(self, label: str, total: int, unit: str = "img") -> Iterator[Progress]:
        bar = Progress(self, label, total, unit)
        try:
            yield bar
        finally:
            bar.close()
