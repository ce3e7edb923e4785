"""`implicit-eval sweep`: evaluate checkpoints over a grid of fixed-point budgets through lm-eval's Python API.

One lm-eval results JSON per (checkpoint, budget): OUT/<checkpoint>/<budget key>/results.json, plus the greedy
log (greedy token at every position of every scored sequence, and iterations per piece) of the run that scored it.

- Anytime: in simultaneous mode with tol = 0, every max_iter of the grid (per checkpoint, solver and tau) comes from
  ONE run at the largest of them: the adapter scores every budget along its one trajectory and lm-eval's metrics are
  computed for each (model_adapters/adapter/anytime.py). Results are identical to separate runs. Budgets of another
  exit criterion (`exits`, model_adapters/exits.py) capped at that largest max_iter ride along too (the runs that
  stop on each criterion at each threshold, read off the trajectory: the same numbers up to float rounding).
- Keyed: a job's key covers everything that determines its numbers (weights and tokenizer, budget, dtype, backend,
  tasks, task parameters, limit, seeds). A rerun skips a job whose results carry the same key and recomputes, with a
  notice, one whose settings changed; the results never claim settings they were not made with.
- Resumable: files are written to a temporary name and renamed, so an interrupted sweep (even kill -9) loses at
  most the jobs in flight; a truncated file is recomputed.
- Failures are results too: a job that fails (non-finite values, a task the tokenizer cannot read, ...) is written
  to failed.json with its message, the other jobs go on, and the report and leaderboard show it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from ..model_adapters.config import Budget
from ..model_adapters.errors import ConfigError
from ..model_adapters.exits import DEFAULT_EXIT, ExitPoint, parse_exit_point, point_name
from ..model_adapters.readings import reading_label
from ..model_adapters.summaries import split_anytime
from .io import inside, write_json_atomic

DEFAULT_MAX_ITERS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_TOLS = (0.0, 0.01)
DEFAULT_MODES = ("simultaneous", "sequential")
RESULTS, FAILED, GREEDY = "results.json", "failed.json", "greedy.jsonl"
SEEDS = {"random_seed": 0, "numpy_seed": 1234, "torch_seed": 1234, "fewshot_seed": 1234}  # lm-eval's defaults
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSpec:
    checkpoints: tuple[Path, ...]
    tasks: tuple[str, ...] = ("auto",)  # "auto": each checkpoint's training task group (from the task registry)
    max_iters: tuple[int, ...] = DEFAULT_MAX_ITERS
    tols: tuple[float, ...] = DEFAULT_TOLS
    modes: tuple[str, ...] = DEFAULT_MODES
    block_sizes: tuple[int, ...] = (8,)  # blockwise mode: one budget per block size (8: see BENCHMARKS.md)
    solver: str = "fixed_point"
    tau: float | None = None  # None: each checkpoint's own
    adaptive_max_iter: int = 256  # the cap of tol > 0 budgets (and of the exit criteria's)
    exits: tuple[str, ...] = ()  # exit criteria at thresholds, "kl=0.001": adaptive budgets in every mode
    metadata: dict = field(default_factory=dict)  # task parameters (st_num_docs, st_seed, ...)
    limit: int | None = None
    batch_size: int | str = 32
    device: str = "cpu"
    dtype: str = "float32"
    state_dtype: str = "float32"  # how the SSM states are stored (the adapters' state_dtype)
    lanes: int = 1  # row groups of the implicit models' readings in pieces on CUDA streams: speed, not numbers
    backend: str = "auto"
    anytime: bool = True
    workers: int = 1  # processes sharing the jobs (one per GPU on CUDA); the numbers do not depend on it

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["checkpoints"] = [str(p) for p in self.checkpoints]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SweepSpec:
        d = {**d, "checkpoints": tuple(Path(p) for p in d["checkpoints"])}
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)


@dataclass(frozen=True)
class Job:
    checkpoint: Path
    label: str  # the checkpoint's name in the output; unique within the sweep
    kind: str
    content_hash: str
    tasks: tuple[str, ...]
    budget: Budget | None  # None for explicit models

    @property
    def key(self) -> str:
        return "hf" if self.kind == "hf" else budget_key(self.budget)

    def dir(self, out: Path) -> Path:
        return inside(out, self.label, self.key)

    def job_key(self, spec: SweepSpec) -> str:
        """A hash of everything that determines this job's numbers."""
        what = [self.content_hash, self.budget.to_dict() if self.budget else None, spec.dtype, spec.backend,
                list(self.tasks), spec.metadata, spec.limit, SEEDS]
        if spec.state_dtype != "float32":  # the default leaves the keys of earlier sweeps as they were
            what.append(spec.state_dtype)
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def status(self, out: Path, spec: SweepSpec) -> str:
        """"done" (results made with these settings), "stale" (results made with other settings), "todo"."""
        path = self.dir(out) / RESULTS
        if not path.exists():
            return "todo"
        try:
            recorded = json.loads(path.read_text()).get("sweep", {}).get("job_key")
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            logger.warning("%s is unreadable (truncated?): recomputing it", path)
            return "todo"
        return "done" if recorded == self.job_key(spec) else "stale"


