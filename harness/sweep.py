"""`implicit-eval sweep`: evaluate checkpoints over a grid of fixed-point budgets through lm-eval's Python API.

One lm-eval results JSON per (checkpoint, budget): OUT/<checkpoint>/<budget key>/results.json, plus
greedy.jsonl (greedy token at every position of every scored sequence, and iterations used) for agreement
and iteration-distribution reports.

- Anytime: in simultaneous mode with tol = 0, every max_iter of the grid (per checkpoint, solver and tau)
  comes from ONE run at the largest of them: the model returns the hidden states of every budget from its one
  trajectory, the adapter scores all of them, and the smaller budgets are then replayed through lm-eval with a
  model that answers from those scores (no model compute). Results are identical to separate runs.
- Resumable: a job is done when its results.json exists; files are written to a temporary name and renamed,
  so an interrupted sweep (even kill -9) loses at most the job in flight and a rerun skips what is done.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lm_eval.api.model import LM

from implicit_ssm_eval.model_adapters.config import Budget, ConfigError

DEFAULT_MAX_ITERS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_TOLS = (0.0, 0.01)
DEFAULT_MODES = ("simultaneous", "sequential")
RESULTS, GREEDY = "results.json", "greedy.jsonl"


@dataclass(frozen=True)
class Job:
    checkpoint: Path
    kind: str
    tasks: tuple[str, ...]
    budget: Budget | None  # None for explicit models

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def key(self) -> str:
        return budget_key(self.budget)

    def dir(self, out: Path) -> Path:
        return out / self.name / self.key

    def done(self, out: Path) -> bool:
        return (self.dir(out) / RESULTS).exists()


def budget_key(budget: Budget | None) -> str:
    if budget is None:
        return "explicit"
    tol = "0" if budget.tol == 0 else f"{budget.tol:g}"
    return f"k{budget.max_iter}_tol{tol}_tau{budget.tau:g}_{budget.mode}_{budget.solver}"


@dataclass(frozen=True)
class SweepSpec:
    checkpoints: tuple[Path, ...]
    tasks: tuple[str, ...] = ("auto",)  # "auto": each checkpoint's training task (st_<task>)
    max_iters: tuple[int, ...] = DEFAULT_MAX_ITERS
    tols: tuple[float, ...] = DEFAULT_TOLS
    modes: tuple[str, ...] = DEFAULT_MODES
    solver: str = "fixed_point"
    tau: float | None = None  # None: each checkpoint's own
    adaptive_max_iter: int = 256  # the cap of tol > 0 budgets
    metadata: dict = field(default_factory=dict)  # task parameters (st_num_docs, st_seed, ...)
    limit: int | None = None
    batch_size: int | str = 32
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "auto"
    anytime: bool = True

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["checkpoints"] = [str(p) for p in self.checkpoints]
        return d


def plan(spec: SweepSpec) -> list[Job]:
    """Every (checkpoint, budget) of the grid: fixed budgets k at tol 0, adaptive ones (tol > 0) capped at
    adaptive_max_iter, for each mode; one job for an explicit checkpoint."""
    from implicit_ssm_eval.model_adapters.formats import load_checkpoint

    jobs = []
    for path in spec.checkpoints:
        ckpt = load_checkpoint(path)
        tasks = _tasks_for(ckpt, spec.tasks)
        if ckpt.config.kind == "explicit":
            jobs.append(Job(Path(path), "explicit", tasks, None))
            continue
        base = ckpt.default_budget.replace(solver=spec.solver, **({"tau": spec.tau} if spec.tau else {}))
        for budget in budget_grid(base, spec):
            jobs.append(Job(Path(path), "implicit", tasks, budget))
    return jobs


def budget_grid(base: Budget, spec: SweepSpec) -> list[Budget]:
    grid = []
    for mode in spec.modes:
        for tol in spec.tols:
            if tol == 0:
                grid += [base.replace(max_iter=k, tol=0.0, mode=mode) for k in sorted(spec.max_iters)]
            else:
                grid.append(base.replace(max_iter=spec.adaptive_max_iter, tol=float(tol), mode=mode))
    return grid


def _tasks_for(ckpt, requested: tuple[str, ...]) -> tuple[str, ...]:
    if tuple(requested) != ("auto",):
        return tuple(requested)
    training = _training_meta(ckpt.path)
    task = training.get("config", {}).get("task")
    if not task:
        raise ConfigError(f"{ckpt.path}: no training task recorded in config.json; pass --tasks explicitly")
    return (f"st_{task}",)


def _training_meta(path: Path) -> dict:
    config = json.loads((Path(path) / "config.json").read_text())
    return config.get("training") or {}


def anytime_groups(jobs: list[Job], spec: SweepSpec) -> list[list[Job]]:
    """Jobs that one trajectory can serve share a group: same checkpoint, tol = 0, simultaneous, same solver
    and tau. Every other job is a group of its own."""
    groups: dict[tuple, list[Job]] = {}
    singles = []
    for job in jobs:
        b = job.budget
        if spec.anytime and b is not None and b.tol == 0 and b.mode == "simultaneous":
            groups.setdefault((job.checkpoint, b.solver, b.tau, job.tasks), []).append(job)
        else:
            singles.append([job])
    return list(groups.values()) + singles


def run_sweep(spec: SweepSpec, out: Path, progress: bool = True) -> list[Job]:
    """Run every job not done yet; returns the jobs of the grid."""
    from tqdm import tqdm

    jobs = plan(spec)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "sweep.json", {"spec": spec.to_dict(), "commit": git_commit(),
                                           "jobs": [str(j.dir(out).relative_to(out)) for j in jobs]})
    pending = [[j for j in group if not j.done(out)] for group in anytime_groups(jobs, spec)]
    pending = [g for g in pending if g]
    bar = tqdm(total=sum(len(g) for g in pending), disable=not progress, desc="sweep", unit="job")
    for group in pending:
        for job in run_group(group, spec, out):
            bar.set_postfix_str(f"{job.name}/{job.key}")
            bar.update(1)
    bar.close()
    return jobs


def run_group(group: list[Job], spec: SweepSpec, out: Path) -> Iterable[Job]:
    """The largest budget for real (scoring the others along its trajectory), then replays of the others.
    The tasks are built once per group: a replay costs lm-eval's bookkeeping and metrics only."""
    group = sorted(group, key=lambda j: j.budget.max_iter if j.budget else 0)
    main, replayed = group[-1], group[:-1]
    started = time.monotonic()
    anytime = [j.budget.max_iter for j in replayed]
    tasks = load_tasks(spec, main.tasks)
    lm, results = evaluate_job(main, spec, out, anytime, tasks)
    wall = time.monotonic() - started
    save_job(main, out, results, {"wall_s": wall, "anytime": anytime, "greedy_log": GREEDY})
    yield main
    for job in replayed:
        started = time.monotonic()
        results = evaluate_loaded(ReplayLM(lm, job.budget.max_iter), tasks, spec, {})
        save_job(job, out, results, {"wall_s": time.monotonic() - started, "replay_of": main.key,
                                     "greedy_log": f"../{main.key}/{GREEDY}"})
        yield job


