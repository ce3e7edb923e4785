"""What a run's results say about the model (lm-eval's results JSON, `config.ssm_model`): the checkpoint, the
budget and its reading's unit, the convergence statistics (whole run and per task), the fields each task's documents
carry, and the fingerprint of everything that determines the scores. Read back, without torch, by summaries.py and
the reporter."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..convergence import ConvergenceLog
from ..errors import ConfigError
from ..exits import ExitPoint, Point, point_name
from ..readings import reading_unit
from .records import BudgetRecord, TaskRecord


def model_fingerprint(content_hash: str, budget, dtype: str, backend: str, max_length: int) -> str:
    """What determines scores: weights + tokenizer, budget, dtype, backend, context window."""
    key = json.dumps([content_hash, budget.to_dict() if budget else None, dtype, backend, max_length])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def check_checkpoint(ckpt, kind: str, path: str) -> None:
    """The checkpoint is of the adapter's kind and has a tokenizer that fits its embeddings."""
    if ckpt.config.kind != kind:
        raise ConfigError(f"{path} holds an {ckpt.config.kind} model; use --model {ckpt.config.kind}_ssm")
    if ckpt.tokenizer is None:
        raise ConfigError(f"{path} has no tokenizer.json; pass tokenizer=<path to a tokenizer.json>")
    if ckpt.tokenizer.vocab_size > ckpt.config.padded_vocab_size:
        raise ConfigError(f"{ckpt.tokenizer.path} has {ckpt.tokenizer.vocab_size} tokens but the model only "
                          f"{ckpt.config.padded_vocab_size} embeddings: tokenizer and checkpoint do not match")


@dataclass
class RunView:
    """What a run has seen so far, merged over ranks (the adapter's state after each request type)."""

    records: dict[Point, BudgetRecord]
    tasks: dict[str, TaskRecord]
    generation: ConvergenceLog  # of generate_until
    truncated: int = 0
    request_seconds: float = 0.0


def model_info(lm, view: RunView, k: Point | None = None) -> dict:
    """config.ssm_model of a run at budget k, or at an exit point read off its trajectory (default: the run's own)."""
    k = k or lm.budgets_scored[0]
    info = {
        "checkpoint": str(lm.ckpt.path), "content_hash": lm.ckpt.content_hash, "kind": lm.KIND,
        "format": lm.ckpt.format, "backend": lm.kernels, "dtype": lm.args.dtype_name,
        "state_dtype": str(lm.args.state_dtype).removeprefix("torch."), "lanes": lm.args.lanes,
        "device": str(lm.ranks.device),
        "world_size": lm.ranks.world_size, "max_length": lm.max_length, "truncated_requests": view.truncated,
        "fingerprint": lm.fingerprint(k), "request_seconds": round(view.request_seconds, 3),
        "tasks": task_info(view, k, lm.budget.at(k).max_iter if lm.budget is not None else None),
    }
    if lm.args.record_greedy:
        info["greedy_log"] = str(lm.args.record_greedy)
    if lm.budget is not None:
        info.update(budget_info(lm, view, k))
    if lm.anytime:
        info["anytime_budgets"] = [point_name(p) if isinstance(p, ExitPoint) else p for p in lm.budgets_scored]
        if k != lm.budgets_scored[0]:
            info["anytime_of"] = lm.budgets_scored[0]
        if isinstance(k, ExitPoint):  # its records (the greedy log's) are kept under this name
            info["anytime_point"] = point_name(k)
    return info


def budget_info(lm, view: RunView, k: Point) -> dict:
    """The budget, its reading's unit, its exit criterion and the convergence statistics (per reading unit)."""
    budget = lm.budget.at(k)
    scoring = view.records[k].scoring.summary(budget.max_iter)
    generation = view.generation.summary(budget.max_iter) if k == lm.budgets_scored[0] else {"count": 0}
    return {"budget": budget.to_dict(), "unit": reading_unit(budget.mode), "exit": budget.exit,
            "convergence": {"scoring": scoring, "generation": generation}}


def task_info(view: RunView, k: Point, max_iter: int | None) -> dict:
    """Per task: what its documents carry, and (implicit: max_iter given) its convergence statistics."""
    out = {}
    for task, record in sorted(view.tasks.items()):
        out[task] = record.summary()
        log = view.records[k].per_task.get(task) if max_iter is not None else None
        if log is not None and max_iter is not None:
            out[task]["convergence"] = log.summary(max_iter)
    return out