def reading_key(budget: Budget | None) -> str:
    """"explicit", or the budget's reading with its parameters' values: "sequential", "blockwise8", ..."""
    if budget is None:
        return "explicit"
    return reading_label(budget.to_dict()).replace(" ", "")


def budget_key(budget: Budget | None) -> str:
    """The folder of a budget's results. Numbers are written exactly (repr: the shortest text that reads back as
    the same float), so budgets that differ only beyond six digits (tol 0.01 and 0.0100000001) never share one."""
    if budget is None:
        return "explicit"
    tol = "0" if budget.tol == 0 else repr(budget.tol)
    exit = "" if budget.exit == DEFAULT_EXIT else f"_{budget.exit}"  # the residual's folders keep their names
    return f"k{budget.max_iter}_tol{tol}_tau{budget.tau!r}_{reading_key(budget)}_{budget.solver}{exit}"


def plan(spec: SweepSpec) -> list[Job]:
    """Every (checkpoint, budget) of the grid: fixed budgets k at tol 0, adaptive ones (tol > 0) capped at
    adaptive_max_iter, for each mode (and block size); one job for an explicit checkpoint."""
    from ..model_adapters.formats import inspect_checkpoint

    check_tasks(spec)
    ckpts = [hf_checkpoint(path) or inspect_checkpoint(path) for path in spec.checkpoints]  # no weights read
    labels = checkpoint_labels(ckpts)
    jobs = []
    for ckpt, label in zip(ckpts, labels):
        tasks = tasks_for(ckpt, spec.tasks)
        if isinstance(ckpt, HFCheckpoint):
            jobs.append(Job(Path(ckpt.path), label, "hf", ckpt.content_hash, tasks, None))
            continue
        if ckpt.config.kind == "explicit":
            jobs.append(Job(Path(ckpt.path), label, "explicit", ckpt.content_hash, tasks, None))
            continue
        default = cast(Budget, ckpt.default_budget)  # an implicit checkpoint's
        base = default.replace(solver=spec.solver, **({"tau": spec.tau} if spec.tau is not None else {}))
        jobs += [Job(Path(ckpt.path), label, "implicit", ckpt.content_hash, tasks, b) for b in budget_grid(base, spec)]
    return jobs


@dataclass(frozen=True)
class HFCheckpoint:
    """A transformer saved as a Hugging Face directory (harness/transformer.py): lm-eval's own `hf` model scores it."""

    path: Path
    content_hash: str


def hf_checkpoint(path: Path) -> HFCheckpoint | None:
    from ..model_adapters.formats.common import content_hash
    from .transformer import is_transformer_dir

    if not is_transformer_dir(path):
        return None
    files = [f for f in Path(path).iterdir() if f.is_file() and f.suffix in (".json", ".safetensors")]
    return HFCheckpoint(Path(path), content_hash(Path(path), files))


