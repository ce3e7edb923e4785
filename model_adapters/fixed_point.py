"""Fixed-point solvers with one contract, swappable through `Budget.solver`.

    solve(f, z0, budget, valid=None, on_eval=None, final=None) -> (z, fz, stats)

f(z_rows, rows) evaluates the map for the batch rows `rows` only, so a sequence that has converged stops
costing compute. Each sequence (batch row) stops on its own residual, measured over its own valid
positions: its result never depends on what else is in the batch. The loop makes at most max_iter - 1
evaluations; the last one is always made by `final` (default: f on every row), whose output `fz` is what
the model reads: the reference code's evaluation semantics for f_thres = max_iter.

Statistics, one entry per batch row:
    iterations  f evaluations made for the row, the final one included (1 .. max_iter)
    residual    ||f(z) - z|| / (1e-6 + ||z||) at the final evaluation's input z
    converged   the row met tol (never when tol == 0)

on_eval(k, fz, rows, residual) sees every evaluation of the loop: k is its number (1-based), fz its output
for `rows`, residual the rows' relative residual at that evaluation's input. With tol = 0 all rows share one
trajectory, and the output of evaluation k is exactly the output a run with max_iter = k would return (the
final evaluation being number max_iter): that is what anytime (multi-budget) evaluation reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import Budget

EPS = 1e-6  # the reference's denominator guard in the relative residual

RowMap = Callable[[Tensor, Tensor], Tensor]
EvalHook = Callable[[int, Tensor, Tensor, Tensor], None]


@dataclass
class SolveStats:
    iterations: Tensor  # (B,) int64
    residual: Tensor  # (B,) float32 (float64 for a float64 model)
    converged: Tensor  # (B,) bool

    @staticmethod
    def cat(parts: list[SolveStats], dim: int = 0) -> SolveStats:
        return SolveStats(*(torch.stack([getattr(p, k) for p in parts], dim) for k in
                            ("iterations", "residual", "converged")))


def expand_valid(valid: Tensor, like: Tensor) -> Tensor:
    """A (B, L) mask broadcast to the shape of `like` (B, L, ...)."""
    return valid.reshape(*valid.shape, *([1] * (like.dim() - valid.dim()))).expand(like.shape)


def row_norms(t: Tensor, valid: Tensor | None) -> Tensor:
    """Frobenius norm of each batch row of t (B, ...), counting only valid (B, L) positions."""
    sq = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32).square()
    if valid is not None:
        sq = sq * expand_valid(valid, t)
    return sq.flatten(1).sum(1).sqrt()


def relative_residual(fz: Tensor, z: Tensor, valid: Tensor | None = None) -> Tensor:
    return row_norms(fz - z, valid) / (EPS + row_norms(z, valid))


def solve(f: RowMap, z0: Tensor, budget: Budget, valid: Tensor | None = None,
          on_eval: EvalHook | None = None, final: Callable[[Tensor], Tensor] | None = None,
          ) -> tuple[Tensor, Tensor, SolveStats]:
    """Run budget.solver from z0 (B, ...). Returns the last iterate z, fz = final(z), and the stats."""
    step = _anderson if budget.solver == "anderson" else _damped
    z, iterations, converged = step(f, z0.clone(), budget, valid, on_eval or _ignore)
    all_rows = torch.arange(z.shape[0], device=z.device)
    fz = final(z) if final is not None else f(z, all_rows)
    iterations = iterations + 1
    residual = relative_residual(fz, z, valid)
    converged = converged | (residual < budget.tol)
    return z, fz, SolveStats(iterations, residual, converged)


def _ignore(k: int, fz: Tensor, rows: Tensor, residual: Tensor) -> None:
    pass


def _rows_valid(valid: Tensor | None, rows: Tensor) -> Tensor | None:
    return None if valid is None else valid[rows]


def _damped(f: RowMap, z: Tensor, budget: Budget, valid: Tensor | None, on_eval: EvalHook):
    """z <- (1 - tau) z + tau f(z), per row until its residual < tol; at most max_iter - 1 evaluations."""
    batch = z.shape[0]
    rows = torch.arange(batch, device=z.device)
    iterations = torch.zeros(batch, dtype=torch.long, device=z.device)
    converged = torch.zeros(batch, dtype=torch.bool, device=z.device)
    for k in range(1, budget.max_iter):
        z_rows = z[rows]
        fz = f(z_rows, rows)
        r = relative_residual(fz, z_rows, _rows_valid(valid, rows))
        on_eval(k, fz, rows, r)
        z[rows] = (1 - budget.tau) * z_rows + budget.tau * fz
        iterations.index_fill_(0, rows, k)  # no host-to-device copy: CUDA-graph capturable
        rows = _drop_converged(rows, r, budget.tol, converged)
        if rows.numel() == 0:
            break
    return z, iterations, converged


def _drop_converged(rows: Tensor, r: Tensor, tol: float, converged: Tensor) -> Tensor:
    if tol == 0:
        return rows
    done = r.to(rows.device) < tol
    converged[rows[done]] = True
    return rows[~done]


def _anderson(f: RowMap, z: Tensor, budget: Budget, valid: Tensor | None, on_eval: EvalHook):
    """Anderson acceleration (type II) with history budget.anderson_m and mixing weight tau, per row.

    Each row solves its own small least-squares problem min ||sum_i a_i g_i||, sum a_i = 1, over the
    residuals g_i = f(x_i) - x_i of its history, through the normal equations regularised relative to the
    smallest residual (relative to the largest, the newest small residuals would be drowned out).
    """
    batch, m = z.shape[0], budget.anderson_m
    rows = torch.arange(batch, device=z.device)
    iterations = torch.zeros(batch, dtype=torch.long, device=z.device)
    converged = torch.zeros(batch, dtype=torch.bool, device=z.device)
    xs = torch.zeros(batch, m, *z.shape[1:], dtype=z.dtype, device=z.device)
    fs = torch.zeros_like(xs)
    for k in range(1, budget.max_iter):
        z_rows = z[rows]
        fz = f(z_rows, rows)
        v = _rows_valid(valid, rows)
        r = relative_residual(fz, z_rows, v)
        on_eval(k, fz, rows, r)
        slot = (k - 1) % m
        xs[rows, slot], fs[rows, slot] = z_rows, fz
        z[rows] = _anderson_mix(xs[rows, : min(k, m)], fs[rows, : min(k, m)], v, budget.tau)
        iterations.index_fill_(0, rows, k)  # no host-to-device copy: CUDA-graph capturable
        rows = _drop_converged(rows, r, budget.tol, converged)
        if rows.numel() == 0:
            break
    return z, iterations, converged


def _anderson_mix(xs: Tensor, fs: Tensor, valid: Tensor | None, tau: float) -> Tensor:
    """xs, fs: (R, n, ...) histories -> the next iterate (R, ...)."""
    g = (fs - xs).double()
    if valid is not None:  # padding must not steer the mixing weights
        g = g * expand_valid(valid, g[:, 0])[:, None]
    g = g.flatten(2)  # (R, n, D)
    gram = g @ g.transpose(1, 2)  # (R, n, n)
    n = gram.shape[-1]
    scale = gram.diagonal(dim1=1, dim2=2).amin(-1).clamp_min(1e-300)[:, None, None]
    gram = gram + 1e-8 * scale * torch.eye(n, dtype=gram.dtype, device=gram.device)
    alpha = torch.linalg.solve(gram, torch.ones(gram.shape[:2], dtype=gram.dtype, device=gram.device))
    alpha = (alpha / alpha.sum(-1, keepdim=True)).to(xs.dtype)
    shape = (*alpha.shape, *([1] * (xs.dim() - 2)))
    mixed_f, mixed_x = (alpha.view(shape) * fs).sum(1), (alpha.view(shape) * xs).sum(1)
    return tau * mixed_f + (1 - tau) * mixed_x
