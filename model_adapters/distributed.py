"""Data parallelism across processes for the lm-eval adapters (torchrun / accelerate launch).

lm-eval shards requests by rank and gathers results through the LM's rank, world_size, all_gather,
gather_object and barrier; those are implemented here on torch.distributed, set up from the launcher's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world_size, device): one process per GPU on CUDA (cuda:LOCAL_RANK), gloo on CPU."""
    world = launched_world_size()
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    logger.info("data parallel: rank %d of %d on %s", dist.get_rank(), world, device)
    return dist.get_rank(), world, device


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 across ranks (scalars are stacked into a vector)."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)


def gather_object(obj, dst: int = 0):
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def all_gather_object(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
