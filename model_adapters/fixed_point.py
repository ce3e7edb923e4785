"""Fixed-point solvers behind one contract, and the registry that names them.

    solve(f, z0, budget, context=None, valid=None, keep=(), head=None) -> Solution

f(z, context, commit) -> (fz, aux) evaluates the map on some batch rows. `context` is whatever f needs per row
(the input injection, the frozen recurrent state, the valid mask): a tensor or a nesting of tuples, lists, dicts
and NamedTuples of tensors, batch first. solve() hands f only the rows still iterating, with their context rows,
so a converged row stops costing compute and f never gathers rows itself. `aux` is f's auxiliary output (for the
models: the recurrent state an evaluation commits). Only the final evaluation is called with commit=True, and
solve() returns its aux; the others may return None and skip the work (a block's final conv window and SSM state).

Semantics (the reference code's evaluation, for f_thres = max_iter): from z0, at most max_iter - 1 solver
updates, a row stopping once its relative residual ||f(z) - z|| / (1e-6 + ||z||), measured over its own valid
positions, falls below tol (or budget.exit's criterion meets it); then one final evaluation on every row, whose
output fz is what the model reads.

Solution.stats, one entry per row:
    iterations  f evaluations made for the row, the final one included (1 .. max_iter)
    residual    the relative residual at the final evaluation's input z
    converged   the row met its criterion (never when tol == 0)
Solution.anytime: with tol == 0 every row follows one trajectory, and the output of evaluation k is exactly what a
run at max_iter = k returns; `keep` names the budgets whose outputs and stats to keep (anytime evaluation), and
the ExitPoints (criterion, threshold) whose runs to read off it as well (exact for one piece: _ExitPoints).

The criterion a row stops on is budget.exit at threshold budget.tol, measured by an exit test of the registry
(exits.py; the default, "residual", is the relative residual above), per row over its valid positions.

A solver is its update rule only: SOLVERS[name](budget, z0) returns an object whose
update(rows, z, fz, valid, k) gives the next iterate of those rows. `@register_solver("name")` adds one; Budget,
model_args and the command line all read this registry.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from .exits import EPS, ExitPoint, ExitTest, Head, Point, exit_test, relative_residual, row_norms  # noqa: F401 - re-exported
from .tensors import broadcast_mask, take_rows

logger = logging.getLogger(__name__)
PROGRESS_SECONDS = 60.0  # a solve running longer than this says so, every PROGRESS_SECONDS (large max_iter)


class Budget(Protocol):
    """What a solve reads of config.Budget (declared here so that the solvers need not import the config).
    Read-only members (properties), since config.Budget is a frozen dataclass."""

    @property
    def max_iter(self) -> int: ...
    @property
    def tol(self) -> float: ...
    @property
    def tau(self) -> float: ...
    @property
    def solver(self) -> str: ...
    @property
    def anderson_m(self) -> int: ...
    @property
    def exit(self) -> str: ...


RowMap = Callable[[Tensor, Any, bool], tuple[Tensor, Any]]
SOLVERS: dict[str, Callable] = {}


def register_solver(name: str):
    """Class decorator: SOLVERS[name] = cls, where cls(budget, z0) has update(rows, z, fz, valid, k)."""

    def register(cls):
        SOLVERS[name] = cls
        return cls

    return register


@dataclass
class SolveStats:
    iterations: Tensor  # (B,) int64
    residual: Tensor  # (B,) float32 (float64 for a float64 model)
    converged: Tensor  # (B,) bool


@dataclass
class Solution:
    z: Tensor  # the last iterate
    fz: Tensor  # f(z) of the final evaluation: what the model reads
    aux: Any  # f's auxiliary output of the final evaluation
    stats: SolveStats
    # budget k (or an ExitPoint) -> (output, stats)
    anytime: dict[Point, tuple[Tensor, SolveStats]] = field(default_factory=dict)


def damp(z: Tensor, fz: Tensor, tau: float) -> Tensor:
    """The damped update z <- (1 - tau) z + tau f(z): the one definition, used by the eager solver, the masked update
    of captured solves (backends' damped_update, whose Triton kernel is held to it) and training."""
    return (1 - tau) * z + tau * fz


def solve(f: RowMap, z0: Tensor, budget: Budget, context: Any = None, valid: Tensor | None = None,
          keep: Iterable[int | ExitPoint] = (), head: Head | None = None) -> Solution:
    """Run budget.solver from z0 (B, ...), each row stopping on budget.exit at threshold budget.tol (exits.py); head:
    the LM head, for the criteria that read the next-token distribution. keep (tol 0 only): budgets k and
    ExitPoints whose outputs and statistics to read off the one trajectory. The solver's own arithmetic is
    autocast-safe (elementwise and reductions in the iterate's dtype; Anderson's normal equations in float64, which
    autocast leaves alone)."""
    keep = frozenset(keep)
    if keep and budget.tol != 0:
        raise ValueError("anytime outputs need tol == 0 (one trajectory for every row)")
    batch = z0.shape[0]
    solver = SOLVERS[budget.solver](budget, z0)
    test = exit_test(budget.exit, batch, head)
    points = _ExitPoints([p for p in keep if isinstance(p, ExitPoint)], batch, head)
    z = z0.clone()  # every row's iterate; a row's is written back when it leaves the working set
    work = _Working(None, z0.clone(), context, valid)
    iterations = torch.zeros(batch, dtype=torch.long, device=z0.device)
    converged = torch.zeros(batch, dtype=torch.bool, device=z0.device)
    anytime: dict[Point, tuple[Tensor, SolveStats]] = {}
    progress = _Progress(budget.max_iter)
    for k in range(1, budget.max_iter):
        progress.tell(k, work.z.shape[0])
        fz, _ = f(work.z, work.context, False)
        if k in keep or points:  # at tol 0 only an anytime reading looks at this residual
            residual = relative_residual(fz, work.z, work.valid)
        if k in keep:  # tol == 0: the working set is every row, in order
            anytime[k] = (fz, SolveStats(torch.full_like(iterations, k), residual, torch.zeros_like(converged)))
        if points:
            points.see(k, work.z, fz, work.valid, residual, final=False)
        if budget.tol:
            value = test.value(work.rows, work.z, fz, work.valid)
        work.z = solver.update(work.rows, work.z, fz, work.valid, k)
        if work.rows is None:
            iterations.fill_(k)
        else:
            iterations.index_fill_(0, work.rows, k)  # no host-to-device copy: CUDA-graph capturable
        if budget.tol == 0:  # never stops early: no host synchronisation
            continue
        done = test.stops(value, budget.tol)
        if bool(done.any()):
            work = work.leave(done, z, converged)
            if work.z.shape[0] == 0:
                break
    work.write_back(z)
    fz, aux = f(z, context, True)
    residual = relative_residual(fz, z, valid)
    met = test.stops(test.value(None, z, fz, valid), budget.tol) if budget.tol else torch.zeros_like(converged)
    stats = SolveStats(iterations + 1, residual, converged | met)
    if budget.max_iter in keep:
        anytime[budget.max_iter] = (fz, stats)
    if points:
        anytime.update(points.see(budget.max_iter, z, fz, valid, residual, final=True))
    return Solution(z, fz, aux, stats, anytime)


class _Progress:
    """A line every PROGRESS_SECONDS while one solve runs: a large max_iter on a long batch can take minutes between
    two ticks of a progress bar, and a run with no output looks hung. A warning, so that lm-eval's own command line
    (which shows no info lines of ours) shows it too. Reads the clock only (no device sync)."""

    def __init__(self, max_iter: int):
        self.max_iter, self.start = max_iter, time.monotonic()
        self.next = self.start + PROGRESS_SECONDS

    def tell(self, k: int, rows: int) -> None:
        now = time.monotonic()
        if now >= self.next:
            self.next = now + PROGRESS_SECONDS
            logger.warning("fixed-point solve: iteration %d of max_iter=%d, %d row(s) still iterating, %.0f s so far",
                           k, self.max_iter, rows, now - self.start)


class _ExitPoints:
    """Anytime thresholds on a tol-0 trajectory (every row, in order): for each ExitPoint, the output and statistics
    of a run that stops on it. A run stopping at evaluation k (its criterion met there) ends with evaluation k + 1,
    which is the trajectory's: the damped iterate it evaluates is the trajectory's, and a row's criterion depends on
    its own evaluations only. Exact for one piece (a later piece would start from another state)."""

    def __init__(self, points: list[ExitPoint], batch: int, head: Head | None):
        self.points = sorted(points)
        self.tests = {name: exit_test(name, batch, head) for name in sorted({p.exit for p in points})}
        self.ends: dict[ExitPoint, Tensor] = {}  # per row, the evaluation whose output is the point's (0: not yet)
        self.out: dict[ExitPoint, tuple[Tensor, Tensor, Tensor]] = {}  # output, residual, converged

    def __bool__(self) -> bool:
        return bool(self.points)

    def see(self, k: int, z: Tensor, fz: Tensor, valid: Tensor | None, residual: Tensor, final: bool
            ) -> dict[Point, tuple[Tensor, SolveStats]]:
        """Evaluation k of every row; final: the trajectory's last, which ends every row not ended yet."""
        values = {name: test.value(None, z, fz, valid) for name, test in self.tests.items()}
        for p in self.points:
            if p not in self.ends:
                self.ends[p] = torch.zeros(fz.shape[0], dtype=torch.long, device=fz.device)
                self.out[p] = (torch.zeros_like(fz), torch.zeros_like(residual), torch.zeros_like(residual).bool())
            ends, (out, res, conv) = self.ends[p], self.out[p]
            met = self.tests[p.exit].stops(values[p.exit], p.tol)
            if final:
                conv = conv | ((ends == 0) & met)
                ends = torch.where(ends == 0, k, ends)
            now = ends == k
            out = torch.where(broadcast_mask(now, out), fz, out)
            res = torch.where(now, residual.to(res.dtype), res)
            if not final:
                new = (ends == 0) & met
                ends, conv = torch.where(new, k + 1, ends), conv | new
            self.ends[p], self.out[p] = ends, (out, res, conv)
        if not final:
            return {}
        return {p: (self.out[p][0], SolveStats(self.ends[p], self.out[p][1], self.out[p][2])) for p in self.points}


@dataclass
class _Working:
    """The rows still iterating, kept compact: their iterates and their context, gathered once per change of the
    set (not once per iteration). rows None: every row, in order."""

    rows: Tensor | None
    z: Tensor
    context: Any
    valid: Tensor | None

    def leave(self, done: Tensor, z: Tensor, converged: Tensor) -> _Working:
        """Rows `done` (a mask over the working set) leave: their iterates go back to z, they count as converged."""
        rows = self.rows if self.rows is not None else torch.arange(z.shape[0], device=z.device)
        z[rows[done]] = self.z[done]
        converged[rows[done]] = True
        stay = (~done).nonzero().flatten()
        return _Working(rows[stay], self.z[stay], take_rows(self.context, stay), take_rows(self.valid, stay))

    def write_back(self, z: Tensor) -> None:
        if self.rows is None:
            z.copy_(self.z)
        elif self.rows.numel():
            z[self.rows] = self.z


@register_solver("fixed_point")
class Damped:
    """z <- (1 - tau) z + tau f(z): the reference code's damped iteration."""

    def __init__(self, budget: Budget, z0: Tensor):
        self.tau = budget.tau

    def update(self, rows: Tensor | None, z: Tensor, fz: Tensor, valid: Tensor | None, k: int) -> Tensor:
        return damp(z, fz, self.tau)


BACKOFF_PATIENCE = 16  # updates without a new lowest residual before a row's damping backs off
BACKOFF_FACTOR = 0.9  # what a stalled row's damping is multiplied by


class RowDamping(NamedTuple):
    """The per-row state of the "backoff" solver, (R,) each: tau the row's damping now, best (float32) its
    lowest residual since its last back-off, stall (int32) its updates since that low."""

    tau: Tensor
    best: Tensor
    stall: Tensor

    @classmethod
    def start(cls, rows: int, tau: float, like: Tensor) -> RowDamping:
        """A damping in float64 for a float64 iterate (whose damped update keeps that precision), else float32."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        d = cls(torch.empty(rows, dtype=dtype, device=like.device), torch.empty(rows, device=like.device),
                torch.empty(rows, dtype=torch.int32, device=like.device))
        d.reset(tau)
        return d

    def reset(self, tau: float) -> None:
        self.tau.fill_(tau)
        self.best.fill_(math.inf)
        self.stall.zero_()


def back_off(tau: Tensor, best: Tensor, stall: Tensor, residual: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A row's damping after an update whose input had relative residual `residual`: the definition (the eager
    solver, the backends' damped_update and its Triton kernel are held to it). A row that has gone BACKOFF_PATIENCE
    updates without a new lowest residual moves on with its damping times BACKOFF_FACTOR, and its lowest residual
    restarts at the current one. A row whose residual keeps falling never backs off: it reads as "fixed_point"."""
    residual = residual.float()
    stall = torch.where(residual < best, 0, stall + 1)
    hit = stall >= BACKOFF_PATIENCE
    return (torch.where(hit, tau * BACKOFF_FACTOR, tau), torch.where(hit, residual, torch.minimum(residual, best)),
            torch.where(hit, 0, stall).to(torch.int32))


def damp_rows(z: Tensor, fz: Tensor, tau: Tensor) -> Tensor:
    """damp() with a damping per row, tau (R,), in z's dtype."""
    t = tau.view(-1, *([1] * (z.dim() - 1)))
    return ((1 - t) * z + t * fz).to(z.dtype)


@register_solver("backoff")
class Backoff:
    """Damped iteration at tau, each row backing off its own damping when it stalls (back_off). Where tau is too
    large for a row's fixed point (the update overshoots: its Jacobian has an eigenvalue below 1 - 2 / tau), the
    damped iteration settles into a cycle and spends the whole budget; a smaller damping converges it. The fixed
    point is the same: only the path to it changes, and only for rows that stall."""

    def __init__(self, budget: Budget, z0: Tensor):
        self.rows = RowDamping.start(z0.shape[0], budget.tau, z0)

    def update(self, rows: Tensor | None, z: Tensor, fz: Tensor, valid: Tensor | None, k: int) -> Tensor:
        index = slice(None) if rows is None else rows
        tau, best, stall = (t[index] for t in self.rows)
        moved = damp_rows(z, fz, tau)
        for buffer, value in zip(self.rows, back_off(tau, best, stall, relative_residual(fz, z, valid))):
            buffer[index] = value
        return moved


@register_solver("anderson")
class Anderson:
    """Anderson acceleration (type II) with history budget.anderson_m and mixing weight tau, per row.

    Each row solves its own small least-squares problem min ||sum_i a_i g_i||, sum a_i = 1, over the residuals
    g_i = f(x_i) - x_i of its history, through the normal equations regularised relative to the smallest residual
    (relative to the largest, the newest small residuals would be drowned out). Padding is masked out of g.
    """

    def __init__(self, budget: Budget, z0: Tensor):
        self.m, self.tau = budget.anderson_m, budget.tau
        self.xs = torch.zeros(z0.shape[0], self.m, *z0.shape[1:], dtype=z0.dtype, device=z0.device)
        self.fs = torch.zeros_like(self.xs)

    def update(self, rows: Tensor | None, z: Tensor, fz: Tensor, valid: Tensor | None, k: int) -> Tensor:
        slot, n = (k - 1) % self.m, min(k, self.m)
        index = slice(None) if rows is None else rows
        self.xs[index, slot], self.fs[index, slot] = z, fz
        return _anderson_mix(self.xs[index, :n], self.fs[index, :n], valid, self.tau)


def _anderson_mix(xs: Tensor, fs: Tensor, valid: Tensor | None, tau: float) -> Tensor:
    """xs, fs: (R, n, ...) histories -> the next iterate (R, ...)."""
    g = (fs - xs).double()
    if valid is not None:  # padding must not steer the mixing weights
        g = g * broadcast_mask(valid, g[:, 0])[:, None]
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
