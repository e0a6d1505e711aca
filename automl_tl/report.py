"""The run folder: created and checked up front, every file written atomically."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: run folders are not locked
    fcntl = None

from .errors import DiskFullError, OutputError, is_disk_full

__all__ = ["RunFolder", "default_run_dir", "publish", "write_atomic", "RUN_FULL_FIX"]


def default_run_dir(data: str | os.PathLike, base: str | os.PathLike = "runs") -> Path:
    """runs/<UTC timestamp>-<data name>, with a numeric suffix if it already exists; created
    here by one mkdir, so two fits started in the same second get a folder each."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data).resolve().name) or "data"
    stem = Path(base) / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{name}"
    path, n = stem, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = Path(f"{stem}-{n}")
        except OSError:
            return path  # RunFolder says why it cannot be created


def publish(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give a finished temporary file normal permissions and rename it over `target` (atomic)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


def write_atomic(
    target: str | os.PathLike, data: bytes, fsync: bool = False, fix: str = ""
) -> Path:
    """Write `data` to a temporary file beside `target` and rename it over `target`, so a
    reader never sees half a file; on failure the temporary file is removed. A full disk
    raises DiskFullError (path and size needed, `fix` as the advice), other errors OutputError."""
    target = Path(target)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        publish(tmp, target)
        tmp = None
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(target, len(data), fix) from None
        raise OutputError(f"cannot write '{target}': {e.strerror or e}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return target


RUN_FULL_FIX = "free some space there or pass --out to a folder on another filesystem"
LOCK_NAME = ".automl-tl.lock"
FINISHED = ("model.onnx", "metrics.json")
# What a fit writes into its run folder (removed when --overwrite replaces a finished run).
OUTPUTS = ("model.onnx", "plan.json", "classes.json", "audit.json", "report.html", "checkpoints")


def _command_line() -> str:
    """This process's command, on one line and short enough for an error message."""
    argv = list(sys.argv) or [""]
    if Path(argv[0]).name in ("", "-c", "__main__.py"):  # python -c / -m: the interpreter's
        argv = list(getattr(sys, "orig_argv", argv)) or ["python"]
    line = " ".join([Path(argv[0]).name or "python", shlex.join(argv[1:])]).strip()
    line = " ".join(line.split())
    return line if len(line) <= 200 else line[:197] + "..."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(fd: int, wait: float = 2.0) -> str:
    """'process PID (COMMAND)' from a lock file another process holds. Its holder writes it
    just after locking, so an empty file or a pid that has gone is read again briefly."""
    deadline = time.monotonic() + wait
    while True:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        pid, _, command = text.partition("\n")
        if pid.strip().isdigit() and _alive(int(pid)):
            return f"process {int(pid)} ({command.strip() or '?'})"
        if time.monotonic() > deadline:
            if pid.strip().isdigit():  # e.g. a process it started outlives it
                return f"a process left by process {int(pid)} ({command.strip()}), now ended"
            return "another process (its pid is not recorded)"
        time.sleep(0.05)


# Lock descriptors this process holds. A forked child (a DataLoader worker) closes its copies
# at once: an orphan outliving a killed fit must not keep the folder locked after it.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing a copy drops no lock of the parent's (LOCK_UN would)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


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

    def finished(self) -> bool:
        """A finished run: its model and metrics.json (written after the model) are there.
        Anything less is an interrupted run, which a new fit may continue or redo."""
        return all(self.file(name).is_file() for name in FINISHED)

    @contextlib.contextmanager
    def claim(self, overwrite: bool = False, resume: bool = False, lock: bool = True):
        """Hold the folder for one fit: refuse it while another process holds it, keep a
        finished run unless asked to replace (`overwrite`) or continue it (`resume`).

        The lock is an flock on LOCK_NAME naming this process; the kernel drops it when the
        process ends however it ends, so a killed run never blocks the next one. `lock`
        False (the other ranks under torchrun, which share rank 0's folder) only checks."""
        fd = self._lock() if lock and fcntl is not None else None
        try:
            if self.finished() and not (overwrite or resume):
                raise OutputError(
                    f"run folder '{self.path}' already holds a finished run (model.onnx, "
                    "metrics.json); pass --overwrite (overwrite=True in Python) to replace it, "
                    "or another --out"
                )
            if overwrite and not resume and lock:
                self._clear()
            yield self
        finally:
            if fd is not None:
                _HELD.discard(fd)
                try:
                    os.ftruncate(fd, 0)  # a later reader never sees a holder that has left
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)

    def _lock(self) -> int:
        path = self.file(LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise OutputError(f"cannot open the lock file '{path}': {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(
                f"run folder '{self.path}' is in use by {holder}; wait for it to end "
                "or pass another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        _HELD.add(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{_command_line()}\n".encode(), 0)
        except OSError:
            pass  # held all the same; a refused fit then names no pid
        return fd

    def _clear(self) -> None:
        """Remove the replaced run's outputs, metrics.json first: from then on the folder
        reads as unfinished, so a failing new fit never leaves a mix that looks complete."""
        for name in ("metrics.json", *OUTPUTS):
            target = self.file(name)
            try:
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            except OSError as e:
                raise OutputError(
                    f"cannot remove '{target}' of the run being replaced: {e.strerror or e}"
                ) from None

    def write_json(self, name: str, obj) -> Path:
        """Write JSON via a temporary file + rename, so a reader never sees half a file."""
        text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
        return write_atomic(self.file(name), text.encode("utf-8"), fix=RUN_FULL_FIX)
