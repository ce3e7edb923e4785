"""Convergence statistics over a whole evaluation run, for the results JSON."""

from __future__ import annotations

import torch

from .fixed_point import SolveStats


class ConvergenceLog:
    """Collects per-sequence (simultaneous) or per-token (sequential) solver statistics."""

    def __init__(self):
        self._iterations: list[torch.Tensor] = []
        self._residuals: list[torch.Tensor] = []
        self._converged: list[torch.Tensor] = []

    def add(self, stats: SolveStats, valid: torch.Tensor | None = None) -> None:
        """valid masks entries that are padding (sequential stats of right-padded batches). Copies stay on the
        device until summary(), so logging a decoding step costs no host synchronisation."""
        its, res, conv = stats.iterations, stats.residual, stats.converged
        if valid is not None:
            its, res, conv = its[valid], res[valid], conv[valid]
        self._iterations.append(its.detach().flatten().clone())
        self._residuals.append(res.detach().flatten().double())
        self._converged.append(conv.detach().flatten().clone())

    def __getstate__(self):  # gathered across ranks as CPU tensors
        return {k: [t.cpu() for t in v] for k, v in self.__dict__.items()}

    def extend(self, other: ConvergenceLog) -> None:
        self._iterations += other._iterations
        self._residuals += other._residuals
        self._converged += other._converged

    def __len__(self) -> int:
        return sum(t.numel() for t in self._iterations)

    def summary(self, max_iter: int) -> dict:
        if not len(self):
            return {"count": 0}
        its = torch.cat([t.cpu() for t in self._iterations]).double()
        converged = torch.cat([t.cpu() for t in self._converged])
        return {
            "count": int(its.numel()),
            "iterations_mean": float(its.mean()),
            "iterations_p50": float(its.quantile(0.5)),
            "iterations_p90": float(its.quantile(0.9)),
            "iterations_max": int(its.max()),
            "fraction_hit_max_iter_unconverged": float(((its >= max_iter) & ~converged).double().mean()),
            "fraction_converged": float(converged.double().mean()),
            "residual_mean": float(torch.cat([t.cpu() for t in self._residuals]).mean()),
        }
