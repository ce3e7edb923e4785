"""Data parallelism across processes (torchrun / accelerate launch), and a run's records merged over its ranks.

lm-eval shards requests by rank and gathers results through the LM's rank, world_size, all_gather, gather_object and
barrier; Ranks implements them on torch.distributed, set up from the launcher's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL on CUDA, gloo on CPU. After each request type every rank holds the
records of all of them (merge), so the results any rank writes describe the whole run.
"""

from __future__ import annotations

import logging
import os
from typing import cast

import torch
import torch.distributed as dist

from ..convergence import ConvergenceLog
from ..exits import Point
from .info import RunView
from .records import BudgetRecord, TaskRecord

logger = logging.getLogger(__name__)


class Ranks:
    def __init__(self, device: torch.device):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank, self.device = 0, device
        if self.world_size == 1:
            return
        if device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.rank = dist.get_rank()
        logger.info("data parallel: rank %d of %d on %s", self.rank, self.world_size, self.device)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate along dim 0 across ranks (scalars are stacked into a vector)."""
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj, dst: int = 0):
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def merge(self, local: RunView) -> RunView:
        """Every rank's view merged (answers stay per rank: each rank replays its own shard). Every rank runs each
        request type once, so this collective is matched."""
        if self.world_size == 1:
            return local
        parts = cast("list[RunView]", [None] * self.world_size)  # filled in by all_gather_object
        dist.all_gather_object(parts, RunView(
            {k: BudgetRecord(scoring=r.scoring, per_task=r.per_task, compute=r.compute)
             for k, r in local.records.items()},
            local.tasks, local.generation, local.truncated, local.request_seconds))
        return RunView(merge_records(local.records, [p.records for p in parts]),
                       merge_tasks([p.tasks for p in parts]), merge_logs([p.generation for p in parts]),
                       sum(p.truncated for p in parts), max(p.request_seconds for p in parts))


def merge_records(local: dict[Point, BudgetRecord], parts: list[dict[Point, BudgetRecord]]
                  ) -> dict[Point, BudgetRecord]:
    merged = {k: BudgetRecord(answers=r.answers) for k, r in local.items()}
    for records in parts:
        for k, record in records.items():
            merged[k].extend(record)
    return merged


def merge_tasks(parts: list[dict[str, TaskRecord]]) -> dict[str, TaskRecord]:
    merged: dict[str, TaskRecord] = {}
    for tasks in parts:
        for task, record in tasks.items():
            merged.setdefault(task, TaskRecord()).extend(record)
    return merged


def merge_logs(parts: list[ConvergenceLog]) -> ConvergenceLog:
    merged = ConvergenceLog()
    for log in parts:
        merged.extend(log)
    return merged
