"""Where a sweep's jobs run: `implicit-eval sweep --executor local|slurm`, and `sweep --status`.

One interface, `Executor.run(spec, out, progress) -> Outcome`, two implementations:

- LocalExecutor (the default): this host, as before: one process, or --workers N processes (one per GPU) that
  claim groups of jobs from a shared pool (sweep.run_sweep).
- SlurmExecutor: the pending groups of the plan go to SLURM as one job array through submitit, one array task per
  group (an anytime group stays one task). Each task runs the groups through sweep.run_groups, the code path of a
  local run, and writes the same keyed, atomic results files, so a sweep can be resubmitted, resumed and reported
  while its tasks run. A task is requeued on preemption or timeout (submitit calls SweepTask.checkpoint); whatever
  it had not written is computed again, by the requeued task or by the next submission, and what it had written is
  never recomputed: a task skips the jobs that are done.

Why the local pool was not rewritten into the SLURM executor's mould: its workers start while the sweep plans and
claim groups as they go (costliest first), which a fixed assignment of groups to tasks cannot do; both executors
share everything below the dispatch (plan, pending groups, run_groups, the keyed results).

The records: OUT/slurm/submissions/<first task>.json names the jobs of every task of a submission;
OUT/slurm/<task>/ holds submitit's pickles and the task's logs. `sweep --status` reads the plan (sweep.json), the
results and failure files, the local pool's claims, these records and SLURM's queue (squeue; sacct needs a
slurmdbd that many clusters, and the CI's single node, do not run), and runs nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..model_adapters.config import ConfigError
from . import sweep
from .sweep import CLAIMS, FAILED, Job, Outcome, SweepSpec

logger = logging.getLogger(__name__)
EXECUTORS = ("local", "slurm")
SLURM_DIR = "slurm"
# SLURM states of a task that still holds its jobs (squeue prints no others by default).
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}


class Executor(Protocol):
    def run(self, spec: SweepSpec, out: Path, progress: bool = True) -> Outcome:
        """Run (or hand to a scheduler) the jobs of the plan not done yet."""


# ---------------------------------------------------------------------------------------------------------------
# Cluster settings: flags over a YAML file over defaults, each checked with one message.


@dataclass(frozen=True)
class ClusterSettings:
    partition: str | None = None
    account: str | None = None
    time_min: int = 60  # a task's time limit; submitit requeues a task that reaches it (up to 3 times)
    gpus_per_task: int = 0
    cpus_per_task: int | None = None  # None: the cluster's default
    mem: str | None = None  # SLURM's --mem: "16G", "4000" (MB); None: the cluster's default
    array_parallelism: int = 256  # tasks of the array running at once
    sbatch: dict = field(default_factory=dict)  # any other sbatch option: {"qos": "high", "exclusive": True}
    setup: tuple[str, ...] = ()  # shell lines run before each task (module load ..., source .venv/bin/activate)


KEYS = {"partition": "--partition", "account": "--account", "time": "--time", "gpus_per_task": "--gpus-per-task",
        "cpus_per_task": "--cpus-per-task", "mem": "--mem", "array_parallelism": "--array-parallelism",
        "sbatch": "--sbatch", "setup": None}
# Options submitit writes itself, or that have their own flag: an --sbatch of these would conflict silently.
RESERVED = {"array": None, "output": None, "error": None, "open-mode": None, "signal": None, "wckey": None,
            "job-name": None, "partition": "--partition", "account": "--account", "time": "--time",
            "gpus-per-node": "--gpus-per-task", "cpus-per-task": "--cpus-per-task", "mem": "--mem"}


def parse_time(text) -> int:
    """A time limit in minutes, from minutes or SLURM's [D-]HH:MM:SS, D-HH or D-HH:MM (seconds round up)."""
    value = str(text).strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2}):(\d{2})", value)
    if m:
        days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
        total = days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
        if total > 0:
            return total
    m = re.fullmatch(r"(\d+)-(\d+)(?::(\d{2}))?", value)
    if m and (total := int(m[1]) * 1440 + int(m[2]) * 60 + int(m[3] or 0)) > 0:
        return total
    raise ConfigError(f"--time: expected minutes (e.g. 90) or SLURM's HH:MM:SS, D-HH:MM:SS, D-HH, got {text!r}")


def _int(name: str, value, least: int) -> int:
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < least:
        raise ConfigError(f"{name}: expected an integer >= {least}, got {value!r}")
    return int(value)


