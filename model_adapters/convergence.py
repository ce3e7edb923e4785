"""Convergence statistics over a whole evaluation run, for the results JSON.

One entry per solved (sequence, piece): per sequence in simultaneous mode, per token in sequential mode, per block
in blockwise mode (reading.py). Each entry also counts its tokens, so iterations per token (the compute each token
cost) is reported for every mode alike. What the results say is read back, without torch, by summaries.py.
"""

from __future__ import annotations

import torch

from .reading import ReadStats


class ConvergenceLog:
    def __init__(self) -> None:
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