def model_args(job: Job, spec: SweepSpec, greedy_path: Path, anytime: list[int]) -> dict:
    args = {"pretrained": str(job.checkpoint), "batch_size": spec.batch_size, "device": spec.device,
            "dtype": spec.dtype, "backend": spec.backend, "record_greedy": str(greedy_path)}
    if job.budget is not None:
        b = job.budget
        args.update(max_iter=b.max_iter, tol=b.tol, tau=b.tau, solver=b.solver, mode=b.mode)
        if anytime:
            args["anytime"] = list(anytime)
    return args


def evaluate_job(job: Job, spec: SweepSpec, out: Path, anytime: list[int], tasks: dict):
    """One real lm-eval run; the greedy log is written next to where the results will be."""
    from implicit_ssm_eval.model_adapters.lm_eval_models import ExplicitSSMLM, ImplicitSSMLM

    target = job.dir(out)
    target.mkdir(parents=True, exist_ok=True)
    greedy = target / (GREEDY + ".tmp")
    greedy.unlink(missing_ok=True)
    cls = ImplicitSSMLM if job.kind == "implicit" else ExplicitSSMLM
    args = model_args(job, spec, greedy, anytime)
    lm = cls(**args)
    results = evaluate_loaded(lm, tasks, spec, args)
    if greedy.exists():
        os.replace(greedy, target / GREEDY)
    return lm, results


