"""Per-sample compute: a stock `lm_eval --log_samples` run of the implicit adapter writes, in every sample, what its
requests cost (iterations per piece, final residual, convergence, the reading and the exit criterion), the same
numbers the model gives for those tokens run alone; thresholds read off one trajectory through lm-eval equal runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.formats import load_checkpoint

TASKS = Path(__file__).parent / "tasks"
ROOT = Path(__file__).parents[2]
# The worktree's package in the child, so that the lm_eval process runs this code (the venv's .pth imports the hook).
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(ROOT)}
LM_EVAL = shutil.which("lm_eval") or str(Path(sys.executable).parent / "lm_eval")  # the venv's, PATH or not
BUDGET = dict(max_iter=8, tau=0.8, tol=1e-4, exit="kl", mode="sequential")


def samples_of(folder: Path, task: str) -> list[dict]:
    files = sorted(folder.rglob(f"samples_{task}_*.jsonl"))
    assert files, f"no samples of {task} in {folder}"
    return [json.loads(line) for line in files[-1].read_text().splitlines()]


@pytest.mark.slow
def test_stock_cli_log_samples_carry_each_requests_compute(checkpoints, tmp_path):
    args = ",".join(f"{k}={v}" for k, v in BUDGET.items())
    out = subprocess.run([LM_EVAL, "--model", "implicit_ssm", "--model_args",
                          f"pretrained={checkpoints['implicit']},{args}", "--tasks", "tiny_ll,tiny_roll",
                          "--include_path", str(TASKS), "--output_path", str(tmp_path), "--log_samples",
                          "--limit", "6", "--device", "cpu"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = load_checkpoint(str(checkpoints["implicit"]))
    budget = Budget(**BUDGET)
    for sample in samples_of(tmp_path, "tiny_ll"):
        compute = sample["ssm_compute"]
        assert (compute["reading"], compute["exit"], compute["tol"], compute["max_iter"]) == \
               ("sequential", "kl", 1e-4, 8)
        (request,) = compute["requests"]
        ids = torch.tensor([ckpt.tokenizer.encode(sample["doc"]["text"])])  # the context: what the model reads
        alone = ckpt.model(ids, budget).stats
        assert request["iterations"] == alone.iterations[0].tolist()  # one piece per token, sequential
        assert request["converged"] == alone.converged[0].tolist()
        assert request["residual"] == pytest.approx(alone.residual[0].tolist(), rel=1e-5)
        assert request["tokens"] == [1] * ids.shape[1]
        assert compute["iterations_max"] == max(request["iterations"]) <= 8
    rolling = samples_of(tmp_path, "tiny_roll")
    for sample in rolling:
        (request,) = sample["ssm_compute"]["requests"]
        words = len(sample["doc"]["text"].split())
        assert sum(request["tokens"]) == words  # every token of the document, each predicted once
    early = [i for s in rolling for i in s["ssm_compute"]["requests"][0]["iterations"]]
    assert min(early) < 8  # the criterion stops some tokens early (the tiny model is contractive)


def test_results_name_the_criterion_and_the_share_capped(checkpoints, evaluate):
    results = evaluate("implicit_ssm", {"pretrained": str(checkpoints["implicit"]), **BUDGET}, ["tiny_ll"],
                       limit=4)
    info = results["config"]["ssm_model"]
    assert info["exit"] == "kl" and info["budget"]["exit"] == "kl"
    task = info["tasks"]["tiny_ll"]["convergence"]
    for key in ("iterations_mean", "iterations_p50", "iterations_p90", "iterations_max",
                "fraction_hit_max_iter_unconverged"):
        assert key in task, key


def test_exit_thresholds_read_off_one_trajectory_equal_separate_runs_through_lm_eval(checkpoints, evaluate):
    common = {"pretrained": str(checkpoints["implicit"]), "max_iter": 10}
    run = evaluate("implicit_ssm", {**common, "tol": 0, "anytime_exits": "kl:1e-4;argmax:2"},
                   ["tiny_ll"], limit=8, log_samples=False)
    assert set(run["anytime"]) == {"kl=0.0001", "argmax=2"}
    for name, budget in (("kl=0.0001", {"exit": "kl", "tol": 1e-4}), ("argmax=2", {"exit": "argmax", "tol": 2})):
        alone = evaluate("implicit_ssm", {**common, **budget}, ["tiny_ll"], limit=8, log_samples=False)
        point = run["anytime"][name]
        assert point["results"]["tiny_ll"]["acc,none"] == alone["results"]["tiny_ll"]["acc,none"]
        assert run["results"]["tiny_ll"][f"acc@{name},none"] == alone["results"]["tiny_ll"]["acc,none"]
        conv = point["ssm_model"]["tasks"]["tiny_ll"]["convergence"]
        assert conv == pytest.approx(alone["config"]["ssm_model"]["tasks"]["tiny_ll"]["convergence"])
        assert point["ssm_model"]["budget"] == alone["config"]["ssm_model"]["budget"]


def test_simple_evaluate_log_samples_carry_each_requests_compute(checkpoints, evaluate):
    """lm-eval's Python API (the hook wraps its evaluate): every logged sample of tiny_ll has its compute, the
    numbers of the model run alone on the sample's context."""
    budget = {**BUDGET, "tol": 1e-6}  # tokens stop after different numbers of evaluations
    results = evaluate("implicit_ssm", {"pretrained": str(checkpoints["implicit"]), **budget}, ["tiny_ll"], limit=4,
                       log_samples=True)
    ckpt = load_checkpoint(str(checkpoints["implicit"]))
    samples, varied = results["samples"]["tiny_ll"], 0
    assert len(samples) == 4
    for sample in samples:
        compute = sample["ssm_compute"]
        assert (compute["reading"], compute["unit"], compute["exit"], compute["max_iter"]) == \
               ("sequential", "token", "kl", 8)
        (request,) = compute["requests"]
        alone = ckpt.model(torch.tensor([ckpt.tokenizer.encode(sample["doc"]["text"])]), Budget(**budget)).stats
        assert request["iterations"] == alone.iterations[0].tolist()
        assert request["converged"] == alone.converged[0].tolist()
        its = request["iterations"]
        varied += len(set(its)) > 1
        assert compute["iterations_mean"] == pytest.approx(sum(its) / len(its))
        assert compute["iterations_max"] == max(its)
        capped = [i >= 8 and not ok for i, ok in zip(its, request["converged"])]
        assert compute["fraction_hit_max_iter_unconverged"] == pytest.approx(sum(capped) / len(capped))
    assert varied  # so the mean and the max tell apart