def checkpoint_labels(ckpts) -> list[str]:
    """Folder names, made unique: checkpoints whose folders share a name get their content hash appended. The name
    of the folder itself, not of the path as given (`ckpt/sub/..` is named `ckpt`, never `..`); normalized, not
    resolved, so that a checkpoint linked into place keeps the link's name."""
    names = [Path(os.path.abspath(c.path)).name for c in ckpts]
    return [n if names.count(n) == 1 else f"{n}-{c.content_hash[:8]}" for n, c in zip(names, ckpts)]


def budget_grid(base: Budget, spec: SweepSpec) -> list[Budget]:
    grid = []
    for mode in spec.modes:
        sizes = spec.block_sizes if mode == "blockwise" else (None,)
        for size, tol in ((s, t) for s in sizes for t in spec.tols):
            at = dict(mode=mode, block_size=size, tol=float(tol))
            if tol == 0:
                grid += [base.replace(max_iter=k, **at) for k in sorted(spec.max_iters)]
            else:
                grid.append(base.replace(max_iter=spec.adaptive_max_iter, **at))
        for size, point in ((s, p) for s in sizes for p in exit_points(spec)):
            budget = base.replace(max_iter=spec.adaptive_max_iter, mode=mode, block_size=size, tol=point.tol,
                                  exit=point.exit)
            if budget not in grid:  # `residual:0.01` is --tol 0.01
                grid.append(budget)
    return grid


def exit_points(spec: SweepSpec) -> list[ExitPoint]:
    return [parse_exit_point(text) for text in spec.exits]


def check_tasks(spec: SweepSpec) -> None:
    """Task names the task folder does not define fail before any model is loaded."""
    if tuple(spec.tasks) == ("auto",):
        return
    known = set(task_manager(json.dumps(spec.metadata, sort_keys=True)).all_tasks)
    unknown = [t for t in spec.tasks if t not in known]
    if unknown:
        raise ConfigError(f"--tasks: unknown task(s) {unknown}; list them with `lm-eval ls tasks --include_path "
                          "tasks/` (groups such as st_parity or state_tracking work too)")


def tasks_for(ckpt, requested: tuple[str, ...]) -> tuple[str, ...]:
    """The requested tasks, or with "auto" the lm-eval group of the task the checkpoint was trained on."""
    if tuple(requested) != ("auto",):
        return tuple(requested)
    from ..tasks.registry import family_for_task

    if isinstance(ckpt, HFCheckpoint):
        from .transformer import TRAINING_FILE

        config = {"training": json.loads((Path(ckpt.path) / TRAINING_FILE).read_text())}
    else:
        config = json.loads((Path(ckpt.path) / "config.json").read_text())
    task = ((config.get("training") or {}).get("config") or {}).get("task")
    if not task:
        raise ConfigError(f"{ckpt.path}: no training task recorded in config.json; pass --tasks explicitly")
    return (family_for_task(task).lm_eval_name(task),)


def anytime_groups(jobs: list[Job], spec: SweepSpec) -> list[list[Job]]:
    """Jobs that one trajectory can serve share a group: same checkpoint, tol = 0, simultaneous, same solver and
    tau; with them the simultaneous budgets of another exit criterion capped at the group's largest max_iter (read
    off the same trajectory). Every other job is a group of its own."""
    groups: dict[tuple, list[Job]] = {}
    singles, riders = [], []
    for job in jobs:
        b = job.budget
        if on_trajectory(job, spec):
            assert b is not None  # on a trajectory: implicit
            groups.setdefault(_trajectory(job), []).append(job)
        elif exit_rider(job, spec):
            riders.append(job)
        else:
            singles.append([job])
    for job in riders:
        group = groups.get(_trajectory(job))
        top = max((j.budget.max_iter for j in group if j.budget), default=0) if group else 0
        if group and job.budget and job.budget.max_iter == top:
            group.append(job)
        else:
            singles.append([job])
    return list(groups.values()) + singles


def _trajectory(job: Job) -> tuple:
    b = cast(Budget, job.budget)
    return (job.label, b.solver, b.tau, job.tasks)


