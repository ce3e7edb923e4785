"""What the reporter and the sweep write (issue 33, second round): non-finite scores shown as failures, every file
written whole or not at all, paths built from data kept inside the output folder, a full disk in one line, and a
terminated sweep that takes its workers with it (see docs/VALIDATION.md, "Second round")."""

import contextlib
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from implicit_ssm_eval.harness import plots, report
from implicit_ssm_eval.harness.cli import classify, main
from implicit_ssm_eval.harness.fronts import points
from implicit_ssm_eval.harness.io import inside, safe_name
from implicit_ssm_eval.harness.results import load_runs
from implicit_ssm_eval.harness.sweep import Job, SweepSpec, run_sweep

FIXTURE = Path(__file__).parents[1] / "fixtures" / "sweep_small"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
K4 = "parity-implicit/k4_tol0_tau0.8_simultaneous_fixed_point/results.json"


def one_line(capsys, argv: list[str], code: int) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def files_of(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[Path]:
    return list(folder.rglob("*.tmp"))  # hidden names too (write_atomic's ".name.pid.tmp")


# -- non-finite scores -----------------------------------------------------------------------------------------------
def edited_fixture(tmp_path: Path, edit) -> Path:
    """The committed sweep fixture, copied, with edit(results) applied to the k=4 simultaneous run."""
    folder = tmp_path / "results"
    shutil.copytree(FIXTURE, folder)
    path = folder / K4
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json (and lm-eval) write them
    return folder


def test_non_finite_scores_are_failures_with_their_reason_never_numbers(tmp_path, capsys):
    def nan_and_inf(data):
        data["results"]["st_parity_ood2x"]["acc,none"] = float("nan")
        data["results"]["st_parity_id"]["acc_stderr,none"] = float("inf")
        data["results"]["st_parity_ood8x"]["acc,none"] = float("-inf")

    folder = edited_fixture(tmp_path, nan_and_inf)
    out = tmp_path / "report"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    text = (out / "leaderboard.md").read_text()
    row = next(line for line in text.splitlines()
               if line.startswith("| parity-implicit | implicit | k=4, simultaneous"))
    assert row.count("failed (non-finite acc)") == 2, row
    cells = {c.strip().lower() for line in text.splitlines() if line.startswith("|") for c in line.split("|")}
    assert not {c for c in cells if c.startswith(("nan", "inf", "-inf", "non-finite ("))}, cells
    assert "| parity-implicit | k=4, simultaneous | st_parity_ood2x: non-finite acc" in text  # the failures table
    best = text.split("Best budget per model:")[1].split("\n\n")[1]
    assert "nan" not in best  # the mean over buckets never averages a non-finite score
    with (out / "results.csv").open() as fh:
        failed = [r for r in csv.DictReader(fh) if r["status"] == "failed"]
    assert {(r["task"], r["value"], r["error"]) for r in failed} == {
        ("st_parity_ood2x", "", "non-finite acc"), ("st_parity_ood8x", "", "non-finite acc")}
    rows = report.merge_seeds(report.tidy_rows(load_runs([folder]).runs))
    id_k4 = next(r for r in rows if r["task"] == "st_parity_id" and r["max_iter"] == 4 and r["metric"] == "acc"
                 and r["mode"] == "simultaneous")
    assert id_k4["stderr"] is None and id_k4["status"] == "ok"  # an infinite stderr is no stderr
    ood2x = [r for r in rows if r["task"] == "st_parity_ood2x"]
    on_plots = [p for pts in points(ood2x, "acc").values() for p in pts]
    assert on_plots and all(p.row["max_iter"] != 4 or p.row["tol"] or p.row["mode"] != "simultaneous"
                            for p in on_plots)  # not a point of the fronts
    colors = plots.colors_of(ood2x)
    fixed, _, _ = plots.budget_series(plots._ok(ood2x, "acc"), colors)
    simultaneous = next(s for s in fixed if s.label == "parity-implicit, simultaneous")
    assert 4 not in simultaneous.x and all(y == y for s in fixed for y in s.y)  # nor of any curve


# -- atomic writes ---------------------------------------------------------------------------------------------------
def full_disk_savefig(monkeypatch):
    from matplotlib.figure import Figure

    def savefig(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        raise OSError(errno.ENOSPC, "No space left on device", str(fname))

    monkeypatch.setattr(Figure, "savefig", savefig)


def full_disk_write_text(monkeypatch):
    def write_text(self, text, *args, **kwargs):
        with self.open("w") as fh:
            fh.write(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", write_text)


def full_disk_csv(monkeypatch):
    original = csv.DictWriter.writerows

    def writerows(self, rows):
        original(self, rows[:1])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", writerows)


@pytest.mark.parametrize("fail", [full_disk_savefig, full_disk_write_text, full_disk_csv])
def test_a_report_on_a_full_disk_keeps_the_earlier_files_whole(tmp_path, capsys, monkeypatch, fail):
    """The reporter on a full disk once overwrote a valid PNG of an earlier report with a truncated file."""
    out = tmp_path / "report"
    assert main(["report", str(FIXTURE), "--out", str(out)]) == 0
    before = files_of(out)
    assert any(p.suffix == ".png" for p in before) and (out / "results.csv") in before
    fail(monkeypatch)
    line = one_line(capsys, ["report", str(FIXTURE), "--out", str(out)], 1)
    assert "No space left on device" in line
    monkeypatch.undo()
    assert files_of(out) == before and not temporaries(out)


def test_a_failed_job_leaves_no_greedy_temporary(parity_checkpoints, tmp_path, monkeypatch):
    from implicit_ssm_eval.harness import sweep

    def evaluate_then_break(lm, tasks, spec, args):
        Path(args["record_greedy"]).write_text("{}\n")  # the log half written
        raise RuntimeError("the model broke mid-run")

    monkeypatch.setattr(sweep, "evaluate_loaded", evaluate_then_break)
    outcome = run_sweep(small_spec(parity_checkpoints["implicit"]), tmp_path / "s", progress=False)
    assert len(outcome.failed) == 1 and not temporaries(tmp_path / "s")


# -- paths built from data -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [("..", "_."), (".", "_"), ("../../x", "_._.._x"), ("a/b\\c", "a_b_c"),
                                            (".hidden", "_hidden"), ("", "_"), ("st_parity_id", "st_parity_id"),
                                            ("k4_tol0.05_tau0.8_blockwise8_fixed_point", None)])
def test_names_from_data_become_safe_file_names(tmp_path, name, expected):
    assert safe_name(name) == (name if expected is None else expected)
    assert inside(tmp_path, name, name).resolve().parent.parent == tmp_path.resolve()
    assert len(safe_name("é" * 300).encode()) <= 200 and safe_name("a" * 300) != safe_name("a" * 301)


def test_a_task_name_with_dotdot_keeps_the_report_inside_out(tmp_path):
    escape = "/../../../escape"

    def rename(data):
        data["results"][escape] = data["results"].pop("st_parity_id")
        tasks = data["config"]["ssm_model"]["tasks"]
        tasks[escape] = tasks.pop("st_parity_id")

    folder = edited_fixture(tmp_path, rename)
    out = tmp_path / "a" / "b" / "report"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents and folder not in p.parents]
    assert not outside, outside
    assert (out / safe_name(f"acc_vs_budget_{escape}.png")).is_file()  # drawn, under a safe name


