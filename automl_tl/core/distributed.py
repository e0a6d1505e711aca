"""torch.distributed, as the rest of the engine uses it: join torchrun's process group, ask who
this process is, and the few collective calls the engine makes.

A collective call is made by every process of the group or by none: each function below says
so, and its callers make it where every rank takes part (docs/ARCHITECTURE.md, "Several
processes"). torch is imported only by the functions that need it; `world()` answers (0, 1)
without importing it when no process group can exist yet.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "init_distributed",
    "world",
    "gather_rows",
    "sum_across",
    "average_batchnorm_stats",
    "broadcast_int",
    "broadcast_object",
    "barrier",
]


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU); (rank, world size).

    Returns (0, 1) when not launched by torchrun; a group that is already initialised is used.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return world()
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    dist = sys.modules.get("torch.distributed")  # no group exists before it is imported
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Collective. Inverse of sharding rows as `items[rank::world]`: every rank gets all
    `total` rows in the original order."""
    rank, size = world()
    if size == 1:
        return local
    import torch
    import torch.distributed as dist

    per = -(-total // size)  # ceil
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    out = torch.stack(parts, dim=1).reshape(per * size, *local.shape[1:])
    return out[:total]


def sum_across(values: list[float], device: torch.device, world_size: int) -> list[float]:
    """Collective when `world_size` > 1: the element-wise sum of `values` over the ranks."""
    import torch

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t.tolist()


def average_batchnorm_stats(model: nn.Module, world_size: int) -> None:
    """Collective when `world_size` > 1. Average BatchNorm running statistics across
    processes: each process updated them from its own shard, and every replica must validate
    and save the same model."""
    if world_size == 1:
        return
    import torch.distributed as dist
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(world_size)


def broadcast_int(value: int, device: torch.device, world_size: int) -> int:
    """Collective when `world_size` > 1: rank 0's `value` on every rank."""
    if world_size == 1:
        return int(value)
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def broadcast_object(obj: Any) -> Any:
    """Collective under a process group: rank 0's `obj` (picklable plain data made by this
    process, never read from a file) on every rank; without a group, `obj` itself. Decisions
    made from measurements (wall-time estimates, a deadline) go through it so that every rank
    takes the same branch, and so the same collective calls."""
    if world()[1] == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Collective under a process group: wait until every rank is here."""
    if world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()
