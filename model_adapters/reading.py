"""How an implicit model reads a sequence: in pieces, solved one after another.

A reading cuts the L tokens into consecutive pieces. Each piece is iterated to its fixed point with every layer's
recurrent state frozen where the previous piece left it; the solver's final evaluation commits the piece's state
(its auxiliary output), which the next piece starts from. Budget.mode picks the cut:

    simultaneous   one piece of L tokens: each f is one parallel scan over the whole sequence
    sequential     L pieces of one token: the RNN reading, and the generation path
    blockwise      pieces of budget.block_size tokens: each f is a parallel scan over one block

A one-token piece is evaluated in the recurrent (step) form, a longer one in the parallel form. So block_size = 1
is the sequential reading and block_size >= L the simultaneous one, by construction: one code path.

Every (sequence, piece) stops on its own residual, measured over its own valid tokens; a sequence that ended
before a piece takes no part in it. ReadStats keeps the solver statistics per (sequence, piece).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from .fixed_point import SolveStats, solve
from .graphs import PieceSolve, can_capture
from .tensors import put_rows, take_rows, valid_mask

if TYPE_CHECKING:
    from .config import Budget
    from .models import ImplicitLM, State


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
    anytime: dict[int, Readout] = field(default_factory=dict)  # budget k -> the reading at max_iter = k


class PieceContext(NamedTuple):
    """What the map needs per row of a piece (gathered by the solver for the rows still iterating)."""

    u: Tensor  # the injection: (R, T, d_in_proj), or (R, d_in_proj) for a one-token piece
    state: State  # the frozen recurrent state the piece starts from
    valid: Tensor | None  # (R, T) valid tokens of a longer piece; None when all are valid


def pieces(length: int, budget: Budget) -> list[tuple[int, int]]:
    """[start, end) of each piece of a `length`-token sequence."""
    size = budget.piece_size(length)
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def read(model: ImplicitLM, u: Tensor, budget: Budget, lengths: Tensor | None = None, state: State | None = None,
         keep: tuple[int, ...] = (), want_state: bool = True) -> Reading:
    """u (B, L, d_in_proj): the injection of a right-padded batch with `lengths` (B,); `state` continues earlier
    tokens. keep: anytime budgets (a single simultaneous piece at tol = 0, see Budget.anytime_budgets).
    want_state=False: a one-piece reading commits no state (its final evaluation is then as cheap as the others) and
    returns None for it.

    With model.graphs "capture" (CUDA) or "masked" (any device), pieces after the first size are solved by
    PieceSolve (graphs.py): every row, masked, captured in CUDA graphs; the numbers are those of the eager solver."""
    batch, length = u.shape[:2]
    cuts = pieces(length, budget)
    if keep and len(cuts) != 1:
        raise ValueError("anytime budgets need the whole sequence in one piece")
    if state is None and (want_state or len(cuts) > 1 or length == 1):  # else: the kernels read zeros for None
        state = model.empty_state(batch)
    if _use_piece_solves(model, budget, cuts, keep, u):
        return _read_with_piece_solves(model, u, budget, lengths, state, cuts)
    ends = lengths.tolist() if lengths is not None else [length] * batch  # one host copy, not one per piece
    valid = valid_mask(lengths, length)
    hidden = torch.zeros(batch, length, model.cfg.d_model, dtype=model.cd, device=u.device)
    full = torch.full((batch,), length, dtype=torch.long, device=u.device) if lengths is None else lengths
    stats = _empty_stats(length, budget.piece_size(length), full.to(u.device), model.cd)
    anytime: dict[int, Readout] = {}
    commit = want_state or len(cuts) > 1
    for p, (start, end) in enumerate(cuts):
        rows = _rows_alive(ends, start, u.device)
        solution = _solve_piece(model, u, budget, take_rows(state, rows), rows, start, end, valid, ends, keep, commit)
        out = solution.fz if end - start > 1 else solution.fz[:, None]
        hidden = _put_piece(hidden, rows, start, end, out)
        state = put_rows(state, rows, solution.aux) if commit else None
        _put_stats(stats, rows, p, solution.stats)
        for k, (fz_k, stats_k) in solution.anytime.items():  # one piece: every row, in order
            anytime[k] = Readout(fz_k if fz_k.dim() == 3 else fz_k[:, None], _single_piece(stats_k, stats.tokens))
    return Reading(hidden, state, stats, anytime)


def can_capture_whole(budget: Budget, length: int) -> bool:
    """Whether read_whole reads `length` tokens under `budget`: one piece of more than one token, a fixed number of
    damped iterations (tol = 0: no look at the residuals on the host)."""
    return len(pieces(length, budget)) == 1 and length > 1 and budget.tol == 0 and can_capture(budget)


def read_whole(model: ImplicitLM, u: Tensor, budget: Budget, lengths: Tensor, keep: tuple[int, ...] = ()) -> Reading:
    """The one-piece reading at tol = 0 with no state in or out, from device ops only (no host synchronisation, so it
    can be captured in a CUDA graph): what read(..., want_state=False) returns for it, the valid mask always applied
    (masking by a mask of ones changes no bit). Every sequence has at least one token (read() leaves an empty one's
    outputs at zero)."""
    batch, length = u.shape[:2]
    valid = valid_mask(lengths, length)
    z0 = torch.zeros(batch, length, model.cfg.d_model, dtype=model.cd, device=u.device)
    solution = solve(_parallel_map(model, False), z0, budget, PieceContext(u, None, valid), valid, keep)
    stats = _empty_stats(length, length, lengths, model.cd)
    _put_stats(stats, None, 0, solution.stats)
    anytime = {k: Readout(fz, _single_piece(solved, stats.tokens)) for k, (fz, solved) in solution.anytime.items()}
    return Reading(solution.fz, None, stats, anytime)


def can_capture_masked(budget: Budget, length: int) -> bool:
    """Whether read_masked reads `length` tokens under `budget`: one piece of more than one token, damped iteration
    that stops on residuals (tol > 0; tol = 0 is read_whole's)."""
    return len(pieces(length, budget)) == 1 and length > 1 and budget.tol > 0 and can_capture(budget)


def read_masked(model: ImplicitLM, u: Tensor, budget: Budget, lengths: Tensor, solver: PieceSolve | None = None
                ) -> Reading:
    """The one-piece reading with no state in or out, every row masked (a graphs.PieceSolve of the whole sequence,
    one update per segment): what read(..., want_state=False) returns, to float tolerance (the eager solver gathers
    the rows still iterating). solver: a PieceSolve of u's shape and this budget (captured, MaskedReadingGraph); None:
    one made for this call, uncaptured. Every sequence has at least one token."""
    length = u.shape[1]
    solver = solver or PieceSolve(model, budget, u, None, capture=False, segment=1)
    out, solved = solver(u, lengths > 0, valid_mask(lengths, length))
    stats = _empty_stats(length, length, lengths, model.cd)
    _put_stats(stats, None, 0, solved)
    return Reading(out if solver.graphs is None else out.clone(), None, stats)  # a replay's buffers are the next's


class MaskedReadingGraph:
    """read_masked captured for ids of one (batch, length) shape, kept by graphs.ForwardGraphs as it keeps a
    ForwardGraph: `first` is the reading of the ids it was made from, a call reads new ids (the injection eagerly,
    the solve replayed: a start graph, one graph per update until no row is active, a finish graph). capture=False:
    the same arithmetic uncaptured (the CPU tests)."""

    def __init__(self, model: ImplicitLM, budget: Budget, ids: Tensor, lengths: Tensor, pool=None,
                 capture: bool = True):
        self.model, self.budget = model, budget
        u = model.inject(ids)  # once: the capture's shapes and the first reading's injection
        self.solver = PieceSolve(model, budget, u, None, capture, segment=1, pool=pool)
        self.first = read_masked(model, u, budget, lengths, self.solver)

    def __call__(self, ids: Tensor, lengths: Tensor) -> Reading:
        return read_masked(self.model, self.model.inject(ids), self.budget, lengths, self.solver)


def _use_piece_solves(model: ImplicitLM, budget: Budget, cuts: list, keep: tuple, u: Tensor) -> bool:
    mode = getattr(model, "graphs", "off")
    if mode == "off" or keep or len(cuts) == 1 or not can_capture(budget):
        return False
    capturing = u.is_cuda and torch.cuda.is_current_stream_capturing()  # inside a caller's graph: stay eager
    return not capturing and (mode == "masked" or u.is_cuda)


def _read_with_piece_solves(model: ImplicitLM, u: Tensor, budget: Budget, lengths: Tensor | None, state: State,
                            cuts: list[tuple[int, int]]) -> Reading:
    """Every piece solved for every row by a PieceSolve of its size (one for the blocks, one for a shorter last
    block), alive rows masked; solves are kept on the model and reused by later readings of the same shape."""
    batch, length = u.shape[:2]
    lengths = lengths if lengths is not None else torch.full((batch,), length, dtype=torch.long, device=u.device)
    valid = valid_mask(lengths, length)
    hidden = torch.zeros(batch, length, model.cfg.d_model, dtype=model.cd, device=u.device)
    stats = _empty_stats(length, budget.piece_size(length), lengths, model.cd)
    solver = None
    for p, (start, end) in enumerate(cuts):
        u_piece = u[:, start] if end - start == 1 else u[:, start:end]
        if solver is None or tuple(solver.u.shape) != tuple(u_piece.shape):
            state = solver.current_state() if solver is not None else state
            solver = piece_solve(model, budget, u_piece, state)
            solver.load_state(state)
        out, solved = solver(u_piece, lengths > start, None if end - start == 1 else valid[:, start:end])
        hidden[:, start:end] = out if end - start > 1 else out[:, None]
        _put_stats(stats, None, p, solved)
    hidden = hidden * valid[..., None]  # padding: zeros, as the eager reading leaves it
    return Reading(hidden, solver.current_state(), stats)


def piece_solve(model: ImplicitLM, budget: Budget, u_like: Tensor, state: State) -> PieceSolve:
    """The model's PieceSolve for this shape and budget, made (and captured, on CUDA) on first use."""
    cache = model.captured("_piece_solves", dict)
    key = (tuple(u_like.shape), u_like.dtype, str(u_like.device), budget)
    if key not in cache:
        if len(cache) >= 8:  # a few shapes per run (the batch size, a shorter last batch, a last block)
            cache.pop(next(iter(cache)))
        capture = getattr(model, "graphs", "off") == "capture" and u_like.is_cuda
        cache[key] = PieceSolve(model, budget, u_like, state, capture)
    return cache[key]


def _solve_piece(model: ImplicitLM, u: Tensor, budget: Budget, state: State, rows: Tensor | None, start: int,
                 end: int, valid: Tensor | None, ends: list[int], keep: tuple[int, ...], commit: bool = True):
    u_piece = take_rows(u[:, start:end], rows).contiguous()  # once per piece, not once per f evaluation
    if end - start == 1:  # the step form: the recurrent update of one token
        context = PieceContext(u_piece[:, 0], state, None)
        z0 = torch.zeros(u_piece.shape[0], model.cfg.d_model, dtype=model.cd, device=u.device)
        return solve(_step_map(model, commit), z0, budget, context, None, keep)
    piece_valid = None
    if any(e < end for e in ends if e > start):  # some sequence ends inside the piece: mask its padding
        piece_valid = take_rows(valid[:, start:end], rows)
    context = PieceContext(u_piece, state, piece_valid)
    z0 = torch.zeros(*u_piece.shape[:2], model.cfg.d_model, dtype=model.cd, device=u.device)
    return solve(_parallel_map(model, commit), z0, budget, context, piece_valid, keep)


def _step_map(model: ImplicitLM, commit_last: bool = True):
    """The step form as the solver's map; commit_last=False: even the final evaluation commits no state."""
    def f(z: Tensor, ctx: PieceContext, commit: bool):
        return model.f_step(z, ctx.u, ctx.state, commit and commit_last)

    return f


def _parallel_map(model: ImplicitLM, commit_last: bool = True):
    def f(z: Tensor, ctx: PieceContext, commit: bool):
        return model.f(z, ctx.u, ctx.state, ctx.valid, commit and commit_last)

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


def _empty_stats(length: int, size: int, lengths: Tensor, dtype) -> ReadStats:
    """Zeroed statistics and each piece's valid tokens, from device ops only (capturable in a CUDA graph)."""
    starts = torch.arange(0, length, size, device=lengths.device)
    tokens = (torch.minimum(lengths[:, None], (starts + size)[None]) - starts[None]).clamp_min(0)
    zeros = torch.zeros(tokens.shape, dtype=torch.long, device=tokens.device)
    return ReadStats(zeros, zeros.to(dtype), zeros.bool(), tokens)


def _put_stats(stats: ReadStats, rows: Tensor | None, p: int, solved: SolveStats) -> None:
    index = slice(None) if rows is None else rows
    stats.iterations[index, p] = solved.iterations
    stats.residual[index, p] = solved.residual.to(stats.residual.dtype)
    stats.converged[index, p] = solved.converged


def _single_piece(solved: SolveStats, tokens: Tensor) -> ReadStats:
    return ReadStats(solved.iterations[:, None], solved.residual[:, None], solved.converged[:, None], tokens)
