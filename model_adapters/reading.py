"""How an implicit model reads a sequence: in pieces, solved one after another.

A reading cuts the L tokens into consecutive pieces. Each piece is iterated to its fixed point with every layer's
recurrent state frozen where the previous piece left it; the solver's final evaluation commits the piece's state
(its auxiliary output), which the next piece starts from. Budget.mode picks the cut:

    simultaneous   one piece of L tokens: each f is one parallel scan over the whole sequence
    sequential     L pieces of one token: the RNN reading, and the generation path
    blockwise      pieces of budget.block_size tokens: each f is a parallel scan over one block

A one-token piece is evaluated in the recurrent (step) form, a longer one in the parallel form. So block_size = 1
is the sequential reading and block_size >= L the simultaneous one, by construction: one code path.

Every (sequence, piece) stops on its own residual (or the budget's exit criterion, exits.py: the distribution
criteria read the model's head), measured over its own valid tokens; a sequence that ended before a piece takes no
part in it. ReadStats keeps the solver statistics per (sequence, piece).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol, cast

import torch
from torch import Tensor

from .backends import torch_ops
from .exits import ExitPoint
from .fixed_point import SolveStats, solve
from .mamba2 import Ops, State
from .tensors import put_rows, take_rows, valid_mask

if TYPE_CHECKING:
    from .config import Budget, ModelConfig


class PieceMaps(Protocol):
    """What a reading needs of an implicit model (models.ImplicitLM): the map in both forms and an empty state."""

    @property
    def cfg(self) -> ModelConfig: ...
    @property
    def cd(self) -> torch.dtype: ...

    def f(self, z: Tensor, u: Tensor, state: State | None, valid: Tensor | None, commit: bool, ops: Ops
          ) -> tuple[Tensor, State | None]: ...

    def f_step(self, z: Tensor, u: Tensor, state: State, commit: bool, ops: Ops) -> tuple[Tensor, State | None]: ...

    def empty_state(self, batch: int) -> State: ...

    def logits(self, hidden: Tensor) -> Tensor: ...


@dataclass
class ReadStats:
    """Solver statistics per (sequence, piece), all (B, P): iterations (f evaluations, the final one included),
    residual, converged, and tokens (the piece's valid tokens; 0 where the sequence ended before the piece)."""

    iterations: Tensor
    residual: Tensor
    converged: Tensor
    tokens: Tensor

    @property
    def present(self) -> Tensor:
        """(B, P) bool: the (sequence, piece) entries that were solved."""
        return self.tokens > 0


@dataclass
class Readout:
    hidden: Tensor  # (B, L, d_model) after the final norm, float32
    stats: ReadStats


@dataclass
class Reading:
    hidden: Tensor  # (B, L, d_model)
    state: State | None  # each layer's recurrent state after each sequence's last valid token (None: not asked for)
    stats: ReadStats
    anytime: dict[int | ExitPoint, Readout] = field(default_factory=dict)  # budget k (exit point) -> its reading


class PieceContext(NamedTuple):
    """What the map needs per row of a piece (gathered by the solver for the rows still iterating)."""

    u: Tensor  # the injection: (R, T, d_in_proj), or (R, d_in_proj) for a one-token piece
    state: State | None  # the frozen recurrent state the piece starts from (None: zeros, a one-piece reading)
    valid: Tensor | None  # (R, T) valid tokens of a longer piece; None when all are valid


def pieces(length: int, budget: Budget) -> list[tuple[int, int]]:
    """[start, end) of each piece of a `length`-token sequence."""
    size = budget.piece_size(length)
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def read(model: PieceMaps, u: Tensor, budget: Budget, lengths: Tensor | None = None, state: State | None = None,
         keep: tuple[int | ExitPoint, ...] = (), want_state: bool = True, ops: Ops = torch_ops) -> Reading:
    """u (B, L, d_in_proj): the injection of a right-padded batch with `lengths` (B,); `state` continues earlier
    tokens. keep: anytime budgets and exit points (a single simultaneous piece at tol = 0, see Budget.anytime_budgets).
    want_state=False: a one-piece reading commits no state (its final evaluation is then as cheap as the others) and
    returns None for it. Each piece is solved by fixed_point.solve, which gathers the rows still iterating (the
    runtime's masked piece solves, runtime/readings.py, give the same numbers on a GPU from CUDA graphs)."""
    batch, length = u.shape[:2]
    cuts = pieces(length, budget)
    if keep and len(cuts) != 1:
        raise ValueError("anytime budgets need the whole sequence in one piece")
    if state is None and (want_state or len(cuts) > 1 or length == 1):  # else: the kernels read zeros for None
        state = model.empty_state(batch)
    ends = lengths.tolist() if lengths is not None else [length] * batch  # one host copy, not one per piece
    valid = valid_mask(lengths, length)
    hidden = torch.zeros(batch, length, model.cfg.d_model, dtype=model.cd, device=u.device)
    full = torch.full((batch,), length, dtype=torch.long, device=u.device) if lengths is None else lengths
    stats = empty_stats(length, budget.piece_size(length), full.to(u.device), model.cd)
    anytime: dict[int | ExitPoint, Readout] = {}
    commit = want_state or len(cuts) > 1
    for p, (start, end) in enumerate(cuts):
        rows = _rows_alive(ends, start, u.device)
        solution = _solve_piece(model, u, budget, take_rows(state, rows), rows, (start, end), valid, ends, keep, commit,
                                ops)
        out = solution.fz if end - start > 1 else solution.fz[:, None]
        hidden = _put_piece(hidden, rows, start, end, out)
        state = put_rows(state, rows, solution.aux) if commit else None
        put_stats(stats, rows, p, solution.stats)
        for k, (fz_k, stats_k) in solution.anytime.items():  # one piece: every row, in order
            anytime[k] = Readout(fz_k if fz_k.dim() == 3 else fz_k[:, None], single_piece(stats_k, stats.tokens))
    return Reading(hidden, state, stats, anytime)


def _solve_piece(model: PieceMaps, u: Tensor, budget: Budget, state: State, rows: Tensor | None,
                 span: tuple[int, int], valid: Tensor | None, ends: list[int], keep: tuple, commit: bool,
                 ops: Ops):
    start, end = span
    u_piece = take_rows(u[:, start:end], rows).contiguous()  # once per piece, not once per f evaluation
    if end - start == 1:  # the step form: the recurrent update of one token
        context = PieceContext(u_piece[:, 0], state, None)
        z0 = torch.zeros(u_piece.shape[0], model.cfg.d_model, dtype=model.cd, device=u.device)
        return solve(step_map(model, commit, ops), z0, budget, context, None, keep, model.logits)
    piece_valid = None
    if any(e < end for e in ends if e > start):  # some sequence ends inside the piece: mask its padding
        assert valid is not None  # ends short of the length come from lengths, which give valid
        piece_valid = take_rows(valid[:, start:end], rows)
    context = PieceContext(u_piece, state, piece_valid)
    z0 = torch.zeros(*u_piece.shape[:2], model.cfg.d_model, dtype=model.cd, device=u.device)
    return solve(parallel_map(model, commit, ops), z0, budget, context, piece_valid, keep, model.logits)


def step_map(model: PieceMaps, commit_last: bool = True, ops: Ops = torch_ops):
    """The step form as the solver's map; commit_last=False: even the final evaluation commits no state."""
    def f(z: Tensor, ctx: PieceContext, commit: bool):
        return model.f_step(z, ctx.u, cast(State, ctx.state), commit and commit_last, ops)  # read() gives one

    return f


def parallel_map(model: PieceMaps, commit_last: bool = True, ops: Ops = torch_ops):
    """The parallel form as the solver's map (see step_map)."""
    def f(z: Tensor, ctx: PieceContext, commit: bool):
        return model.f(z, ctx.u, ctx.state, ctx.valid, commit and commit_last, ops)

    return f


def _rows_alive(ends: list[int], start: int, device) -> Tensor | None:
    """The sequences with tokens at or after `start`; None when that is every sequence."""
    alive = [b for b, e in enumerate(ends) if e > start]
    return None if len(alive) == len(ends) else torch.tensor(alive, dtype=torch.long, device=device)


def _put_piece(hidden: Tensor, rows: Tensor | None, start: int, end: int, out: Tensor) -> Tensor:
    if rows is None:
        hidden[:, start:end] = out
    else:
        hidden[rows, start:end] = out
    return hidden


def empty_stats(length: int, size: int, lengths: Tensor, dtype) -> ReadStats:
    """Zeroed statistics and each piece's valid tokens, from device ops only (capturable in a CUDA graph)."""
    starts = torch.arange(0, length, size, device=lengths.device)
    tokens = (torch.minimum(lengths[:, None], (starts + size)[None]) - starts[None]).clamp_min(0)
    zeros = torch.zeros(tokens.shape, dtype=torch.long, device=tokens.device)
    return ReadStats(zeros, zeros.to(dtype), zeros.bool(), tokens)


def put_stats(stats: ReadStats, rows: Tensor | slice | None, p: int, solved: SolveStats) -> None:
    index = slice(None) if rows is None else rows
    stats.iterations[index, p] = solved.iterations
    stats.residual[index, p] = solved.residual.to(stats.residual.dtype)
    stats.converged[index, p] = solved.converged


def single_piece(solved: SolveStats, tokens: Tensor) -> ReadStats:
    return ReadStats(solved.iterations[:, None], solved.residual[:, None], solved.converged[:, None], tokens)
