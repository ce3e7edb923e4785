"""`implicit-eval sweep --executor slurm`: the cluster settings and their messages, the same sweep through submitit's
local executor (any machine), and through a real SLURM (the single-node cluster of .ci/slurm.sh; skipped where none
answers): the results equal a local run's, and a task requeued mid-group, then cancelled, loses nothing and doubles
nothing when the sweep is resubmitted."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from implicit_ssm_eval.harness import sweep
from implicit_ssm_eval.harness.executors import (
    ClusterSettings,
    LocalExecutor,
    SlurmExecutor,
    SweepTask,
    cluster_settings,
    live_tasks,
    parse_time,
    sweep_status,
    task_id,
)
from implicit_ssm_eval.harness.results import load_runs
from implicit_ssm_eval.harness.sweep import SweepSpec
from implicit_ssm_eval.harness.sweep_cli import executor_from, spec_from, sweep_parser
from implicit_ssm_eval.model_adapters.config import ConfigError

REPO = Path(__file__).parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # PausingTask travels to the tasks by value


# ---------------------------------------------------------------------------------------------------------------
# Settings


def test_time_limits_in_minutes_or_slurms_formats():
    assert [parse_time(t) for t in ("90", 45, "1:30:00", "0:00:01", "2-00:00:00", "1-12", "1-00:30")] == \
        [90, 45, 90, 1, 2880, 2160, 1470]
    for bad in ("0", "1h", "1:30", "-5", "00:00:00"):
        with pytest.raises(ConfigError, match=r"--time: expected minutes \(e.g. 90\) or SLURM's HH:MM:SS"):
            parse_time(bad)


def test_flags_win_over_the_yaml_file_which_wins_over_the_defaults(tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text("partition: gpu\naccount: proj\ntime: '04:00:00'\ngpus-per-task: 1\ncpus_per_task: 8\n"
                      "mem: 64G\nsbatch: {qos: normal, exclusive: true}\nsetup: ['source .venv/bin/activate']\n")
    s = cluster_settings(config, partition="debug", time=None, sbatch=["constraint=h100"])
    assert s == ClusterSettings(partition="debug", account="proj", time_min=240, gpus_per_task=1, cpus_per_task=8,
                                mem="64G", sbatch={"constraint": "h100"}, setup=("source .venv/bin/activate",))
    assert cluster_settings(None) == ClusterSettings()
    assert cluster_settings(None, sbatch=["exclusive", "qos=high"]).sbatch == {"exclusive": True, "qos": "high"}


@pytest.mark.parametrize("yaml_text, flags, message", [
    ("partitoin: gpu\n", {}, r"unknown key\(s\) \['partitoin'\]; valid keys are \['account', 'array_parallelism'"),
    ("- gpu\n", {}, r"expected a mapping of settings \(partition: gpu, time: 60, ...\), got list"),
    ("time: [1\n", {}, r"not valid YAML"),
    ("gpus_per_task: two\n", {}, r"--gpus-per-task: expected an integer >= 0, got 'two'"),
    ("cpus_per_task: 0\n", {}, r"--cpus-per-task: expected an integer >= 1, got 0"),
    ("setup: source x\n", {}, r"setup must be a list of shell lines, got 'source x'"),
    ("", {"mem": "lots"}, r"--mem: expected SLURM's memory per node, e.g. 16G or 4000 \(MB\), got 'lots'"),
    ("", {"partition": "my gpus"}, r"--partition: expected a name without spaces, got 'my gpus'"),
    ("", {"array_parallelism": "-1"}, r"--array-parallelism: expected an integer >= 1, got '-1'"),
    ("", {"sbatch": ["partition=gpu"]}, r"--sbatch partition: use --partition"),
    ("", {"sbatch": ["array=0-3"]}, r"--sbatch array: submitit sets this option itself"),
    ("", {"sbatch": ["Not An Option"]}, r"'Not An Option' is not an sbatch option name"),
    ("", {"sbatch": ["qos="]}, r"--sbatch qos: give a value \(qos=VALUE\) or none for a switch"),
])
def test_each_wrong_setting_is_named_with_what_is_valid(tmp_path, yaml_text, flags, message):
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        cluster_settings(config, **flags)


def cli(argv: list[str]):
    args = sweep_parser().parse_args(argv)
    return args, executor_from(args)


def test_the_executor_flags_are_checked_together(parity_checkpoints, monkeypatch, tmp_path):
    ckpt = str(parity_checkpoints["implicit"])
    args, executor = cli([ckpt])
    assert isinstance(executor, LocalExecutor)  # the default: today's pool
    with pytest.raises(ConfigError, match=r"--partition, --time, --wait: settings of --executor slurm, given with "
                                          r"--executor local"):
        cli([ckpt, "--partition", "gpu", "--time", "5", "--wait"])
    with pytest.raises(ConfigError, match=r"--workers 2 is the local executor's; with --executor slurm each group"):
        cli([ckpt, "--executor", "slurm", "--workers", "2"])
    args, executor = cli([ckpt, "--executor", "slurm", "--time", "1:00:00", "--wait"])
    assert executor.settings.time_min == 60 and executor.wait and spec_from(args).workers == 1
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ConfigError, match=r"--executor slurm: sbatch, squeue, srun not found on PATH: run the sweep "
                                          r"where SLURM's commands work \(a login node\), or use --executor local"):
        executor.run(spec_from(args), tmp_path)


@pytest.mark.parametrize("device, gpus, message", [
    ("cuda", 0, r"--device cuda with --executor slurm needs --gpus-per-task >= 1"),
    ("cpu", 2, r"--gpus-per-task 2 with --device cpu: the GPUs would sit idle; use --device cuda"),
    ("cuda:1", 1, r"--device cuda:1 with --executor slurm: use --device cuda"),
])
def test_gpus_and_device_must_agree(parity_checkpoints, device, gpus, message):
    spec = SweepSpec(checkpoints=(parity_checkpoints["implicit"],), device=device)
    with pytest.raises(ConfigError, match=message):
        SlurmExecutor(ClusterSettings(gpus_per_task=gpus)).run(spec, Path("never-written"))


def test_the_sbatch_script_carries_every_setting(tmp_path, monkeypatch):
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no srun needed here
    settings = cluster_settings(None, partition="gpu", account="proj", time="2:00:00", gpus_per_task="2",
                                cpus_per_task="16", mem="64G", array_parallelism="4",
                                sbatch=["qos=high", "exclusive"])
    settings = ClusterSettings(**{**settings.__dict__, "setup": ("source .venv/bin/activate",)})
    script = SlurmExecutor(settings)._executor(tmp_path)._make_submission_file_text("CMD", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --time=120",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=16", "#SBATCH --mem=64G",
                 "#SBATCH --qos=high", "#SBATCH --exclusive", "#SBATCH --signal=USR2@90", "#SBATCH --requeue",
                 "#SBATCH --job-name=implicit-eval-sweep", "source .venv/bin/activate"):
        assert line in script.splitlines(), (line, script)
    assert str(tmp_path / "slurm" / "%j") in script  # logs and pickles under the sweep's folder


def test_status_of_a_folder_without_a_sweep_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "implicit_ssm_eval.harness", "sweep", "--status", "--out",
                          str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"implicit-eval sweep: error: --status: no sweep in {tmp_path} (no sweep.json): "
                                  f"start one with implicit-eval sweep ... --out {tmp_path}")


# ---------------------------------------------------------------------------------------------------------------
# A task stopped mid-group


class PausingTask(SweepTask):
    """A SweepTask that stops after the first result it writes in a group of several jobs, as a task preempted or
    cancelled mid-group would: it writes OUT/paused-<attempt> (its task id and pid) and sleeps until signalled.
    The attempt counts the earlier pauses; it pauses only where the test made OUT/pause-<attempt>."""

    def __call__(self, group):
        attempt = len(list(self.out.glob("paused-*")))
        if len(group) > 1 and (self.out / f"pause-{attempt}").exists():
            original, out = sweep.save_job, self.out

            def save_then_pause(*args, **kwargs):
                original(*args, **kwargs)
                sweep.save_job = original
                sweep.write_json_atomic(out / f"paused-{attempt}", {"task": task_id(), "pid": os.getpid()})
                time.sleep(600)

            sweep.save_job = save_then_pause
        return super().__call__(group)


def wait_for(what, description: str, timeout: float = 240, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {description}")


def pause(out: Path, attempt: int) -> dict:
    """The task id and pid that PausingTask wrote when it paused (attempt 0: first run, 1: after a requeue)."""
    marker = out / f"paused-{attempt}"
    return json.loads(wait_for(lambda: marker.is_file() and marker.read_text(),
                               f"a task to pause after its first result (attempt {attempt})"))


VOLATILE = {"date", "request_seconds", "started", "wall_s", "worker"}  # clocks and who ran it


def without_clocks(value):
    if isinstance(value, dict):
        return {k: without_clocks(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [without_clocks(v) for v in value]
    return value


def sweep_files(out: Path) -> dict:
    """Every results JSON (clocks dropped, the folder's own path named OUT) and greedy log of a sweep."""
    files = {}
    for path in sorted(out.glob("*/*/results.json")):
        files[str(path.relative_to(out))] = without_clocks(json.loads(path.read_text().replace(str(out), "OUT")))
    for path in sorted(out.glob("*/*/greedy.jsonl")):
        files[str(path.relative_to(out))] = path.read_bytes()
    return files


def states(out: Path) -> dict[str, tuple[str, str, str]]:
    return {s.job: (s.state, s.detail, s.log) for s in sweep_status(out)}


def mtimes(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.json")}


@pytest.fixture
def cancel_tasks_of():
    """Folders whose tasks are stopped when the test ends, passed or failed, so that none outlives it: SLURM's
    cancelled, submitit's local ones (and the paused task processes) killed."""
    folders = []
    yield folders.append
    for out in folders:
        for marker in out.glob("paused-*"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(json.loads(marker.read_text())["pid"], signal.SIGKILL)
        for sub in (out / "slurm" / "submissions").glob("*.json"):
            record = json.loads(sub.read_text())
            tasks = [t["task"] for t in record["tasks"]]
            if record["cluster"] == "slurm":
                subprocess.run(["scancel", *tasks], capture_output=True, timeout=60)
            for pid in tasks if record["cluster"] == "local" else []:
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)


def anytime_group(out: Path, spec: SweepSpec) -> list[str]:
    jobs = sweep.plan(spec)
    (group,) = [g for g in sweep.anytime_groups(jobs, spec) if len(g) > 1]
    return [str(j.dir(out).relative_to(out)) for j in sorted(group, key=lambda j: j.budget.max_iter)]


@pytest.mark.slow
def test_submitit_local_executor_requeues_and_resumes_with_nothing_lost(parity_checkpoints, tmp_path,
                                                                         cancel_tasks_of):
    """Where no SLURM runs (submitit's LocalExecutor, the same tasks and records): a task stopped by USR2 is requeued
    and goes on from its unwritten jobs; one killed (-9) leaves them to the next submission; the results equal a
    local run's."""
    spec = SweepSpec(checkpoints=tuple(parity_checkpoints.values()), tasks=("st_parity_id",), max_iters=(1, 2, 4),
                     tols=(0.0,), modes=("simultaneous",), metadata={"st_num_docs": 4}, batch_size=8)
    local, out = tmp_path / "local", tmp_path / "cluster"
    sweep.run_sweep(spec, local, progress=False)
    out.mkdir()
    cancel_tasks_of(out)
    (out / "pause-0").touch()
    (out / "pause-1").touch()
    executor = SlurmExecutor(ClusterSettings(time_min=10), cluster="local", task=PausingTask)
    first = executor.run(spec, out, progress=False)
    assert len(first.tasks) == 2 and len(first.submitted) == 4  # the anytime group and the explicit job
    k1, k2, k4 = anytime_group(out, spec)
    paused = pause(out, 0)
    assert states(out)[k1][0] == "done" and states(out)[k2][0] == "running"
    written = mtimes(out)
    os.kill(paused["pid"], signal.SIGUSR2)  # preempted: submitit checkpoints and requeues the task
    paused = pause(out, 1)
    os.kill(paused["pid"], signal.SIGKILL)  # then killed outright, after its second result
    wait_for(lambda: not live_tasks("local", first.tasks), "the tasks to end")
    now = states(out)
    assert [now[k][0] for k in (k1, k2, k4)] == ["done", "done", "failed"]
    assert "ended without its result: cancelled, killed" in now[k4][1] and Path(now[k4][2]).is_file()
    assert all(mtimes(out)[p] == t for p, t in written.items())  # the requeued task did not redo k1
    assert "Requeued job" in Path(now[k4][2]).read_text()
    before = mtimes(out)
    again = SlurmExecutor(ClusterSettings(time_min=10), cluster="local", wait=True).run(spec, out, progress=False)
    assert len(again.ran) == 1 and len(again.skipped) == 3
    assert str(again.ran[0].dir(out).relative_to(out)) == k4 and not again.failed
    assert all(mtimes(out)[p] == t for p, t in before.items())  # nothing done is redone
    assert sweep_files(out) == sweep_files(local)
    assert {s.state for s in sweep_status(out)} == {"done"}
    loaded = load_runs([out])
    assert len(loaded.runs) == 4 and not loaded.skipped  # one result a job, none twice; the records are no results


# ---------------------------------------------------------------------------------------------------------------
# A real SLURM


def slurm_partition() -> str:
    """The default partition of a SLURM cluster that answers here, or skip."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        pytest.skip("no SLURM here (sbatch, sinfo): start the single-node cluster with `.ci/slurm.sh start` (root)")
    try:
        info = subprocess.run(["sinfo", "--noheader", "--format", "%P %T"], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo did not answer in 20 s: no SLURM controller runs (`.ci/slurm.sh start`)")
    up = [line.split() for line in info.stdout.splitlines() if line.split()[1:] in (["idle"], ["mixed"])]
    default = [p for p, _ in up if p.endswith("*")]
    if info.returncode != 0 or not default:
        pytest.skip(f"no idle node in SLURM's default partition ({(info.stdout or info.stderr).strip()[:200]}): "
                    "start the single-node cluster with `.ci/slurm.sh start` (root)")
    return default[0].rstrip("*")


def run_cli(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "implicit_ssm_eval.harness", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_sweep_on_a_real_slurm_equals_the_local_run_and_survives_requeue_cancel_and_resubmission(
        tmp_path, readme, monkeypatch, cancel_tasks_of):
    partition = slurm_partition()
    words = readme("implicit-eval sweep", "--executor")
    words[words.index("--partition") + 1] = partition
    out = tmp_path / "cluster"
    assert words[:2] == ["implicit-eval", "sweep"]
    args = [str(out) if w == "results/cluster" else w for w in words[2:]]
    local_args = args[:args.index("--executor")]
    local_args[local_args.index("--out") + 1] = str(tmp_path / "local")
    reference = run_cli(["sweep", *local_args, "--quiet"])
    assert reference.returncode == 0, reference.stderr[-2000:]

    # The first submission, through the API with a task that pauses mid-group.
    monkeypatch.chdir(REPO)  # the README's paths are relative to the repository, as tasks see them
    parsed = sweep_parser().parse_args(args)
    executor, spec = executor_from(parsed), spec_from(parsed)
    out.mkdir()
    cancel_tasks_of(out)
    (out / "pause-0").touch()
    (out / "pause-1").touch()
    executor.task = PausingTask
    started = time.monotonic()
    first = executor.run(spec, out, progress=False)
    assert len(first.tasks) == 3 and len(first.submitted) == 5
    k1, k2, k4 = anytime_group(out, spec)
    paused = pause(out, 0)
    now = states(out)
    assert now[k1][0] == "done" and now[k2][:2] == ("running", f"task {paused['task']} (RUNNING)")

    # While it runs: a resubmission leaves its jobs to it; the local executor refuses the folder.
    resubmitted = run_cli(["sweep", *args])
    assert resubmitted.returncode == 0, resubmitted.stderr[-2000:]
    assert "sweep: nothing to submit:" in resubmitted.stderr and "in tasks of an earlier submission" in \
        resubmitted.stderr
    assert len(list((out / "slurm" / "submissions").iterdir())) == 1
    with pytest.raises(ConfigError, match="jobs belong to SLURM tasks still queued or running"):
        LocalExecutor().run(spec, out, progress=False)

    # Preempted (USR2: submitit checkpoints and requeues), then cancelled after its next result.
    written = mtimes(out)
    subprocess.run(["scancel", "--signal=USR2", paused["task"]], check=True, timeout=30)
    paused = pause(out, 1)
    subprocess.run(["scancel", paused["task"]], check=True, timeout=30)
    wait_for(lambda: not live_tasks("slurm", first.tasks), "the tasks to leave SLURM's queue")
    now = states(out)
    assert [now[k][0] for k in (k1, k2, k4)] == ["done", "done", "failed"]
    assert "ended without its result: cancelled, killed" in now[k4][1] and Path(now[k4][2]).is_file()
    assert "Requeued job" in Path(now[k4][2]).read_text()
    assert all(mtimes(out)[p] == t for p, t in written.items())  # the requeued task did not redo k1
    assert not list(out.glob("*/*/results.json.tmp")) and not (out / k4 / "results.json").exists()
    status_command = readme("implicit-eval sweep --status")
    status = run_cli([str(out) if w == "results/cluster" else w for w in status_command[1:]])
    assert f"sweep {out}: 5 jobs: 4 done, 0 running, 0 queued, 1 failed, 0 pending" in status.stdout

    # The README's command again, waiting: only the cancelled job runs; then everything equals the local run.
    before = mtimes(out)
    final = run_cli(["sweep", *args, "--wait"])
    assert final.returncode == 0, final.stderr[-2000:]
    assert "sweep: 1 of 5 jobs run, 4 already done" in final.stderr and "# Leaderboard" in final.stdout
    assert all(mtimes(out)[p] == t for p, t in before.items())  # nothing done is redone
    assert sweep_files(out) == sweep_files(tmp_path / "local")
    loaded = load_runs([out])
    assert len(loaded.runs) == 5 and not loaded.skipped  # one result a job, none twice; the records are no results
    print(f"real SLURM sweep, requeue, cancel and resubmission: {time.monotonic() - started:.0f} s")


def test_lanes_reach_the_implicit_jobs_model_args_and_leave_their_keys(parity_checkpoints, tmp_path):
    """--lanes is speed, not numbers: jobs keep their keys (a sweep resumed with other lanes keeps what is done),
    implicit jobs' model_args carry it (workers rebuild the spec from its dict), explicit ones never see it."""
    from implicit_ssm_eval.harness.sweep import model_args, plan

    ckpts = [str(parity_checkpoints[kind]) for kind in ("implicit", "explicit")]
    plain = spec_from(sweep_parser().parse_args([*ckpts, "--max-iter", "2"]))
    wide = SweepSpec.from_dict(spec_from(sweep_parser().parse_args([*ckpts, "--max-iter", "2", "--lanes",
                                                                    "2"])).to_dict())
    jobs = plan(plain)
    assert wide.lanes == 2 and all(j.job_key(plain) == j.job_key(wide) for j in jobs)
    assert {j.kind for j in jobs} == {"implicit", "explicit"}
    for job in jobs:
        args, before = (model_args(job, spec, tmp_path / "g.jsonl", []) for spec in (wide, plain))
        assert "lanes" not in before and args.get("lanes") == (2 if job.kind == "implicit" else None)
    with pytest.raises(SystemExit):
        sweep_parser().parse_args([ckpts[0], "--lanes", "0"])


def test_a_bfloat16_state_sweep_keys_its_jobs_apart_and_hands_the_adapters_the_option(parity_checkpoints, tmp_path):
    """--state-dtype bfloat16 changes scores: its jobs must not be taken for the float32 ones already done, and each
    job's model_args must carry it (workers and cluster tasks rebuild the spec from its dict)."""
    from implicit_ssm_eval.harness.sweep import model_args, plan

    ckpt = str(parity_checkpoints["implicit"])
    plain = spec_from(sweep_parser().parse_args([ckpt, "--max-iter", "2"]))
    low = SweepSpec.from_dict(spec_from(sweep_parser().parse_args([ckpt, "--max-iter", "2", "--state-dtype",
                                                                   "bfloat16"])).to_dict())
    older = SweepSpec.from_dict({k: v for k, v in plain.to_dict().items() if k != "state_dtype"})  # before the flag
    jobs = plan(plain)
    assert low.state_dtype == "bfloat16" and [j.key for j in plan(low)] == [j.key for j in jobs]
    assert all(j.job_key(plain) == j.job_key(older) != j.job_key(low) for j in jobs)
    assert model_args(jobs[0], low, tmp_path / "g.jsonl", [])["state_dtype"] == "bfloat16"
    assert "state_dtype" not in model_args(jobs[0], plain, tmp_path / "g.jsonl", [])
    with pytest.raises(SystemExit):
        sweep_parser().parse_args([ckpt, "--state-dtype", "float16"])
