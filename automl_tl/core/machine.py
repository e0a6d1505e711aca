"""What this machine offers a run, in one place: cores, memory, the batch that fits, the device
and onnxruntime's execution providers. torch and onnxruntime are imported only by the
functions that ask them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import AutoTLError

if TYPE_CHECKING:
    import torch

__all__ = [
    "cpu_count",
    "available_cores",
    "available_memory",
    "pick_batch_size",
    "pick_device",
    "ort_providers",
    "ACTIVATION_FACTOR",
    "MEMORY_SHARE",
]

# Working memory of one image in the forward pass, in multiples of its float32 input
# (EfficientNet-Lite0 under onnxruntime: ~23 MB per 224 px image, 38x); a quarter of the
# available memory goes to the batch.
ACTIVATION_FACTOR, MEMORY_SHARE = 48, 0.25


def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_cores() -> int:
    """`cpu_count()`, capped by torch's intra-op thread setting."""
    import torch

    return max(1, min(cpu_count(), torch.get_num_threads()))


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup v2 limit."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        avail = next(int(x.split()[1]) * 1024 for x in lines if x.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 2 << 30
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, avail)


def pick_batch_size(
    crop_size: int,
    requested: int | None = None,
    low: int = 8,
    high: int = 256,
    memory: int | None = None,
    n_images: int | None = None,
) -> int:
    """Embedding batch size: `requested` when given; else what a quarter of the available
    memory holds (per image ~48x its float32 input), at most an eighth of `n_images` (the
    first batch's decoding cannot overlap compute), bounded to [low, high]."""
    if requested is not None:
        if requested < 1:
            raise AutoTLError(f"batch size {requested} is not positive; pass 1 or more")
        return int(requested)
    memory = available_memory() if memory is None else memory
    per_image = 3 * crop_size * crop_size * 4 * ACTIVATION_FACTOR
    fits = int(memory * MEMORY_SHARE // per_image)
    if n_images is not None:
        fits = min(fits, -(-n_images // 8))
    return max(low, min(high, fits))


def pick_device() -> torch.device:
    """CUDA when this torch build sees a GPU, CPU otherwise."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def ort_providers() -> list[str]:
    """onnxruntime's execution providers to use: CUDA first when this build has it, CPU always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def give_back_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc's malloc_trim;
    nothing elsewhere), so that what one step freed lowers the resident size the next step
    starts from, instead of staying in the allocator's free lists."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