def small_spec(*checkpoints, **kw) -> SweepSpec:
    base = dict(checkpoints=tuple(checkpoints), tasks=("st_parity_id",), max_iters=(1,), tols=(0.0,),
                metadata={"st_num_docs": 2}, batch_size=8, modes=("simultaneous",))
    return SweepSpec(**{**base, **kw})


def test_a_checkpoint_path_with_dotdot_keeps_the_sweep_inside_out(parity_checkpoints, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(parity_checkpoints["implicit"], ckpt)
    (ckpt / "sub").mkdir()
    out = tmp_path / "deep" / "out"
    outcome = run_sweep(small_spec(ckpt / "sub" / ".."), out, progress=False)
    assert not outcome.failed and [j.label for j in outcome.jobs] == ["ckpt"]  # the folder's own name
    written = [p for p in tmp_path.rglob("*") if p.is_file() and ckpt not in p.parents]
    assert written and all(out in p.parents for p in written), written
    assert (out / "ckpt" / outcome.jobs[0].key / "greedy.jsonl").is_file()
    job = Job(ckpt, "..", "implicit", "hash", ("st_parity_id",), None)
    assert out in job.dir(out).resolve().parents  # a label from data cannot climb out either


def test_record_greedy_on_a_full_disk_is_one_line(parity_checkpoints, tmp_path, capsys, monkeypatch):
    from implicit_ssm_eval.model_adapters.adapter import greedy_log
    from implicit_ssm_eval.model_adapters.errors import OutputError, one_line_error

    def full(path, mode="r", *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(greedy_log, "open", full, raising=False)
    out = tmp_path / "s"
    line = one_line(capsys, ["sweep", str(parity_checkpoints["implicit"]), "--tasks", "st_parity_id", "--max-iter",
                             "1", "--tol", "0", "--modes", "simultaneous", "--num-docs", "2", "--out", str(out),
                             "--quiet"], 1)
    assert "record_greedy: cannot write" in line and "greedy.jsonl.tmp: No space left on device" in line, line
    assert not temporaries(out) and not list(out.rglob("results.json"))
    error = OutputError("record_greedy: cannot write x: No space left on device")
    assert one_line_error(error) is error and classify(error)[0] == 1  # the stock lm_eval CLI: one line too


def test_no_plots_writes_the_tables_and_leaderboard_only(tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(FIXTURE), "--out", str(out), "--no-plots"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.md", "results.csv", "results.json", "timings.md"]


# -- a terminated sweep ----------------------------------------------------------------------------------------------
def terminate_once_a_job_started(sweep: subprocess.Popen, out: Path, stderr: Path) -> None:
    started = time.monotonic()
    # a worker took a group: a claim file (not spec.json, nor the hidden temporary spec.json is written through)
    while not [p for p in (out / ".claims").glob("*") if p.name != "spec.json" and not p.name.startswith(".")]:
        assert sweep.poll() is None and time.monotonic() - started < 300, stderr.read_text()
        time.sleep(0.02)
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=120) == 128 + signal.SIGTERM, stderr.read_text()


def group_members(pgid: int) -> list[str]:
    """The command lines of the processes in process group pgid (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # state, ppid, pgrp
                command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")[:200]
                members.append(f"{fields[0]} {command!r}")
    return members


def group_gone(pgid: int, grace_s: float = 10.0) -> bool:
    """Whether process group pgid is empty within grace_s. The sweep waits for its workers, so none may be left
    (the caller checks that at once); a helper a worker started (multiprocessing's resource tracker, say) exits on
    its own once the worker has gone, a moment later, which on a loaded machine can come after the sweep's exit."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


class StandInWorker:
    """A worker process as stop_workers sees it: running until asked to stop, then stopped and waited for."""

    stopped = waited = False

    def poll(self):
        return None if not self.stopped else -signal.SIGTERM

    def terminate(self):
        self.stopped = True

    def wait(self, timeout=None):
        self.waited = True
        return -signal.SIGTERM


def test_a_signal_while_workers_start_stops_those_started(parity_checkpoints, tmp_path, monkeypatch):
    """SIGTERM between starting worker 0 and worker 1: worker 0 is stopped and waited for, no claims are left, and
    the sweep ends as terminated."""
    from implicit_ssm_eval.harness import sweep

    started = []

    class Worker(StandInWorker):
        def __init__(self, argv, env):
            if started:
                raise sweep.Terminated("signal 15")
            self.stopped = self.waited = False
            started.append(self)

    monkeypatch.setattr(sweep.subprocess, "Popen", Worker)
    spec = SweepSpec(checkpoints=(str(parity_checkpoints["implicit"]),), tasks=("st_parity_id",), max_iters=(1,),
                     tols=(0.0,), modes=("simultaneous",), workers=2)
    with pytest.raises(sweep.Terminated):
        run_sweep(spec, tmp_path / "s", progress=False)
    assert len(started) == 1 and started[0].stopped and started[0].waited
    assert not (tmp_path / "s" / ".claims").exists()


def _sleep_until_killed(ready) -> None:
    ready.set()
    time.sleep(60)


def test_a_process_forked_under_the_sweeps_handler_dies_on_sigterm():
    """lm-eval computes bootstrap standard errors in a multiprocessing pool forked from the sweep. Its workers used to
    inherit the sweep's SIGTERM handler, so Pool.terminate() could leave one alive, blocked on the queue's lock, and
    wait for it forever (the README's main job hung so, 20 minutes at cad1dac; a loop of pools under the handler
    hung within 200-320 pools, twice of two). A child forked under the handler gets SIGTERM's default back: killed
    by the signal, not ending through the handler's exception (exit status 1)."""
    import multiprocessing

    from implicit_ssm_eval.harness import sweep

    fork = multiprocessing.get_context("fork")
    with sweep.terminate_as_interrupt():
        ready = fork.Event()
        child = fork.Process(target=_sleep_until_killed, args=(ready,))
        child.start()
        assert ready.wait(30)
        child.terminate()
        child.join(30)
    assert child.exitcode == -signal.SIGTERM
    assert sweep._HANDLED["by"] is None  # outside a sweep, forked children keep whatever the parent set


def test_a_signal_inside_the_start_of_a_worker_still_stops_that_worker(parity_checkpoints, tmp_path, monkeypatch):
    """SIGTERM delivered while Popen is starting worker 1, after its process exists and before Popen returns (as
    under a loaded machine): that worker too is stopped and waited for. Before the fix, Terminated was raised inside
    Popen, the worker never reached the list that stop_workers stops, and it outlived the sweep."""
    from implicit_ssm_eval.harness import sweep

    started = []

    class Worker(StandInWorker):
        def __init__(self, argv, env):
            self.stopped = self.waited = False
            started.append(self)  # the process exists
            if len(started) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before __init__ returns
                time.sleep(0.05)

    monkeypatch.setattr(sweep.subprocess, "Popen", Worker)
    spec = SweepSpec(checkpoints=(str(parity_checkpoints["implicit"]),), tasks=("st_parity_id",), max_iters=(1,),
                     tols=(0.0,), modes=("simultaneous",), workers=2)
    with pytest.raises(sweep.Terminated):
        run_sweep(spec, tmp_path / "s", progress=False)
    assert len(started) == 2 and all(w.stopped and w.waited for w in started)


def test_sigterm_stops_the_whole_sweep_and_a_rerun_completes(parity_checkpoints, tmp_path):
    """`sweep --workers 2` terminated once its first job has started: no process of it survives, nothing in --out
    changes afterwards, only whole results are there, and a rerun completes the sweep."""
    out = tmp_path / "s"
    args = [sys.executable, "-m", "implicit_ssm_eval.harness", "sweep", str(parity_checkpoints["implicit"]),
            str(parity_checkpoints["explicit"]), "--workers", "2", "--max-iter", "1", "2", "4", "--tol", "0", "0.05",
            "--modes", "simultaneous", "sequential", "--tasks", "st_parity_id", "--num-docs", "4", "--batch-size",
            "8", "--out", str(out), "--quiet"]
    with (tmp_path / "stderr").open("w") as log:
        sweep = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        terminate_once_a_job_started(sweep, out, tmp_path / "stderr")
        workers = [m for m in group_members(sweep.pid) if "--worker-index" in m]
        assert not workers, f"workers outlived the sweep: {workers}"  # it waits for them before it exits
        assert group_gone(sweep.pid), f"still running in the sweep's process group: {group_members(sweep.pid)}"
    finally:  # a failing run leaves no process behind either
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)
    snapshot = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")}
    time.sleep(3)
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")} == snapshot
    assert not temporaries(out) and not (out / ".claims").exists()
    done = list(out.glob("*/*/results.json"))
    assert len(done) < 9 and all(json.loads(p.read_text())["results"] for p in done)
    rerun = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(list(out.glob("*/*/results.json"))) == 9 and f"{9 - len(done)} of 9 jobs run" in rerun.stderr