def exit_rider(job: Job, spec: SweepSpec) -> bool:
    """A simultaneous budget of another exit criterion than the residual: it can be read off a trajectory."""
    b = job.budget
    return spec.anytime and b is not None and b.tol > 0 and b.exit != DEFAULT_EXIT and b.mode == "simultaneous"


def on_trajectory(job: Job, spec: SweepSpec) -> bool:
    """Whether the job belongs to an anytime group: its budgets are all scored along one trajectory."""
    b = job.budget
    return spec.anytime and b is not None and b.tol == 0 and b.mode == "simultaneous"


@dataclass
class Outcome:
    jobs: list[Job]
    skipped: list[Job] = field(default_factory=list)  # done before, with the same settings
    ran: list[Job] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # job dir -> message


def run_sweep(spec: SweepSpec, out: Path, progress: bool = True, worker: int | None = None) -> Outcome:
    """Run every job not done yet with these settings. With spec.workers > 1, worker processes (one per GPU, each
    seeing its own) take the groups of jobs from a shared pool, the costliest first; `worker` is the index of the
    worker this process is (None: the sweep itself), and it runs the groups it claims. SIGTERM or Ctrl-C stops the
    whole sweep, its workers included, leaving only whole results (see stop_workers)."""
    out.mkdir(parents=True, exist_ok=True)
    pool = spec.workers > 1 and worker is None
    with terminate_as_interrupt():
        spawned = time.time()
        procs: list[subprocess.Popen] = []
        try:  # the workers start up (imports, CUDA) while this process plans; they plan for themselves
            if pool:  # inside the try: a signal while spawning stops the workers started so far
                _spawn_workers(spec, out, procs)
            jobs = plan(spec)
            if worker is None:
                write_sweep_json(spec, out, jobs, **({"workers_spawned": spawned} if pool else {}))
            outcome = Outcome(jobs)
            pending = pending_groups(jobs, spec, out, outcome)
            if pool:
                return _wait_for_workers(procs, spec, out, outcome, pending)
        except BaseException:
            if pool:
                stop_workers(procs, out)
            raise
        return run_groups(pending, spec, out, outcome, progress, worker, claim=worker is not None)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the sweep as Ctrl-C's KeyboardInterrupt is; `implicit-eval` exits with `code`."""

    code = 128 + signal.SIGTERM


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM ends a sweep (and each worker) as Ctrl-C does, through its cleanups: a job in flight leaves no
    temporary file, workers are stopped and waited for. Without this the process would die at once, its workers
    going on writing into the folder."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        if _DEFERRED["on"]:  # a worker is being started: raise once it is in the list of workers to stop
            _DEFERRED["signal"] = signum
            return
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    _HANDLED["by"] = os.getpid()
    try:
        yield
    finally:
        _HANDLED["by"] = None
        signal.signal(signal.SIGTERM, previous)


_DEFERRED: dict = {"on": False, "signal": None}
_HANDLED: dict = {"by": None}  # the process whose SIGTERM terminate_as_interrupt handles, while it does


def _forked_child_dies_on_sigterm() -> None:
    """A process forked while terminate_as_interrupt's handler is set (lm-eval's bootstrap pool forks its workers
    from the sweep) gets SIGTERM's default back. With the sweep's handler, a pool worker that Pool.terminate()
    signals may be left alive, blocked on its queue's lock, and terminate() then waits for it forever: the README's
    main job hung so once, and a loop of pools under the handler hung within a few hundred pools (see
    tests/harness/test_outputs.py)."""
    if _HANDLED["by"] is not None and _HANDLED["by"] != os.getpid():
        with contextlib.suppress(ValueError):  # not the main thread: Python set no handler there to undo
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_forked_child_dies_on_sigterm)


