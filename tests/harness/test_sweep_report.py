"""Budget sweeps (anytime = separate runs, keyed on settings, resumable after kill -9, failures recorded), the tidy
report of any results, plots and the leaderboard (checked against the results files, and as a snapshot)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from implicit_ssm_eval.harness import plots, report
from implicit_ssm_eval.harness.leaderboard import budget_label
from implicit_ssm_eval.harness.report_cli import render_report
from implicit_ssm_eval.harness.results import load_runs
from implicit_ssm_eval.harness.sweep import SweepSpec, anytime_groups, plan, run_sweep
from implicit_ssm_eval.harness.sweep_cli import spec_from, sweep_parser
from implicit_ssm_eval.model_adapters.config import ConfigError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "sweep_small"
SNAPSHOT_COMMAND = "implicit-eval report tests/fixtures/sweep_small --out /tmp/r"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def spec(checkpoints, **kw) -> SweepSpec:
    base = dict(checkpoints=tuple(checkpoints), tasks=("st_parity_id", "st_parity_ood2x"), max_iters=(1, 2, 4),
                tols=(0.0, 0.05), adaptive_max_iter=32, metadata={"st_num_docs": 4}, batch_size=8,
                modes=("simultaneous",))
    return SweepSpec(**{**base, **kw})


def metrics(sweep_dir: Path) -> dict:
    out = {}
    for run in load_runs([sweep_dir]).runs:
        key = (run.checkpoint, json.dumps(run.budget, sort_keys=True))
        out[key] = {task: {k: v for k, v in m.items() if k.startswith(("acc,", "scaled_acc,"))}
                    for task, m in run.results.items()}
    return out


def test_plan_and_anytime_groups(parity_checkpoints):
    s = spec(parity_checkpoints.values(), tasks=("auto",), modes=("simultaneous", "sequential", "blockwise"),
             block_sizes=(4, 8))
    jobs = plan(s)
    keys = sorted(j.key for j in jobs if j.kind == "implicit")
    assert len(keys) == 16 and "k4_tol0_tau0.8_simultaneous_fixed_point" in keys
    assert "k32_tol0.05_tau0.8_blockwise8_fixed_point" in keys and "k2_tol0_tau0.8_blockwise4_fixed_point" in keys
    assert {j.tasks for j in jobs} == {("st_parity",)}  # 'auto': the training task's group, from the registry
    groups = anytime_groups(jobs, s)
    assert sorted(len(g) for g in groups) == [1] * 14 + [3]  # k = 1, 2, 4 simultaneous share one run


def test_anytime_sweep_equals_separate_runs(parity_checkpoints, tmp_path):
    ckpts = [parity_checkpoints["implicit"]]
    run_sweep(spec(ckpts, tols=(0.0,)), tmp_path / "anytime", progress=False)
    run_sweep(spec(ckpts, tols=(0.0,), anytime=False), tmp_path / "separate", progress=False)
    a, b = metrics(tmp_path / "anytime"), metrics(tmp_path / "separate")
    assert a.keys() == b.keys() and len(a) == 3
    for key in a:
        assert a[key] == b[key], key
    runs = load_runs([tmp_path / "anytime"]).runs
    replayed = [r for r in runs if r.info.get("anytime_of")]
    assert len(replayed) == 2
    for run in replayed:
        k = run.budget["max_iter"]
        assert run.info["anytime_of"] == 4 and run.info["convergence"]["scoring"]["iterations_mean"] == k
        assert run.info["tasks"]["st_parity_id"]["convergence"]["iterations_max"] == k


LAUNCHER = """
import os, signal, sys
import implicit_ssm_eval.harness.sweep as sweep
original, saved = sweep.save_job, []
def save_then_die(*args, **kwargs):
    original(*args, **kwargs)
    saved.append(1)
    if len(saved) == 2:  # after the second job's results are written: kill -9, mid-sweep by construction
        os.kill(os.getpid(), signal.SIGKILL)