def _text(name: str, value) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ConfigError(f"{name}: expected a name without spaces, got {value!r}")
    return value


def parse_sbatch(items) -> dict:
    """--sbatch KEY=VALUE or KEY (a switch such as exclusive), or a YAML mapping: sbatch's long option names."""
    pairs = items.items() if isinstance(items, dict) else [(i.split("=", 1) + [True])[:2] for i in items]
    options = {}
    for key, value in pairs:
        key = str(key).removeprefix("--")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
            raise ConfigError(f"--sbatch: {key!r} is not an sbatch option name (lowercase, e.g. qos=high or "
                              "constraint=a100)")
        if key in RESERVED:
            own = RESERVED[key]
            raise ConfigError(f"--sbatch {key}: " + (f"use {own}" if own else "submitit sets this option itself"))
        if value is False or value is None or (isinstance(value, str) and not value):
            raise ConfigError(f"--sbatch {key}: give a value ({key}=VALUE) or none for a switch, got {value!r}")
        options[key] = value
    return options


def cluster_settings(config: Path | None = None, **flags) -> ClusterSettings:
    """The settings of --executor slurm: `flags` (None: not given) over the YAML file `config` over the defaults."""
    values = dict(read_cluster_config(config)) if config else {}
    values.update({k: v for k, v in flags.items() if v is not None and v != []})
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ConfigError(f"--cluster-config {config}: unknown key(s) {unknown}; valid keys are {sorted(KEYS)}")
    out: dict[str, Any] = {}
    for key in ("partition", "account"):
        if key in values:
            out[key] = _text(f"--{key}", values[key])
    if "time" in values:
        out["time_min"] = parse_time(values["time"])
    if "gpus_per_task" in values:
        out["gpus_per_task"] = _int("--gpus-per-task", values["gpus_per_task"], 0)
    if "cpus_per_task" in values:
        out["cpus_per_task"] = _int("--cpus-per-task", values["cpus_per_task"], 1)
    if "array_parallelism" in values:
        out["array_parallelism"] = _int("--array-parallelism", values["array_parallelism"], 1)
    if "mem" in values:
        if not re.fullmatch(r"\d+[KMGT]?", str(values["mem"])):
            raise ConfigError(f"--mem: expected SLURM's memory per node, e.g. 16G or 4000 (MB), got {values['mem']!r}")
        out["mem"] = str(values["mem"])
    if "sbatch" in values:
        out["sbatch"] = parse_sbatch(values["sbatch"])
    if "setup" in values:
        setup = values["setup"]
        if not isinstance(setup, list) or not all(isinstance(line, str) for line in setup):
            raise ConfigError(f"--cluster-config {config}: setup must be a list of shell lines, got {setup!r}")
        out["setup"] = tuple(setup)
    return ClusterSettings(**out)


