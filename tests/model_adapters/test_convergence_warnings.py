"""An unconverged evaluation is never a plain score: warned on the console, marked in the printed block and in the
leaderboard (an oscillating model end to end: tests/lm_eval_adapters/test_adapters.py)."""

import pytest
import torch

from implicit_ssm_eval.harness.leaderboard import UNCONVERGED_MARK, cell
from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.convergence import ConvergenceLog
from implicit_ssm_eval.model_adapters.reading import ReadStats
from implicit_ssm_eval.model_adapters.summaries import convergence_block, unconverged_tasks


def info(share: float, tol: float = 0.01) -> dict:
    summary = {"count": 10, "iterations_mean": 30.0, "iterations_p90": 32, "iterations_per_token": 30.0,
               "fraction_hit_max_iter_unconverged": share}
    return {"kind": "implicit", "unit": "token", "budget": Budget(max_iter=32, tol=tol, mode="sequential").to_dict(),
            "convergence": {"scoring": summary}, "tasks": {"st_a5_ood8x": {"convergence": summary}}}


def test_the_block_names_the_budget_and_warns_above_the_threshold():
    block = convergence_block(info(0.9))
    assert "max_iter=32, tol=0.01, tau=0.8, fixed_point, sequential (iterations per token)" in block
    assert "| st_a5_ood8x | 30.0 | 32 | 30.0 | 90.0% |" in block
    assert "WARNING: st_a5_ood8x: 90% of its tokens hit max_iter=32 unconverged" in block
    assert "WARNING" not in convergence_block(info(0.05))
    assert unconverged_tasks(info(0.9, tol=0.0)) == {}  # a fixed budget is meant to stop at max_iter


def test_the_leaderboard_marks_unconverged_adaptive_cells():
    row = {"status": "ok", "value": 0.7, "kind": "implicit", "tol": 0.01, "iters_mean": 31.0,
           "fraction_unconverged": 0.9}
    assert cell(row) == f"0.700 (31 it){UNCONVERGED_MARK}"
    assert cell({**row, "fraction_unconverged": 0.0}) == "0.700 (31 it)"


def test_convergence_log_counts_pieces_and_tokens():
    log = ConvergenceLog()
    stats = ReadStats(torch.tensor([[4, 8], [2, 0]]), torch.zeros(2, 2), torch.tensor([[True, False], [True, False]]),
                      torch.tensor([[16, 4], [3, 0]]))
    log.add(stats)
    s = log.summary(8)
    assert s["count"] == 3 and s["tokens"] == 23 and s["iterations_mean"] == pytest.approx(14 / 3)
    assert s["iterations_per_token"] == pytest.approx((4 * 16 + 8 * 4 + 2 * 3) / 23)
    assert s["fraction_hit_max_iter_unconverged"] == pytest.approx(1 / 3)
