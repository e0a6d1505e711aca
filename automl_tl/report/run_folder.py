"""The run folder: created and checked up front, every file written atomically."""

from __future__ import annotations

import contextlib
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

from ..core.errors import OutputError
from ..core.files import RUN_FULL_FIX, write_json_atomic

__all__ = ["RunFolder", "default_run_dir"]


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

    def __init__(
        self, path: str | os.PathLike, created: bool | None = None, parent_created: bool = False
    ):
        self.path = Path(path)
        # made for this fit (here, or by default_run_dir): removed if the fit fails empty,
        # and its parent too when that was made for it (runs/) and is left empty
        self.created = not self.path.exists() if created is None else created
        self.parent_created = parent_created
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

    def _beside(self, what: str) -> Path:
        return self.path.with_name(f".{self.path.name}.automl-tl-{what}")

    @contextlib.contextmanager
    def claim(self, overwrite: bool = False, resume: bool = False, lock: bool = True):
        """Hold the folder for one fit and yield the RunFolder the fit writes into: refuse it
        while another process holds it, keep a finished run unless asked to replace
        (`overwrite`) or continue it (`resume`).

        A finished run is replaced only by a finished one: the new fit is built in a hidden
        folder beside it and swapped in when the block ends without an error; a failed fit
        leaves the old run as it was. A folder this fit created and left empty is removed,
        and the lock file goes when the fit ends.

        The lock is an flock on LOCK_NAME naming this process; the kernel drops it when the
        process ends however it ends, so a killed run never blocks the next one. `lock`
        False (the other ranks under torchrun, which share rank 0's folder) only checks."""
        fd = self._lock() if lock and fcntl is not None else None
        replacing, target = False, self
        try:
            finished = self.finished()
            if finished and not (overwrite or resume):
                raise OutputError(
                    f"run folder '{self.path}' already holds a finished run (model.onnx, "
                    "metrics.json); pass --overwrite (overwrite=True in Python) to replace it, "
                    "or another --out"
                )
            replacing = overwrite and finished and not resume
            if replacing:
                staging = self._beside("new")
                if lock:
                    shutil.rmtree(staging, ignore_errors=True)  # left by a killed fit
                target = RunFolder(staging)
            elif overwrite and not resume and lock:
                self._clear()  # an interrupted run: nothing finished to keep
            yield target
            if replacing and lock:
                self._swap_in(target.path)
        except BaseException:
            if replacing and lock:
                shutil.rmtree(target.path, ignore_errors=True)
            elif lock and self.created:
                self._remove_if_empty()
            raise
        finally:
            if fd is not None:
                self._unlock(fd)

    def _swap_in(self, staging: Path) -> None:
        """Put the finished run in `staging` where this folder is; the old run goes."""
        old = self._beside("old")
        shutil.rmtree(old, ignore_errors=True)
        keep = {"metrics.json", LOCK_NAME, *OUTPUTS}
        for entry in self.path.iterdir():  # the user's own files stay with the run folder
            if entry.name not in keep and not (staging / entry.name).exists():
                os.rename(entry, staging / entry.name)
        try:
            os.rename(self.path, old)
            os.rename(staging, self.path)
        except OSError as e:
            if not self.path.exists() and old.exists():
                os.rename(old, self.path)  # put the old run back
            raise OutputError(
                f"cannot put the new run in place of '{self.path}': {e.strerror or e}; the "
                f"new run is in '{staging}'"
            ) from None
        shutil.rmtree(old, ignore_errors=True)

    def _remove_if_empty(self) -> None:
        """Remove this folder when nothing but the lock file is in it (the fit made it and
        stopped before writing anything)."""
        try:
            left = [p.name for p in self.path.iterdir()]
        except OSError:
            return
        if set(left) <= {LOCK_NAME}:
            shutil.rmtree(self.path, ignore_errors=True)
            if self.parent_created:
                with contextlib.suppress(OSError):  # only when empty
                    self.path.parent.rmdir()

    def _lock(self) -> int:
        path = self.file(LOCK_NAME)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise OutputError(
                    f"cannot open the lock file '{path}': {e.strerror or e}"
                ) from None
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
            try:  # the holder before us removes the file as it leaves: lock the one that is there
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        _HELD.add(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{_command_line()}\n".encode(), 0)
        except OSError:
            pass  # held all the same; a refused fit then names no pid
        return fd

    def _unlock(self, fd: int) -> None:
        """Remove the lock file (if it is still ours) and release the lock."""
        _HELD.discard(fd)
        try:
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == os.stat(self.file(LOCK_NAME)).st_ino:
                    os.unlink(self.file(LOCK_NAME))
            os.ftruncate(fd, 0)  # a later reader never sees a holder that has left
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _clear(self) -> None:
        """Remove an interrupted run's outputs, metrics.json first: from then on the folder
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

    def remove_checkpoints(self) -> None:
        """Drop the fine-tuning checkpoints of a finished run: nothing will resume them."""
        shutil.rmtree(self.file("checkpoints"), ignore_errors=True)

    def write_json(self, name: str, obj) -> Path:
        """Write JSON via a temporary file + rename, so a reader never sees half a file."""
        return write_json_atomic(self.file(name), obj, fix=RUN_FULL_FIX, indent=2)
