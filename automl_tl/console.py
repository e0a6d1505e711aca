"""Terminal output: warnings, notes and progress bars on stderr, silent when quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Console", "Progress"]


class Progress:
    """A progress bar with rate and ETA; redrawn in place on a TTY, one final line otherwise."""

    def __init__(self, console: Console, label: str, total: int, unit: str = "img"):
        self.console, self.label, self.total, self.unit = console, label, total, unit
        self.done = 0
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._tty = console.stream.isatty()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.done >= self.total or now - self._last_draw >= (0.2 if self._tty else 10.0):
            self._last_draw = now
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        if self.console.quiet:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
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
        self._draw(final=True)


class Console:
    """Where the engine talks to the user; `quiet` silences notes and bars, never warnings."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr

    def note(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        print(f"WARNING: {message}", file=self.stream, flush=True)

    @contextmanager
    def progress(self, label: str, total: int, unit: str = "img") -> Iterator[Progress]:
        bar = Progress(self, label, total, unit)
        try:
            yield bar
        finally:
            bar.close()