def read_cluster_config(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"--cluster-config {path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--cluster-config {path}: expected a mapping of settings (partition: gpu, time: 60, "
                          f"...), got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def check_device(settings: ClusterSettings, spec: SweepSpec) -> None:
    """GPUs asked for and the device the jobs use must agree: otherwise the GPUs idle or the jobs find none."""
    on_cuda = str(spec.device).startswith("cuda")
    if on_cuda and settings.gpus_per_task == 0:
        raise ConfigError(f"--device {spec.device} with --executor slurm needs --gpus-per-task >= 1 (each task is "
                          "given its own GPUs by SLURM)")
    if not on_cuda and settings.gpus_per_task > 0:
        raise ConfigError(f"--gpus-per-task {settings.gpus_per_task} with --device {spec.device}: the GPUs would "
                          "sit idle; use --device cuda")
    if on_cuda and spec.device != "cuda":
        raise ConfigError(f"--device {spec.device} with --executor slurm: use --device cuda (a task sees only the "
                          "GPUs SLURM gave it)")


# ---------------------------------------------------------------------------------------------------------------
# The executors.


@dataclass
class Submission(Outcome):
    """The outcome of a submission: the tasks handed to SLURM; ran and failed are filled in with --wait."""
    tasks: list[str] = field(default_factory=list)
    submitted: list[Job] = field(default_factory=list)
    held: list[Job] = field(default_factory=list)  # already in a task of an earlier submission, queued or running
    waited: bool = False


class LocalExecutor:
    """This host: sweep.run_sweep, with spec.workers processes (one per GPU on CUDA)."""

    def run(self, spec: SweepSpec, out: Path, progress: bool = True) -> Outcome:
        held = held_jobs(out)
        if held:
            tasks = sorted({task for task, _ in held.values()})
            raise ConfigError(f"{out}: {len(held)} jobs belong to SLURM tasks still queued or running "
                              f"({', '.join(tasks[:5])}{', ...' if len(tasks) > 5 else ''}): wait for them "
                              f"(implicit-eval sweep --status --out {out}), scancel them, or resubmit with "
                              "--executor slurm, which leaves them to their tasks")
        return sweep.run_sweep(spec, out, progress=progress)


class SweepTask:
    """One array task: its group of jobs through sweep.run_groups, as a local run runs them. submitit calls
    checkpoint() on preemption or timeout and requeues the task with the same group; the jobs done by then are
    skipped, the one in flight (whose results were never written) is computed again."""

    def __init__(self, spec: SweepSpec, out: Path):
        self.spec, self.out = spec, Path(out)

    def __call__(self, group: list[Job]) -> dict:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        _threads_from_slurm()
        task = task_id()
        todo = [j for j in group if j.status(self.out, self.spec) != "done"]
        outcome = Outcome(list(group), skipped=[j for j in group if j not in todo])
        logger.info("task %s: %d jobs to run, %d done before", task, len(todo), len(outcome.skipped))
        if todo:
            sweep.run_groups([todo], self.spec, self.out, outcome, worker=task)
        return {"ran": [rel(j, self.out) for j in outcome.ran], "failed": outcome.failed,
                "skipped": [rel(j, self.out) for j in outcome.skipped]}

    def checkpoint(self, group: list[Job]):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, group)


def task_id() -> str:
    try:
        import submitit

        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:  # not inside a submitit job (a task called by hand)
        return "local"


def _threads_from_slurm() -> None:
    """Torch would otherwise start one thread per core of the node, whatever share SLURM gave the task."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        import torch

        torch.set_num_threads(int(cpus))


def rel(job: Job, out: Path) -> str:
    return str(job.dir(out).relative_to(out))


class SlurmExecutor:
    """The pending groups as one SLURM job array (cluster="slurm"), or as local processes through submitit's
    LocalExecutor (cluster="local": the same tasks and records where no SLURM runs, for tests)."""

    def __init__(self, settings: ClusterSettings, cluster: str = "slurm", wait: bool = False, poll_s: float = 5.0,
                 task: type[SweepTask] = SweepTask):
        if cluster not in ("slurm", "local"):
            raise ConfigError(f"cluster must be 'slurm' or 'local', got {cluster!r}")
        self.settings, self.cluster, self.wait, self.poll_s, self.task = settings, cluster, wait, poll_s, task

    def run(self, spec: SweepSpec, out: Path, progress: bool = True) -> Submission:
        if self.cluster == "slurm":
            check_device(self.settings, spec)
            _check_slurm_commands()
        spec = dataclasses.replace(spec, workers=1)
        out.mkdir(parents=True, exist_ok=True)
        jobs = sweep.plan(spec)
        sweep.write_sweep_json(spec, out, jobs, executor=self.cluster)
        outcome = Submission(jobs)
        held = held_jobs(out)
        groups = []
        for group in sweep.pending_groups(jobs, spec, out, outcome):
            outcome.held += [j for j in group if rel(j, out) in held]
            if free := [j for j in group if rel(j, out) not in held]:
                groups.append(free)
        if not groups:
            return outcome
        submitted = self._submit(spec, out, groups)
        outcome.tasks = [job_id for job_id, _ in submitted]
        outcome.submitted = [j for g in groups for j in g]
        if self.wait:
            self._wait_for(submitted, spec, out, outcome)
        return outcome

    def _executor(self, out: Path):
        import submitit

        folder = (out / SLURM_DIR / "%j").absolute()
        if self.cluster == "local":
            ex: submitit.Executor = submitit.LocalExecutor(folder=folder)
            ex.update_parameters(timeout_min=self.settings.time_min)  # submitit's default is 2 minutes
            return ex
        ex = submitit.SlurmExecutor(folder=folder)
        s = self.settings
        params = {"job_name": "implicit-eval-sweep", "time": s.time_min, "partition": s.partition,
                  "account": s.account, "cpus_per_task": s.cpus_per_task, "mem": s.mem,
                  "gpus_per_node": s.gpus_per_task or None, "array_parallelism": s.array_parallelism,
                  "additional_parameters": _sbatch_options(s), "setup": list(s.setup) or None}
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return ex

    def _submit(self, spec: SweepSpec, out: Path, groups: list[list[Job]]) -> list:
        executor = self._executor(out)
        task = self.task(spec, out)
        with executor.batch():
            futures = [executor.submit(task, group) for group in groups]
        record = {"cluster": self.cluster, "submitted": time.time(), "tasks": [
            {"task": str(f.job_id), "jobs": [rel(j, out) for j in g], "stdout": str(f.paths.stdout),
             "stderr": str(f.paths.stderr), "result": str(f.paths.result_pickle)} for f, g in zip(futures, groups)]}
        sweep.write_json_atomic(out / SLURM_DIR / "submissions" / f"{futures[0].job_id}.json", record)
        logger.info("submitted %d tasks (%d jobs) to %s: %s", len(groups), sum(map(len, groups)), self.cluster,
                    futures[0].job_id.split("_")[0])
        return [(str(f.job_id), f) for f in futures]

    def _wait_for(self, submitted: list, spec: SweepSpec, out: Path, outcome: Submission) -> None:
        """Until none of the tasks is queued or running; the outcome is then read back from the results."""
        ids = [job_id for job_id, _ in submitted]
        while True:
            if self.cluster == "local":
                alive = [job_id for job_id, future in submitted if not future.done()]
            else:
                alive = list(live_tasks("slurm", ids))
            if not alive:
                break
            time.sleep(self.poll_s)
        outcome.waited = True
        for job in outcome.submitted:
            if job.status(out, spec) == "done":
                outcome.ran.append(job)
            else:
                failure = job.dir(out) / FAILED
                outcome.failed[str(job.dir(out))] = (json.loads(failure.read_text())["error"] if failure.exists()
                                                     else "its task ended without a result (see sweep --status)")


def _sbatch_options(settings: ClusterSettings) -> dict:
    """--requeue: a task may be requeued (by submitit at its time limit, by SLURM on preemption or a node failure)
    even where the cluster's default is not to."""
    return {**({} if "no-requeue" in settings.sbatch else {"requeue": True}), **settings.sbatch}


