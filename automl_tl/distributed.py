"""torch.distributed helpers: join torchrun's process group; shard and gather work."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "world", "gather_rows"]


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU); (rank, world size).

    Returns (0, 1) when not launched by torchrun; a group that is already initialised is used.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if not dist.is_available() or "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Inverse of sharding rows as `items[rank::world]`: every rank gets all `total` rows
    in the original order."""
    rank, size = world()
    if size == 1:
        return local
    per = -(-total // size)  # ceil
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    out = torch.stack(parts, dim=1).reshape(per * size, *local.shape[1:])
    return out[:total]