sweep.save_job = save_then_die
from implicit_ssm_eval.harness.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sweep_resumes_after_kill_9(parity_checkpoints, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", str(parity_checkpoints["implicit"]), str(parity_checkpoints["explicit"]), "--max-iter", "2",
            "--tol", "0", "0.05", "--adaptive-max-iter", "16", "--modes", "simultaneous", "sequential", "--tasks",
            "st_parity_id", "--num-docs", "4", "--out", str(out), "--quiet", "--batch-size", "8"]
    killed = subprocess.run([sys.executable, "-c", LAUNCHER, *args], env=ENV, capture_output=True, timeout=600)
    assert killed.returncode == -9
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.json")}
    assert len(done) == 2 and not list(out.rglob("*.tmp"))
    for path in done:
        json.loads(path.read_text())  # every result present is complete
    finished = subprocess.run([sys.executable, "-m", "implicit_ssm_eval.harness", *args], env=ENV, capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(list(out.glob("*/*/results.json"))) == 5  # 2 modes x (1 fixed + 1 adaptive) + explicit
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # nothing done is redone
    assert "# Leaderboard" in finished.stdout and "## st_parity" in finished.stdout
    assert "3 of 5 jobs run, 2 already done" in finished.stderr


def test_a_rerun_skips_same_settings_recomputes_changed_ones_and_truncated_files(parity_checkpoints, tmp_path):
    ckpts, out = [parity_checkpoints["implicit"]], tmp_path / "s"
    first = run_sweep(spec(ckpts, tols=(0.05,)), out, progress=False)
    assert len(first.ran) == 1 and not first.skipped
    again = run_sweep(spec(ckpts, tols=(0.05,)), out, progress=False)
    assert not again.ran and len(again.skipped) == 1
    changed = run_sweep(spec(ckpts, tols=(0.05,), metadata={"st_num_docs": 5}), out, progress=False)
    assert len(changed.ran) == 1
    (run,) = load_runs([out]).runs
    assert run.info["tasks"]["st_parity_id"]["documents"] == 5  # the results are the new settings' numbers
    results = next(out.glob("*/*/results.json"))
    results.write_text(results.read_text()[:100])  # a truncated file
    redone = run_sweep(spec(ckpts, tols=(0.05,), metadata={"st_num_docs": 5}), out, progress=False)
    assert len(redone.ran) == 1 and json.loads(results.read_text())["results"]


def test_checkpoints_sharing_a_folder_name_keep_their_own_results(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_parity_checkpoints

    a = make_parity_checkpoints(tmp_path / "a")["implicit"]
    b = make_parity_checkpoints(tmp_path / "b", seed=1)["implicit"]
    outcome = run_sweep(spec([a, b], tols=(0.05,)), tmp_path / "s", progress=False)
    assert len(outcome.ran) == 2 and len({j.label for j in outcome.jobs}) == 2
    runs = load_runs([tmp_path / "s"]).runs
    assert len({r.checkpoint for r in runs}) == 2 and all(r.checkpoint.startswith("parity-implicit") for r in runs)


def nan_checkpoint(root: Path) -> Path:
    from implicit_ssm_eval.model_adapters.formats import save
    from implicit_ssm_eval.model_adapters.testing import tiny_model
    from implicit_ssm_eval.tasks.state_tracking import write_tokenizer

    model = tiny_model("implicit", vocab_size=7, pad_vocab_size_multiple=8)
    model.layers[0].mixer.out_proj.weight.data.fill_(float("nan"))
    return save(model, root / "broken", tokenizer_path=write_tokenizer("parity", root / "tok.json"),
                eos_token="<eos>", training={"config": {"task": "parity"}})


def test_a_failing_job_is_recorded_and_the_other_jobs_go_on(parity_checkpoints, tmp_path):
    broken = nan_checkpoint(tmp_path)
    out = tmp_path / "s"
    outcome = run_sweep(spec([broken, parity_checkpoints["explicit"]], tols=(0.05,)), out, progress=False)
    assert len(outcome.failed) == 1 and len(outcome.ran) == 1
    failed = json.loads(next(out.glob("broken/*/failed.json")).read_text())
    assert "NonFiniteError" in failed["error"] and not list(out.glob("broken/*/results.json"))
    loaded = load_runs([out])
    text = render_report(loaded, tmp_path / "report", "cmd", {})
    assert "## Failed jobs" in text and "NonFiniteError" in text
    assert re.search(r"\| broken +\| implicit \| tol=0.05 \(≤32\), simultaneous \| failed", text)
    cli = subprocess.run([sys.executable, "-m", "implicit_ssm_eval.harness", "sweep", str(broken), "--tasks",
                          "st_parity_id", "--max-iter", "2", "--tol", "0", "--modes", "simultaneous", "--num-docs",
                          "2", "--out", str(tmp_path / "cli"), "--quiet"], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 1 and "1 FAILED" in cli.stderr


def test_workers_take_the_whole_machine_or_nothing(parity_checkpoints):
    with pytest.raises(ConfigError, match=r"--workers 2 puts worker i on GPU i: use --device cuda \(or cpu\), "
                                          r"got --device cuda:1"):
        spec_from(sweep_parser().parse_args([str(parity_checkpoints["implicit"]), "--workers", "2", "--device",
                                             "cuda:1"]))
    assert spec_from(sweep_parser().parse_args([str(parity_checkpoints["implicit"]), "--device", "cuda:1"])).device \
        == "cuda:1"  # one process may take any GPU


@pytest.mark.parametrize("mask, device, workers, expected", [
    ("0,1,2", "cuda", "auto", 3),  # auto: every visible GPU
    ("4,6", "cuda", "2", 2),
    ("", "cuda", "auto", 1),  # none visible: one process, whose jobs fail with the device's own message
    ("0,1", "cpu", "auto", 1),
    ("0,1", "cuda:1", "auto", 1),  # one named GPU: one process
    ("0,1", "cpu", "3", 3),
])
def test_workers_default_to_every_visible_gpu(parity_checkpoints, monkeypatch, mask, device, workers, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)
    args = sweep_parser().parse_args([str(parity_checkpoints["implicit"]), "--device", device, "--workers", workers])
    assert spec_from(args).workers == expected


def test_workers_beyond_the_visible_gpus_are_refused(parity_checkpoints, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a1,GPU-b2")
    args = sweep_parser().parse_args([str(parity_checkpoints["implicit"]), "--device", "cuda", "--workers", "3"])
    with pytest.raises(ConfigError, match=r"--workers 3 needs 3 GPUs, one each, but 2 are visible \(GPU-a1,GPU-b2\): "
                                          r"use --workers 2 or --workers auto"):
        spec_from(args)
    with pytest.raises(SystemExit):
        sweep_parser().parse_args(["--workers", "two"])
    assert "must be 'auto' or an integer >= 1, got two" in capsys.readouterr().err


def test_tau_is_honoured_or_refused_never_ignored(parity_checkpoints):
    with pytest.raises(ConfigError, match=r"--tau must be a number in \(0, 1\], got 0"):
        spec_from(sweep_parser().parse_args([str(parity_checkpoints["implicit"]), "--tau", "0"]))
    s = spec_from(sweep_parser().parse_args([str(parity_checkpoints["implicit"]), "--tau", "0.5", "--tol", "0.05"]))
    assert {j.budget.tau for j in plan(s)} == {0.5}


def test_report_rows_carry_the_documents_fields():
    rows = report.tidy_rows(load_runs([FIXTURE]).runs)
    assert {"checkpoint", "bucket", "length_min", "length_max", "max_iter", "metric", "value", "iters_mean"} <= \
        rows[0].keys()
    buckets = {(r["bucket"], r["length_max"], r["multiplier"], r["shift"]) for r in rows if r["group"] == "st_parity"}
    assert {("ood2x", 80, 2, None), ("ood8x", 320, 8, None), ("ones10", 80, None, "10% '1'")} <= buckets
    assert all(r["family"] == "state_tracking" for r in rows)
    assert all(len(r["data_hash"]) == 16 for r in rows if r["bucket"])  # leaf tasks (group averages have none)
    blockwise = [r for r in rows if r["mode"] == "blockwise"]
    assert blockwise and {r["block_size"] for r in blockwise} == {8}


def leaderboard_cell(text: str, checkpoint: str, label: str, column: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("| model")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(line for line in text.splitlines()
               if re.match(rf"\| {re.escape(checkpoint)} +\| \w+ +\| {re.escape(label)} +\|", line))
    return [c.strip() for c in row.strip("|").split("|")][header.index(column)]


def test_leaderboard_cells_are_the_accuracies_in_the_results_files(tmp_path):
    """Independent of the snapshot: every length-bucket cell is read back and compared with the results JSONs."""
    text = render_report(load_runs([FIXTURE]), tmp_path, SNAPSHOT_COMMAND, {})
    headings = {"st_parity_id": "id (11-39)", "st_parity_ood2x": "2x (80)", "st_parity_ood8x": "8x (320)"}
    checked = 0
    for path in FIXTURE.glob("*/*/results.json"):
        data = json.loads(path.read_text())
        info = data["config"]["ssm_model"]
        row = {"kind": info["kind"], **(info.get("budget") or {})}
        row.setdefault("block_size", None)
        for task, heading in headings.items():
            value = data["results"][task]["acc,none"]
            cell = leaderboard_cell(text, Path(info["checkpoint"]).name, budget_label(row), heading)
            assert cell.startswith(f"{value:.3f}"), (path, task, cell)
            checked += 1
    assert checked == 13 * 3


def test_leaderboard_snapshot(tmp_path):
    """The committed snapshot is what the code generates from the fixed results (see the fixture's README)."""
    text = render_report(load_runs([FIXTURE]), tmp_path, SNAPSHOT_COMMAND, json.loads((FIXTURE / "sweep.json")
                                                                                     .read_text()))
    assert text == (FIXTURE / "leaderboard.md").read_text()


def test_agreement_with_the_sequential_reading():
    agreement = report.mode_agreement(load_runs([FIXTURE]).runs)
    assert {a["reading"] for a in agreement} == {"simultaneous", "blockwise 8"}
    assert all(0.0 <= a["agreement"] <= 1.0 and a["positions"] > 0 for a in agreement)
    assert {a["seed"] for a in agreement} == {0}  # the fixture's parity data: the default seed
    k1 = [a for a in agreement if a["max_iter"] == 1 and not a["tol"]]
    assert len(k1) == 2 and all(a["agreement"] == 1.0 for a in k1)  # one f from z = 0: the same computation


def test_plot_series_are_the_rows_and_styles_tell_models_apart():
    rows = [r for r in report.tidy_rows(load_runs([FIXTURE]).runs) if r["metric"] == "acc"]
    ood2x = [r for r in rows if r["task"] == "st_parity_ood2x"]
    colors = {"parity-implicit": "tab:blue", "parity-explicit": "tab:orange", "other-explicit": "tab:green"}
    other = [{**r, "checkpoint": "other-explicit"} for r in ood2x if r["kind"] == "explicit"]
    fixed, adaptive, explicit = plots.budget_series(ood2x + other, colors)
    seq = next(s for s in fixed if s.label == "parity-implicit, sequential")
    expected = sorted((r["max_iter"], r["value"]) for r in ood2x if r["mode"] == "sequential" and not r["tol"])
    assert list(zip(seq.x, seq.y)) == expected
    assert len({(s.linestyle, s.marker) for s in fixed}) == 3  # one style per reading
    assert len({s.color for s in explicit}) == 2  # two explicit baselines are not the same black line
    assert len(adaptive) == 3 and all(s.x[0] > 1 for s in adaptive)
    buckets = ["id", "ood2x", "ood4x", "ood8x"]
    series = plots.length_series([r for r in rows if r["bucket"] in buckets and r["kind"] == "explicit"] * 1 +
                                 [{**r, "checkpoint": "twin"} for r in rows if r["bucket"] in buckets
                                  and r["kind"] == "explicit"], buckets, {**colors, "twin": "tab:red"})
    assert series[0].y == series[1].y and series[0].x != series[1].x  # coinciding curves are spread apart


def test_every_figure_keeps_its_legend_outside_the_data(tmp_path):
    render_report(load_runs([FIXTURE]), tmp_path, "cmd", {})
    figures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert figures == ["acc_vs_budget_st_parity.png", "acc_vs_length_st_parity.png", "fronts_st_parity.png",
                       "iterations_adaptive.png", "mode_agreement.png", "robustness_st_parity.png"]
    plt = plots.pyplot()
    rows = report.tidy_rows(load_runs([FIXTURE]).runs)
    original = plots.save_figure
    for draw in (plots.accuracy_vs_budget, plots.accuracy_vs_length, plots.robustness, plots.fronts):
        captured = []
        plots._save = lambda fig, path, captured=captured: captured.append(fig) or original(fig, path)
        try:
            draw(rows, tmp_path / "again")
        finally:
            plots._save = original
        for fig in captured:
            fig.canvas.draw()
            legend = next(a.get_legend() for a in fig.axes if a.get_legend())
            box = legend.get_window_extent()
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent()), (draw.__name__, ax.get_title())
            plt.close(fig)


def test_two_workers_compute_what_one_does(parity_checkpoints, tmp_path):
    """--workers N: processes (one per GPU on CUDA) take whole groups of jobs from a shared pool."""
    ckpts = list(parity_checkpoints.values())
    one = run_sweep(spec(ckpts, tols=(0.0, 0.05), modes=("simultaneous", "sequential")), tmp_path / "one",
                    progress=False)
    two = run_sweep(spec(ckpts, tols=(0.0, 0.05), modes=("simultaneous", "sequential"), workers=2), tmp_path / "two",
                    progress=False)
    assert len(one.ran) == len(two.ran) == 9 and not two.failed
    assert metrics(tmp_path / "one") == metrics(tmp_path / "two")
    assert not (tmp_path / "two" / ".claims").exists()
    again = run_sweep(spec(ckpts, tols=(0.0, 0.05), modes=("simultaneous", "sequential"), workers=2),
                      tmp_path / "two", progress=False)
    assert not again.ran and len(again.skipped) == 9  # resumable as ever


class FakeWorker:
    """subprocess.Popen for a sweep worker that does nothing: records how it was started; worker 0 fails."""

    def __init__(self, log, cmd, env):
        self.index = int(cmd[cmd.index("--worker-index") + 1])
        log.append(("spawn", env.get("CUDA_VISIBLE_DEVICES"), self.index))
        self.log = log

    def wait(self, timeout=None):
        return 1 if self.index == 0 else 0

    def poll(self):
        return None

    def terminate(self):
        self.log.append(("terminate", self.index))

    def kill(self):
        self.log.append(("kill", self.index))


def test_workers_start_up_while_the_sweep_plans(parity_checkpoints, tmp_path, monkeypatch):
    """--workers N: the N processes are started first (imports, the CUDA context and their own plan take seconds),
    worker i on GPU i; a job no worker finished is a failure that names their exit codes."""
    from implicit_ssm_eval.harness import sweep

    log = []
    planned = sweep.plan
    monkeypatch.setattr(sweep, "plan", lambda s: log.append(("plan",)) or planned(s))
    monkeypatch.setattr(sweep, "git_commit", lambda: "test")
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda cmd, env: FakeWorker(log, cmd, env))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # the GPUs this sweep was given
    outcome = run_sweep(spec(parity_checkpoints.values(), device="cuda", workers=2), tmp_path / "out",
                        progress=False)
    assert log == [("spawn", "4", 0), ("spawn", "6", 1), ("plan",)]
    assert outcome.failed and "worker exit codes [1, 0]" in next(iter(outcome.failed.values()))
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["workers_spawned"] > 0  # for the timeline
    assert not (tmp_path / "out" / ".claims").exists()
    log.clear()
    run_sweep(spec(parity_checkpoints.values(), workers=2), tmp_path / "cpu", progress=False)
    assert log[:2] == [("spawn", "4,6", 0), ("spawn", "4,6", 1)]  # the CPU: no GPU to pick, the mask as it was


def test_a_sweep_that_cannot_plan_stops_its_workers(parity_checkpoints, tmp_path, monkeypatch):
    from implicit_ssm_eval.harness import sweep

    log = []

    def bad(s):
        raise ConfigError("no such task")

    monkeypatch.setattr(sweep, "plan", bad)
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda cmd, env: FakeWorker(log, cmd, env))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ConfigError, match="no such task"):
        run_sweep(spec(parity_checkpoints.values(), device="cuda", workers=2), tmp_path / "out", progress=False)
    assert log[2:] == [("terminate", 0), ("terminate", 1)]  # asked to stop, and waited for


def test_the_costliest_groups_are_run_first(parity_checkpoints, tmp_path, monkeypatch):
    """Workers claim groups in the sweep's order: the longest first, so that they end close together."""
    from implicit_ssm_eval.harness import sweep
    from implicit_ssm_eval.harness.sweep import Job, estimated_cost

    order = []
    monkeypatch.setattr(sweep, "run_group", lambda group, *a: order.append([j.key for j in group]) or [])
    s = spec([parity_checkpoints["implicit"]], max_iters=(1, 4), tols=(0.0, 0.05),
             modes=("simultaneous", "sequential", "blockwise"), block_sizes=(8,))
    run_sweep(s, tmp_path / "out", progress=False)
    assert order[:3] == [["k32_tol0.05_tau0.8_sequential_fixed_point"], ["k4_tol0_tau0.8_sequential_fixed_point"],
                         ["k32_tol0.05_tau0.8_blockwise8_fixed_point"]]
    assert order[-1] == ["k1_tol0_tau0.8_blockwise8_fixed_point"]
    sizes = {}
    for name, size in (("big", 3000), ("small", 1000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"0" * size)
        sizes[name] = estimated_cost([Job(tmp_path / name, name, "explicit", "hash", ("st_parity",), None)])
    assert sizes["big"] == 3 * sizes["small"]  # a larger checkpoint costs more