def _check_slurm_commands() -> None:
    missing = [c for c in ("sbatch", "squeue", "srun") if shutil.which(c) is None]
    if missing:
        raise ConfigError(f"--executor slurm: {', '.join(missing)} not found on PATH: run the sweep where SLURM's "
                          "commands work (a login node), or use --executor local")


# ---------------------------------------------------------------------------------------------------------------
# What SLURM holds, and `sweep --status`.


@dataclass(frozen=True)
class TaskRecord:
    task: str
    cluster: str
    stderr: str
    result: str


def task_records(out: Path) -> dict[str, TaskRecord]:
    """For every job ever submitted from this folder, the latest task it was given to."""
    records: dict[str, TaskRecord] = {}
    folder = out / SLURM_DIR / "submissions"
    subs = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            subs.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, OSError):
            logger.warning("%s is unreadable: its tasks are not followed", path)
    for sub in sorted(subs, key=lambda s: s["submitted"]):
        for t in sub["tasks"]:
            for job in t["jobs"]:
                records[job] = TaskRecord(t["task"], sub["cluster"], t["stderr"], t["result"])
    return records


def live_tasks(cluster: str, ids) -> dict[str, str]:
    """The tasks among `ids` still queued or running, with their state (SLURM's, or RUNNING for a local one)."""
    ids = sorted(set(ids))
    if not ids:
        return {}
    if cluster == "local":
        return {i: "RUNNING" for i in ids if _process_alive(i)}
    if shutil.which("squeue") is None:  # a folder copied off the cluster: its tasks are not running here
        logger.warning("squeue not found: SLURM tasks %s are taken as ended", ", ".join(ids[:5]))
        return {}
    arrays = sorted({i.split("_")[0] for i in ids})
    try:
        done = subprocess.run(["squeue", "--noheader", "--array", "--format", "%i %T", "--jobs", ",".join(arrays)],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"squeue failed ({exc}): cannot tell which SLURM tasks still run") from None
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:  # none of them is known to SLURM any more
            return {}
        raise ConfigError(f"squeue failed: {done.stderr.strip()[:300]}")
    states = dict(line.split()[:2] for line in done.stdout.splitlines() if line.strip())
    return {i: states[i] for i in ids if i in states}