@contextlib.contextmanager
def signals_deferred():
    """Hold terminate_as_interrupt's SIGTERM until the block has run. Raised inside Popen, after the child exists and
    before Popen returns, it would leave a worker that no list holds, and so none stops (seen once under load)."""
    _DEFERRED.update(on=True, signal=None)
    try:
        yield
    finally:
        _DEFERRED["on"] = False
    if _DEFERRED["signal"] is not None:
        raise Terminated(f"signal {_DEFERRED['signal']}")


STOP_WAIT_S = 60.0  # a worker asked to stop gets this long to drop its job in flight, then is killed


def stop_workers(procs: list[subprocess.Popen], out: Path) -> None:
    """Workers end with the sweep: each is asked to stop (SIGTERM: its job in flight is dropped whole), killed if it
    has not within STOP_WAIT_S, and waited for, so that none writes into the folder after the sweep has gone; their
    claims go too (a rerun, and `sweep --status`, see the unfinished jobs as not done)."""
    import shutil

    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + STOP_WAIT_S
    try:
        for p in procs:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # too slow, or a second signal: now
        for p in procs:
            p.kill()
            p.wait()
    shutil.rmtree(out / CLAIMS, ignore_errors=True)


def write_sweep_json(spec: SweepSpec, out: Path, jobs: list[Job], **extra) -> None:
    """The plan, read back by the report and by `sweep --status`."""
    write_json_atomic(out / "sweep.json", {"spec": spec.to_dict(), "commit": git_commit(),
                                           "jobs": [str(j.dir(out).relative_to(out)) for j in jobs], **extra})


def pending_groups(jobs: list[Job], spec: SweepSpec, out: Path, outcome: Outcome) -> list[list[Job]]:
    """The groups of jobs not done with these settings, the costliest first; the done ones go to outcome.skipped."""
    pending = []
    for group in anytime_groups(jobs, spec):
        todo = [j for j in group if _status(j, out, spec) != "done"]
        outcome.skipped += [j for j in group if j not in todo]
        riders = [j for j in todo if j.budget and j.budget.tol > 0]
        fixed = [j for j in group if j.budget and j.budget.tol == 0]
        top = max(fixed, key=lambda j: cast(Budget, j.budget).max_iter) if fixed else None
        if riders and top not in todo:  # exit riders whose trajectory is done run alone (the same numbers,
            pending += [[j] for j in riders]  # stopping early)
            todo = [j for j in todo if j not in riders]
        if todo:
            pending.append(todo)
    pending.sort(key=estimated_cost, reverse=True)  # the longest jobs first: workers end closer together
    return pending


def run_groups(pending: list[list[Job]], spec: SweepSpec, out: Path, outcome: Outcome, progress: bool = False,
               worker: int | str | None = None, claim: bool = False) -> Outcome:
    """Run the groups in this process (with claim: only those no other worker has taken). The one code path of
    every executor: the sweep itself, each worker of --workers N, each SLURM task."""
    from tqdm import tqdm

    bar = tqdm(total=sum(len(g) for g in pending), disable=not progress, desc="sweep", unit="job", smoothing=0)
    for group in pending:
        if claim and not _claim(out, group):
            continue
        bar.set_postfix_str(f"{group[0].label}/{group[-1].key}")
        for job, error in run_group(group, spec, out, worker):
            (outcome.failed.__setitem__(str(job.dir(out)), error) if error else outcome.ran.append(job))
            bar.update(1)
    bar.close()
    return outcome


# How much more one evaluation costs a token in each reading than in the parallel scan (a rough order for
# estimated_cost: on an H200 at 130M a token step costs several times its share of a scan, on the CPU more).
READING_WEIGHT = {"sequential": 8, "blockwise": 2, "simultaneous": 1}


def estimated_cost(group: list[Job]) -> float:
    """A rough cost of a group of jobs, to start the longest first: the checkpoint's size on disk x evaluations
    per token (an adaptive budget counted as 16 at most) x the reading's weight x the number of tasks."""
    job = max(group, key=lambda j: j.budget.max_iter if j.budget else 0)
    size = sum(f.stat().st_size for f in Path(job.checkpoint).iterdir() if f.is_file())  # a checkpoint is a folder
    budget = job.budget
    if budget is None:
        return size * len(job.tasks)
    evals = (min(budget.max_iter, 16) if budget.tol > 0 else budget.max_iter) + 1
    return size * evals * READING_WEIGHT.get(budget.mode, 1) * len(job.tasks)


