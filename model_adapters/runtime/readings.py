"""The readings as the runtime runs them on a GPU: every row masked (no gathering), so that CUDA graphs can hold them.

Their numbers are the eager reading's (reading.read, fixed_point.solve): the CPU tests hold these, uncaptured
(graphs "masked"), to it, and both to the one-file oracle (implicit_lm.py).

    read_whole          one piece at tol = 0, no state in or out, device ops only (one CUDA graph: the scoring
                        forward of anytime grids and fixed budgets)
    read_masked         one piece at tol > 0, no state in or out: a PieceSolve of the whole sequence, one update a
                        replay (the scoring forward at an adaptive budget); MaskedReadingGraph captures it
    read_in_pieces      the sequential and blockwise readings: each piece solved by the PieceSolve of its shape,
                        kept by the runtime and reused by later readings of the same shape
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..fixed_point import solve
from ..mamba2 import Ops, State
from ..reading import PieceContext, Reading, Readout, empty_stats, parallel_map, pieces, put_stats, single_piece
from ..tensors import valid_mask
from .graphs import PieceSolve, can_capture

if TYPE_CHECKING:
    from ..config import Budget
    from ..models import ImplicitLM


def can_read_whole(budget: Budget, length: int) -> bool:
    """Whether read_whole reads `length` tokens under `budget`: one piece of more than one token, a fixed number of
    damped iterations (tol = 0: no look at the residuals on the host)."""
    return len(pieces(length, budget)) == 1 and length > 1 and budget.tol == 0 and can_capture(budget)


def read_whole(model: ImplicitLM, u: Tensor, budget: Budget, lengths: Tensor, keep: tuple[int, ...], ops: Ops
               ) -> Reading:
    """The one-piece reading at tol = 0 with no state in or out, from device ops only (no host synchronisation, so it
    can be captured in a CUDA graph): what read(..., want_state=False) returns for it, the valid mask always applied
    (masking by a mask of ones changes no bit). Every sequence has at least one token."""
    batch, length = u.shape[:2]
    valid = valid_mask(lengths, length)
    z0 = torch.zeros(batch, length, model.cfg.d_model, dtype=model.cd, device=u.device)
    solution = solve(parallel_map(model, False, ops), z0, budget, PieceContext(u, None, valid), valid, keep)
    stats = empty_stats(length, length, lengths, model.cd)
    put_stats(stats, None, 0, solution.stats)
    anytime = {k: Readout(fz, single_piece(solved, stats.tokens)) for k, (fz, solved) in solution.anytime.items()}
    return Reading(solution.fz, None, stats, anytime)


def can_read_masked(budget: Budget, length: int) -> bool:
    """Whether read_masked reads `length` tokens under `budget`: one piece of more than one token, damped iteration
    that stops on residuals (tol > 0; tol = 0 is read_whole's)."""
    return len(pieces(length, budget)) == 1 and length > 1 and budget.tol > 0 and can_capture(budget)


def read_masked(solver: PieceSolve, u: Tensor, lengths: Tensor) -> Reading:
    """The one-piece reading with no state in or out, every row masked (`solver`: a PieceSolve of u's shape, one
    update per segment, captured or not): what read(..., want_state=False) returns, to float tolerance (the eager
    solver gathers the rows still iterating). Every sequence has at least one token."""
    length = u.shape[1]
    out, solved = solver(u, lengths > 0, valid_mask(lengths, length))
    stats = empty_stats(length, length, lengths, solver.model.cd)
    put_stats(stats, None, 0, solved)
    return Reading(out if solver.graphs is None else out.clone(), None, stats)  # a replay's buffers are the next's


class MaskedReadingGraph:
    """read_masked captured for ids of one (batch, length) shape, kept by graphs.ForwardGraphs as it keeps a
    ForwardGraph: `first` is the reading of the ids it was made from, a call reads new ids (the injection eagerly,
    the solve replayed: a start graph, one graph per update until no row is active, a finish graph). capture=False:
    the same arithmetic uncaptured (the CPU tests)."""

    def __init__(self, model: ImplicitLM, budget: Budget, ops: Ops, ids: Tensor, lengths: Tensor, pool=None,
                 capture: bool = True):
        self.model = model
        u = model.inject(ids)  # once: the capture's shapes and the first reading's injection
        self.solver = PieceSolve(model, budget, u, False, capture, ops, segment=1, pool=pool)
        self.first = read_masked(self.solver, u, lengths)

    def __call__(self, ids: Tensor, lengths: Tensor) -> Reading:
        return read_masked(self.solver, self.model.inject(ids), lengths)


def read_in_pieces(solver_for, model: ImplicitLM, u: Tensor, budget: Budget, lengths: Tensor | None,
                   state: State | None, want_state: bool = True) -> Reading:
    """Every piece solved for every row by the PieceSolve of its shape (solver_for(u_piece)), the rows whose sequence
    has ended masked. A shorter last block is read at the blocks' size, its missing tokens padding (as a sequence
    that ends inside a block is): every piece of a batch then has one shape, so a run whose batches differ in length
    (lm-eval sorts them by it) captures one solve per batch size instead of one per remainder of the block size.
    The solver holds the one state of the reading: `state` (None: zeros) is loaded into it, and a copy of where it
    ends is returned only when want_state."""
    batch, length = u.shape[:2]
    lengths = lengths if lengths is not None else torch.full((batch,), length, dtype=torch.long, device=u.device)
    valid = valid_mask(lengths, length)
    assert valid is not None  # lengths is set above
    hidden = torch.zeros(batch, length, model.cfg.d_model, dtype=model.cd, device=u.device)
    size = budget.piece_size(length)
    stats = empty_stats(length, size, lengths, model.cd)
    solver: PieceSolve | None = None
    for p, (start, end) in enumerate(pieces(length, budget)):
        u_piece, valid_piece = (u[:, start], None) if size == 1 else _whole_block(u, valid, start, end, size)
        if solver is None or tuple(solver.u.shape) != tuple(u_piece.shape):
            previous, solver = solver, solver_for(u_piece)
            if previous is not None:
                solver.load_state(previous.held_state)
            elif state is not None:
                solver.load_state(state)
            else:
                solver.clear_state()
        out, solved = solver(u_piece, lengths > start, valid_piece)
        hidden[:, start:end] = out[:, None] if size == 1 else out[:, :end - start]
        put_stats(stats, None, p, solved)
    hidden = hidden * valid[..., None]  # padding: zeros, as the eager reading leaves it
    assert solver is not None  # a sequence has at least one piece
    return Reading(hidden, solver.current_state() if want_state else None, stats)


def _whole_block(u: Tensor, valid: Tensor, start: int, end: int, size: int) -> tuple[Tensor, Tensor]:
    """The injection and valid mask of tokens [start, end) as a block of `size` tokens, right-padded: padding takes
    no step (dt = 0), is left out of the residuals and is read at each sequence's own end by the conv, so the valid
    tokens read as in a block of end - start (to float rounding: the kernels sum over the longer block)."""
    u_piece, valid_piece = u[:, start:end], valid[:, start:end]
    short = size - (end - start)
    if not short:
        return u_piece, valid_piece
    return F.pad(u_piece, (0, 0, 0, short)), F.pad(valid_piece, (0, short), value=False)