SEEDS = {"random_seed": 0, "numpy_seed": 1234, "torch_seed": 1234, "fewshot_seed": 1234}  # lm-eval's defaults


def load_tasks(spec: SweepSpec, tasks: tuple[str, ...]) -> dict:
    """lm-eval's task objects (documents generated once), set up as simple_evaluate would: zero-shot."""
    loaded = task_manager(json.dumps(spec.metadata, sort_keys=True)).load(list(tasks))
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=SEEDS["fewshot_seed"])
    return loaded


@functools.lru_cache(maxsize=4)
def task_manager(metadata_json: str):
    """Indexing the task folder takes a while: one TaskManager per distinct set of task parameters."""
    from lm_eval.tasks import TaskManager

    from .run import TASKS_DIR

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=json.loads(metadata_json))


def evaluate_loaded(lm, tasks: dict, spec: SweepSpec, args: dict) -> dict:
    """lm-eval's evaluate() on prepared tasks, with the seeds and provenance simple_evaluate would record."""
    import random

    import numpy as np
    import torch
    from lm_eval.evaluator import evaluate

    random.seed(SEEDS["random_seed"])
    np.random.seed(SEEDS["numpy_seed"])
    torch.manual_seed(SEEDS["torch_seed"])
    results = evaluate(lm=lm, task_dict=tasks, limit=spec.limit, bootstrap_iters=100, log_samples=False,
                       verbosity="ERROR")
    results["config"] = {"model": type(lm).__name__, "model_args": {k: str(v) for k, v in args.items()},
                         **lm.get_model_info(), "limit": spec.limit, "bootstrap_iters": 100, **SEEDS}
    results["date"], results["git_hash"] = time.time(), git_commit()
    return results


class ReplayLM(LM):
    """Answers lm-eval's requests at budget k from the scores a larger run computed along its trajectory."""

    def __init__(self, source, k: int):
        super().__init__()
        if k not in source.anytime_records:
            raise ConfigError(f"budget {k} was not scored by the anytime run (it scored {source.budgets_scored})")
        self.records, self.info = source.anytime_records[k], source.anytime_info(k)

    def _lookup(self, kind: str, requests) -> list:
        try:
            return [self.records[(kind, req.args)] for req in requests]
        except KeyError as exc:
            raise ConfigError(f"replay: a {kind} request was not scored by the anytime run: {exc}") from None

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._lookup("loglikelihood", requests)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._lookup("loglikelihood_rolling", requests)

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise ConfigError("anytime replays cover loglikelihood requests only")

    def get_model_info(self) -> dict:
        return self.info


def save_job(job: Job, out: Path, results: dict, sweep_info: dict) -> None:
    from lm_eval.utils import handle_non_serializable

    results = {k: v for k, v in results.items() if k != "samples"}
    results["sweep"] = {"checkpoint": job.name, "checkpoint_path": str(job.checkpoint), "kind": job.kind,
                        "budget": job.budget.to_dict() if job.budget else None, "key": job.key,
                        "tasks": list(job.tasks), **sweep_info}
    write_json_atomic(job.dir(out) / RESULTS, results, default=handle_non_serializable)


def write_json_atomic(path: Path, data, default=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=default) + "\n")
    os.replace(tmp, path)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
