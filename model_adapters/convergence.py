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
        self._parts: list[ReadStats] = []

    def add(self, stats: ReadStats) -> None:
        """Keeps copies on the device, masked only at summary(): logging a decoding step costs no host sync."""
        self._parts.append(ReadStats(*(getattr(stats, f).detach().clone() for f in FIELDS)))

    def __getstate__(self):  # gathered across ranks as CPU tensors
        return {"_parts": [ReadStats(*(getattr(p, f).cpu() for f in FIELDS)) for p in self._parts]}

    def extend(self, other: ConvergenceLog) -> None:
        self._parts.extend(other._parts)

    def __len__(self) -> int:
        return sum(int(p.present.sum()) for p in self._parts)

    def summary(self, max_iter: int) -> dict:
        present = [p.present.cpu().flatten() for p in self._parts]
        if not present or not torch.cat(present).any():
            return {"count": 0}
        its, res, conv, tokens = (_cat([getattr(p, f).cpu().flatten()[m] for p, m in zip(self._parts, present)])
                                  for f in FIELDS)
        its, tokens = its.double(), tokens.double()
        ordered = its.sort().values  # (torch.quantile refuses inputs over 16M entries)
        return {
            "count": int(its.numel()),
            "tokens": int(tokens.sum()),
            "iterations_mean": float(its.mean()),
            "iterations_per_token": float((its * tokens).sum() / tokens.sum()),
            "iterations_p50": float(ordered[(its.numel() - 1) // 2]),
            "iterations_p90": float(ordered[int(0.9 * (its.numel() - 1))]),
            "iterations_max": int(its.max()),
            "fraction_hit_max_iter_unconverged": float(((its >= max_iter) & ~conv).double().mean()),
            "fraction_converged": float(conv.double().mean()),
            "residual_mean": float(res.double().mean()),
        }


FIELDS = ("iterations", "residual", "converged", "tokens")


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts)


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