def _process_alive(pid: str) -> bool:
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has ended


def held_jobs(out: Path) -> dict[str, tuple[str, str]]:
    """Jobs (as OUT-relative folders) whose task is still queued or running: job -> (task, state)."""
    records = task_records(out)
    held = {}
    for cluster in {r.cluster for r in records.values()}:
        live = live_tasks(cluster, [r.task for r in records.values() if r.cluster == cluster])
        held.update({job: (r.task, live[r.task]) for job, r in records.items() if r.task in live})
    return held


@dataclass
class JobState:
    job: str  # OUT-relative folder
    state: str  # done, running, queued, failed, pending
    detail: str = ""
    log: str = ""


STATES = ("done", "running", "queued", "failed", "pending")


def sweep_status(out: Path) -> list[JobState]:
    """The state of every job of the sweep planned in OUT/sweep.json; nothing is run or changed."""
    meta = out / "sweep.json"
    if not meta.is_file():
        raise ConfigError(f"--status: no sweep in {out} (no sweep.json): start one with implicit-eval sweep ... "
                          f"--out {out}")
    spec = SweepSpec.from_dict(json.loads(meta.read_text())["spec"])
    jobs = sweep.plan(spec)
    records = task_records(out)
    held = held_jobs(out)
    claimed = _claimed_locally(jobs, spec, out)
    states = []
    for job in jobs:
        name = rel(job, out)
        record = records.get(name)
        log = record.stderr if record else ""
        if job.status(out, spec) == "done":
            states.append(JobState(name, "done"))
        elif name in held:
            task, state = held[name]
            states.append(JobState(name, "queued" if state in QUEUED_STATES else "running",
                                   f"task {task} ({state})", log))
        elif name in claimed:
            states.append(JobState(name, "running", "a local worker (--workers)"))
        elif (error := _recorded_failure(job, spec, out)) is not None:
            states.append(JobState(name, "failed", error, log))
        elif record:
            states.append(JobState(name, "failed", f"task {record.task} ended without its result: "
                                   f"{_task_end(record)}", log))
        else:
            states.append(JobState(name, "pending"))
    return states


def _recorded_failure(job: Job, spec: SweepSpec, out: Path) -> str | None:
    path = job.dir(out) / FAILED
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record.get("error", "failed") if record.get("job_key") == job.job_key(spec) else None


def _task_end(record: TaskRecord) -> str:
    """Why a task that is no longer queued left a job without results, from submitit's result file."""
    path = Path(record.result)
    if not path.exists():
        return "cancelled, killed, out of memory or out of time (no result file); the next submit reruns it"
    from submitit.core.utils import pickle_load

    try:
        kind, value = pickle_load(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable result says as much
        return f"unreadable result file {path} ({type(exc).__name__})"
    if kind == "error":
        lines = [line for line in str(value).strip().splitlines() if line.strip()]
        return lines[-1] if lines else "an error"
    return "the task finished without writing it"


def _claimed_locally(jobs: list[Job], spec: SweepSpec, out: Path) -> set[str]:
    """Jobs of groups a --workers N process has claimed (claims live while a local pool runs)."""
    claims = out / CLAIMS
    if not claims.is_dir():
        return set()
    names = {p.name for p in claims.iterdir()}
    pending = [[j for j in g if j.status(out, spec) != "done"] for g in sweep.anytime_groups(jobs, spec)]
    taken = set()
    for group in (g for g in pending if g):
        if hashlib.sha256(str(group[-1].dir(out)).encode()).hexdigest()[:16] in names:
            taken |= {rel(j, out) for j in group}
    return taken


def status_text(out: Path, states: list[JobState] | None = None) -> str:
    states = sweep_status(out) if states is None else states
    counts = {s: sum(1 for x in states if x.state == s) for s in STATES}
    lines = [f"sweep {out}: {len(states)} jobs: " + ", ".join(f"{counts[s]} {s}" for s in STATES)]
    for state in STATES[1:]:
        for x in (x for x in states if x.state == state):
            line = f"{state:8} {x.job}"
            if x.detail:
                line += f"  {x.detail}"
            if x.log:
                line += f"  log: {x.log}"
            lines.append(line)
    if counts["failed"] or counts["pending"]:
        lines.append("the next `implicit-eval sweep` with the same settings (and --executor) runs the failed and "
                     "pending jobs")
    return "\n".join(lines)
