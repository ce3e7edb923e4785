"""Budget sweeps (anytime = separate runs, resumable after kill -9), the tidy report, plots and the
leaderboard (regenerated from fixed results and compared with the committed one)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from implicit_ssm_eval.harness import report
from implicit_ssm_eval.harness.sweep import SweepSpec, anytime_groups, plan, run_sweep
from implicit_ssm_eval.harness.sweep_cli import write_report

FIXTURE = Path(__file__).parents[1] / "fixtures" / "sweep_small"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def spec(checkpoints, **kw) -> SweepSpec:
    base = dict(checkpoints=tuple(checkpoints), max_iters=(1, 2, 4), tols=(0.0, 0.05), adaptive_max_iter=32,
                metadata={"st_num_docs": 4}, batch_size=8, modes=("simultaneous",))
    return SweepSpec(**{**base, **kw})


def metrics(sweep_dir: Path) -> dict:
    out = {}
    for result in report.load_results(sweep_dir):
        key = (result["sweep"]["checkpoint"], result["sweep"]["key"])
        out[key] = {task: {k: v for k, v in m.items() if k.startswith(("acc,", "scaled_acc,"))}
                    for task, m in result["results"].items()}
    return out


def test_plan_and_anytime_groups(parity_checkpoints):
    s = spec(parity_checkpoints.values(), modes=("simultaneous", "sequential"))
    jobs = plan(s)
    keys = sorted(j.key for j in jobs if j.kind == "implicit")
    assert len(keys) == 8 and "k4_tol0_tau0.8_simultaneous_fixed_point" in keys
    assert "k32_tol0.05_tau0.8_sequential_fixed_point" in keys
    assert [j.tasks for j in jobs] == [("st_parity",)] * 9
    groups = anytime_groups(jobs, s)
    assert sorted(len(g) for g in groups) == [1, 1, 1, 1, 1, 1, 3]  # k = 1, 2, 4 simultaneous share one run


def test_anytime_sweep_equals_separate_runs(parity_checkpoints, tmp_path):
    ckpts = [parity_checkpoints["implicit"]]
    run_sweep(spec(ckpts, tols=(0.0,)), tmp_path / "anytime", progress=False)
    run_sweep(spec(ckpts, tols=(0.0,), anytime=False), tmp_path / "separate", progress=False)
    a, b = metrics(tmp_path / "anytime"), metrics(tmp_path / "separate")
    assert a.keys() == b.keys() and len(a) == 3
    for key in a:
        for task in a[key]:
            for name, value in a[key][task].items():
                assert value == pytest.approx(b[key][task][name], abs=1e-12), (key, task, name)
    replayed = [r for r in report.load_results(tmp_path / "anytime") if r["sweep"].get("replay_of")]
    assert len(replayed) == 2
    info = replayed[0]["config"]["ssm_model"]
    assert info["budget"]["max_iter"] == int(replayed[0]["sweep"]["key"][1]) and info["anytime_of"] == 4
    assert info["convergence"]["scoring"]["iterations_mean"] == info["budget"]["max_iter"]


def test_sweep_resumes_after_kill_9(parity_checkpoints, tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "implicit_ssm_eval.harness", "sweep", str(parity_checkpoints["implicit"]),
           str(parity_checkpoints["explicit"]), "--max-iter", "1", "2", "--tol", "0", "0.05", "--adaptive-max-iter",
           "16", "--modes", "simultaneous", "sequential", "--num-docs", "4", "--out", str(out), "--quiet",
           "--batch-size", "8"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("*/*/results.json")):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.json")}
    assert 0 < len(done) < 7, "the kill must land mid-sweep"
    for path in done:
        json.loads(path.read_text())  # every result present is complete
    finished = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    results = list(out.glob("*/*/results.json"))
    assert len(results) == 7  # 2 modes x (2 fixed + 1 adaptive) + explicit
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # nothing done is redone
    assert "# Leaderboard" in finished.stdout and "## st_parity" in finished.stdout


def test_report_table_plots_and_agreement(tmp_path):
    rows = report.tidy_rows(report.load_results(FIXTURE))
    assert {"checkpoint", "bucket", "length", "max_iter", "metric", "value", "iters_mean"} <= rows[0].keys()
    buckets = {(r["bucket"], r["length"]) for r in rows if r["group"] == "st_parity"}
    assert buckets >= {("id", 40), ("ood2x", 80), ("ood4x", 160), ("ood8x", 320)}
    write_report(FIXTURE, tmp_path, command="implicit-eval report tests/fixtures/sweep_small")
    for name in ("results.csv", "results.json", "leaderboard.md", "acc_vs_budget_st_parity.png",
                 "acc_vs_length_st_parity.png", "iterations_adaptive.png", "mode_agreement.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    agreement = report.mode_agreement(report.load_results(FIXTURE))
    assert agreement and all(0.0 <= a["agreement"] <= 1.0 and a["positions"] > 0 for a in agreement)
    k1 = next(a for a in agreement if a["max_iter"] == 1 and not a["tol"])
    assert k1["agreement"] == 1.0  # one evaluation of f from z = 0 is the same computation in both modes


def test_leaderboard_regenerates_exactly(tmp_path):
    """The committed leaderboard of the fixed results is what the code generates (regenerate with the command in
    tests/fixtures/sweep_small/README.md after an intended change)."""
    text = write_report(FIXTURE, tmp_path, command="implicit-eval report tests/fixtures/sweep_small")
    assert text == (FIXTURE / "leaderboard.md").read_text()