CLAIMS = ".claims"


def _claim(out: Path, group: list[Job]) -> bool:
    """Atomically take a group for this worker (the first to create its claim file runs it)."""
    name = hashlib.sha256(str(group[-1].dir(out)).encode()).hexdigest()[:16]
    try:
        os.close(os.open(out / CLAIMS / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def visible_gpus() -> list[str]:
    """The GPUs this process may use, named as CUDA_VISIBLE_DEVICES names them (indices or UUIDs): a worker is
    given one of these names, so a sweep started with CUDA_VISIBLE_DEVICES=4,6 runs on GPUs 4 and 6."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None:
        return [d.strip() for d in mask.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def resolve_workers(workers: int | Literal["auto"], device: str) -> int:
    """--workers: "auto" is one worker per visible GPU with --device cuda, else 1; a number is checked against
    the device (worker i sees the i-th visible GPU alone, as its "cuda")."""
    on_gpus = device == "cuda"
    if workers == "auto":
        return max(1, len(visible_gpus())) if on_gpus else 1
    if workers > 1 and device not in ("cuda", "cpu"):
        raise ConfigError(f"--workers {workers} puts worker i on GPU i: use --device cuda (or cpu), "
                          f"got --device {device}")
    if workers > 1 and on_gpus:
        _check_gpus(workers, visible_gpus())
    return workers


def _check_gpus(workers: int, gpus: list[str]) -> None:
    if workers > len(gpus):
        raise ConfigError(f"--workers {workers} needs {workers} GPUs, one each, but {len(gpus)} are visible "
                          f"({','.join(gpus) or 'none'}): use --workers {max(1, len(gpus))} or --workers auto")


def _spawn_workers(spec: SweepSpec, out: Path, procs: list[subprocess.Popen]) -> None:
    """Start spec.workers processes that share the pending groups, each added to procs as it starts (so that a
    signal in between leaves none unknown to stop_workers); on CUDA worker i sees the i-th visible GPU only. Each
    job's numbers are what one process would compute: a job never spans workers, and workers that need the same
    autotuned kernel take turns to tune it, the later ones reading the first one's choice
    (backends/triton_tuning.py). Results are keyed and atomic as ever."""
    import shutil
    import sys

    claims = out / CLAIMS
    shutil.rmtree(claims, ignore_errors=True)  # claims of an interrupted sweep: their jobs are not done
    claims.mkdir(parents=True)
    write_json_atomic(claims / "spec.json", spec.to_dict())
    threads = str(max(1, (os.cpu_count() or 1) // spec.workers))
    gpus = visible_gpus() if _on_cuda(spec) else None
    if gpus is not None:
        _check_gpus(spec.workers, gpus)
    for i in range(spec.workers):
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
        with signals_deferred():
            procs.append(subprocess.Popen([sys.executable, "-m", "implicit_ssm_eval.harness", "sweep",
                                           "--worker-spec", str(claims / "spec.json"), "--worker-index", str(i),
                                           "--out", str(out), "--quiet"], env=env))


def _wait_for_workers(procs: list[subprocess.Popen], spec: SweepSpec, out: Path, outcome: Outcome,
                      pending: list[list[Job]]) -> Outcome:
    """The workers' outcome, read back from the results they wrote (a job without one failed)."""
    import shutil

    codes = [p.wait() for p in procs]
    shutil.rmtree(out / CLAIMS, ignore_errors=True)
    for group in pending:
        for job in group:
            if job.status(out, spec) == "done":
                outcome.ran.append(job)
            else:
                failure = job.dir(out) / FAILED
                outcome.failed[str(job.dir(out))] = (json.loads(failure.read_text())["error"] if failure.exists()
                                                     else f"worker exit codes {codes}: no result")
    return outcome


def _on_cuda(spec: SweepSpec) -> bool:
    return str(spec.device).startswith("cuda")


def _status(job: Job, out: Path, spec: SweepSpec) -> str:
    status = job.status(out, spec)
    if status == "stale":
        logger.warning("%s was made with other settings (checkpoint, budget, tasks, task parameters, limit or "
                       "dtype): recomputing it", job.dir(out))
    return status


# Faults of the model or the data that should fail one job, not the sweep: non-finite values, unreadable tasks,
# checkpoint or task errors found while evaluating.
JOB_ERRORS = (ConfigError, FloatingPointError, ValueError, RuntimeError)


def run_group(group: list[Job], spec: SweepSpec, out: Path, worker: int | str | None = None
              ) -> Iterable[tuple[Job, str | None]]:
    """The largest budget for real, scoring the others along its trajectory; one results file per budget.
    Yields (job, error message or None). `worker` (recorded with the results): the index of a --workers N process,
    or the id of the SLURM task."""
    group = sorted(group, key=lambda j: (j.budget.tol == 0, j.budget.max_iter) if j.budget else (True, 0))
    main = group[-1]  # the largest fixed budget: the trajectory's (exit riders share its max_iter)
    # Every smaller budget of the grid rides along, done or not (only the group's are written): a group resumed
    # after an interruption records the same run as an uninterrupted one, and its results files are identical.
    top = cast(Budget, main.budget)  # read only on a trajectory: implicit
    anytime = sorted({k for k in spec.max_iters if k < top.max_iter}) if on_trajectory(main, spec) else []
    exits = [p for p in exit_points(spec) if p.exit != DEFAULT_EXIT] if on_trajectory(main, spec) and any(
        exit_rider(j, spec) for j in group) else []
    started, started_at = time.monotonic(), time.time()
    try:
        results = evaluate_job(main, spec, out, anytime, exits)
    except JOB_ERRORS as exc:
        message = f"{type(exc).__name__}: {exc}"
        for job in group:
            save_failure(job, out, spec, message)
            yield job, message
        return

    per_budget = split_anytime(results)
    wall = time.monotonic() - started
    for job in group:
        results = per_budget[_point_of(job, main)]
        if "ssm_model" in results["config"]:  # our adapters keep a greedy log (lm-eval's hf model does not)
            greedy = GREEDY if job is main else f"../{main.key}/{GREEDY}"  # relative: a sweep folder can move
            results["config"]["ssm_model"]["greedy_log"] = greedy
        info: dict[str, Any] = {"wall_s": wall if job is main else 0.0, "started": started_at}
        if worker is not None:
            info["worker"] = worker
        if job is not main:
            info["anytime_of"] = main.key
        save_job(job, out, spec, results, info)
        yield job, None


def _point_of(job: Job, main: Job) -> int | str | None:
    """Where a job's results are in split_anytime's: the run's own under its max_iter (None: explicit), an anytime
    budget under its max_iter, an exit point under its name ("kl=0.001")."""
    b = job.budget
    if b is None or job is main:
        return b.max_iter if b else None
    return point_name(ExitPoint(b.exit, b.tol)) if b.exit != DEFAULT_EXIT else b.max_iter


def model_args(job: Job, spec: SweepSpec, greedy_path: Path, anytime: list[int],
               exits: list[ExitPoint] | None = None) -> dict:
    if job.kind == "hf":  # lm-eval's own model: its context window is our adapters' default (DEFAULT_MAX_LENGTH)
        return {"pretrained": str(job.checkpoint), "batch_size": spec.batch_size, "device": spec.device,
                "dtype": spec.dtype, "max_length": 2048}
    args: dict[str, Any] = {"pretrained": str(job.checkpoint), "batch_size": spec.batch_size, "device": spec.device,
                            "dtype": spec.dtype, "backend": spec.backend, "record_greedy": str(greedy_path)}
    if spec.state_dtype != "float32":
        args["state_dtype"] = spec.state_dtype
    if job.budget is not None and spec.lanes != 1:
        args["lanes"] = spec.lanes
    if job.budget is not None:
        args.update({k: v for k, v in job.budget.to_dict().items() if k != "anderson_m"})
        if anytime:
            args["anytime"] = list(anytime)
        if exits:
            args["anytime_exits"] = [point_name(p) for p in exits]
    return args


def evaluate_job(job: Job, spec: SweepSpec, out: Path, anytime: list[int], exits: list[ExitPoint] | None = None
                 ) -> dict:
    """One real lm-eval run (its anytime budgets included); the greedy log is written next to its results."""
    from ..model_adapters.adapter.lm import ExplicitSSMLM, ImplicitSSMLM

    target = job.dir(out)
    target.mkdir(parents=True, exist_ok=True)
    greedy = target / (GREEDY + ".tmp")
    greedy.unlink(missing_ok=True)
    args = model_args(job, spec, greedy, anytime, exits)
    if job.kind == "hf":
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(**args)
    else:
        adapter = ImplicitSSMLM if job.kind == "implicit" else ExplicitSSMLM
        lm = adapter(**args, progress=False)  # the sweep's own bar counts jobs
    try:
        results = evaluate_loaded(lm, load_tasks(spec, job.tasks), spec, args)
    except BaseException:  # a failed or interrupted job leaves no half-written log behind
        greedy.unlink(missing_ok=True)
        raise
    if greedy.exists():
        os.replace(greedy, target / GREEDY)
    return results


def load_tasks(spec: SweepSpec, tasks: tuple[str, ...]) -> dict:
    """lm-eval's task objects, set up as simple_evaluate would: zero-shot, its few-shot seed."""
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
    """lm-eval's evaluate() (with every anytime budget) and the provenance simple_evaluate would record."""
    import random

    import numpy as np
    import torch
    from lm_eval import evaluator

    from ..model_adapters.adapter.anytime import evaluate_with_anytime

    random.seed(SEEDS["random_seed"])
    np.random.seed(SEEDS["numpy_seed"])
    torch.manual_seed(SEEDS["torch_seed"])
    evaluate = getattr(evaluator.evaluate, "__wrapped__", evaluator.evaluate)  # lm-eval's own, not the hook's
    results = evaluate_with_anytime(evaluate, lm, tasks, limit=spec.limit, bootstrap_iters=100, log_samples=False,
                                    verbosity="ERROR")
    results["config"] = {"model": type(lm).__name__, "model_args": {k: str(v) for k, v in args.items()},
                         **lm.get_model_info(), "limit": spec.limit, "bootstrap_iters": 100, **SEEDS}
    results["date"], results["git_hash"] = time.time(), git_commit()
    return results


def save_job(job: Job, out: Path, spec: SweepSpec, results: dict, sweep_info: dict) -> None:
    from lm_eval.utils import handle_non_serializable

    results = {k: v for k, v in results.items() if k != "samples"}
    results["sweep"] = {"checkpoint": job.label, "checkpoint_path": str(job.checkpoint), "kind": job.kind,
                        "content_hash": job.content_hash,
                        "budget": job.budget.to_dict() if job.budget else None, "key": job.key,
                        "job_key": job.job_key(spec), "tasks": list(job.tasks), **sweep_info}
    write_json_atomic(job.dir(out) / RESULTS, results, default=handle_non_serializable)
    (job.dir(out) / FAILED).unlink(missing_ok=True)


def save_failure(job: Job, out: Path, spec: SweepSpec, message: str) -> None:
    logger.error("%s/%s failed: %s", job.label, job.key, message)
    record = {"checkpoint": job.label, "checkpoint_path": str(job.checkpoint), "content_hash": job.content_hash,
              "kind": job.kind, "budget": job.budget.to_dict() if job.budget else None, "key": job.key,
              "job_key": job.job_key(spec), "tasks": list(job.tasks), "error": message, "date": time.time()}
    write_json_atomic(job.dir(out) / FAILED, record)
    (job.dir(out) / RESULTS).unlink(missing_ok=True)  # never leave results that claim these settings


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
