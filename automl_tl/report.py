"""The run folder: created and checked up front, every file written atomically."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

from .errors import OutputError

__all__ = ["RunFolder", "default_run_dir", "publish"]


def default_run_dir(data: str | os.PathLike, base: str | os.PathLike = "runs") -> Path:
    """runs/<UTC timestamp>-<data name>, with a numeric suffix if it already exists."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data).resolve().name) or "data"
    stem = Path(base) / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{name}"
    path, n = stem, 1
    while path.exists():
        n += 1
        path = Path(f"{stem}-{n}")
    return path


def publish(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give a finished temporary file normal permissions and rename it over `target` (atomic)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


class RunFolder:
    """A folder holding one run's model, plan, metrics and audit."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise OutputError(
                f"output folder '{self.path}' is not writable ({e.strerror or e}); "
                "pass --out to a folder you can write"
            ) from None

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj) -> Path:
        """Write JSON via a temporary file + rename, so a reader never sees half a file."""
        target = self.file(name)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=self.path)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(obj, fh, indent=2, ensure_ascii=False)
                fh.write("\n")
            publish(tmp, target)
        except OSError as e:
            raise OutputError(f"cannot write '{target}': {e.strerror or e}") from None
        return target
