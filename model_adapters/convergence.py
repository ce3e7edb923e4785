"""Convergence statistics over a whole evaluation run, for the results JSON.

One entry per solved (sequence, piece): per sequence in simultaneous mode, per token in sequential mode, per block
in blockwise mode (reading.py). Each entry also counts its tokens, so iterations per token (the compute each token
cost) is reported for every mode alike.
"""

from __future__ import annotations

import torch

from .reading import ReadStats


class ConvergenceLog:
    def __init__(self):
        self._iterations: list[torch.Tensor] = []
        self._residuals: list[torch.Tensor] = []
        self._converged: list[torch.Tensor] = []
        self._tokens: list[torch.Tensor] = []

    def add(self, stats: ReadStats) -> None:
        """Copies stay on the device until summary(), so logging a decoding step costs no host synchronisation."""
        present = stats.present
        self._iterations.append(stats.iterations[present].detach().clone())
        self._residuals.append(stats.residual[present].detach().double())
        self._converged.append(stats.converged[present].detach().clone())
        self._tokens.append(stats.tokens[present].detach().clone())

    def __getstate__(self):  # gathered across ranks as CPU tensors
        return {k: [t.cpu() for t in v] for k, v in self.__dict__.items()}

    def extend(self, other: ConvergenceLog) -> None:
        for name in ("_iterations", "_residuals", "_converged", "_tokens"):
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return sum(t.numel() for t in self._iterations)

    def summary(self, max_iter: int) -> dict:
        if not len(self):
            return {"count": 0}
        its = _cat(self._iterations).double()
        tokens = _cat(self._tokens).double()
        converged = _cat(self._converged)
        return {
            "count": int(its.numel()),
            "tokens": int(tokens.sum()),
            "iterations_mean": float(its.mean()),
            "iterations_per_token": float((its * tokens).sum() / tokens.sum()),
            "iterations_p50": float(its.quantile(0.5)),
            "iterations_p90": float(its.quantile(0.9)),
            "iterations_max": int(its.max()),
            "fraction_hit_max_iter_unconverged": float(((its >= max_iter) & ~converged).double().mean()),
            "fraction_converged": float(converged.double().mean()),
            "residual_mean": float(_cat(self._residuals).mean()),
        }


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.cpu().flatten() for t in parts])


UNCONVERGED_WARN = 0.1  # above this share of pieces at the cap unconverged, a score is flagged as unconverged


def unconverged_tasks(info: dict) -> dict[str, float]:
    """Tasks of a run (config.ssm_model) whose adaptive budget left more than UNCONVERGED_WARN unconverged."""
    if not (info.get("budget") or {}).get("tol"):
        return {}  # a fixed budget (tol 0) is meant to stop at max_iter
    shares = {task: (rec.get("convergence") or {}).get("fraction_hit_max_iter_unconverged", 0.0)
              for task, rec in (info.get("tasks") or {}).items()}
    return {task: share for task, share in shares.items() if share > UNCONVERGED_WARN}


def convergence_block(info: dict) -> str:
    """The short summary printed after lm-eval's results table: the budget, and per task the iterations used and
    the share of pieces that hit max_iter unconverged."""
    budget = info.get("budget")
    if not budget:
        return ""
    unit = info.get("unit", "piece")
    reading = budget["mode"] + (f" {budget['block_size']}" if budget.get("block_size") else "")
    lines = [f"{info.get('kind', '')}_ssm convergence: max_iter={budget['max_iter']}, tol={budget['tol']:g}, "
             f"tau={budget['tau']:g}, {budget['solver']}, {reading} (iterations per {unit})", "",
             "| task | mean iterations | p90 | per token | hit max_iter unconverged |", "|---|---|---|---|---|"]
    overall = (info.get("convergence") or {}).get("scoring") or {}
    for task, summary in [("all", overall)] + [(t, (r.get("convergence") or {})) for t, r in
                                                sorted((info.get("tasks") or {}).items())]:
        if summary.get("count"):
            lines.append(f"| {task} | {summary['iterations_mean']:.1f} | {summary['iterations_p90']:.0f} | "
                         f"{summary['iterations_per_token']:.1f} | "
                         f"{summary['fraction_hit_max_iter_unconverged']:.1%} |")
    for task, share in unconverged_tasks(info).items():
        lines.append(f"WARNING: {task}: {share:.0%} of its {unit}s hit max_iter={budget['max_iter']} unconverged; "
                     "its score is that of an unconverged model (raise max_iter or tol)")
    return "\n".join(lines) + "\n"
