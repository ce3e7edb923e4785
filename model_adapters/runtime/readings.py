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

import contextlib
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..fixed_point import solve
from ..mamba2 import MixerState, Ops, State
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
                   state: State | None, want_state: bool = True, lanes: int = 1) -> Reading:
    """Every piece solved for every row by the PieceSolve of its shape (solver_for(u_piece, lane)), the rows whose
    sequence has ended masked. A shorter last block is read at the blocks' size, its missing tokens padding (as a
    sequence that ends inside a block is): every piece of a batch then has one shape, so a run whose batches differ
    in length (lm-eval sorts them by it) captures one solve per batch size instead of one per remainder of the block
    size. The solvers hold the one state of the reading: `state` (None: zeros) is loaded into them, and a copy of
    where it ends is returned only when want_state.

    lanes: the rows in that many groups (row_groups), each read by solves of its own on its own CUDA stream, so
    that one group's small kernels run in the launch gaps and tails of the other's (rows are independent). The host
    advances the lanes in turn, each to its next synchronisation (a look at its residuals at tol > 0, the end of a
    piece): while it waits for one lane, the work launched for the others runs. On the CPU the lanes run one after
    another, the same arithmetic. Measured on an H100 (BENCHMARKS.md), the 130M model's sequential reading at batch 16
    ran 0.89x as fast in 2 lanes and 0.82x in 4 as in one: one group already keeps that GPU as busy as this work can,
    so the default is one lane."""
    batch, length = u.shape[:2]
    lengths = lengths if lengths is not None else torch.full((batch,), length, dtype=torch.long, device=u.device)
    valid = valid_mask(lengths, length)
    assert valid is not None  # lengths is set above
    hidden = torch.zeros(batch, length, model.cfg.d_model, dtype=model.cd, device=u.device)
    stats = empty_stats(length, budget.piece_size(length), lengths, model.cd)
    groups = row_groups(batch, lanes)
    lanes_ = [_Lane(rows, lane, u.device, len(groups) > 1) for lane, rows in enumerate(groups)]
    _in_turn([(lane, lane.read(solver_for, u, valid, lengths, state, budget, hidden, stats)) for lane in lanes_])
    for lane in lanes_:  # joined: what follows reads their outputs on the current stream
        if lane.stream is not None:
            torch.cuda.current_stream(u.device).wait_stream(lane.stream)
    hidden = hidden * valid[..., None]  # padding: zeros, as the eager reading leaves it
    out_state = _joined([lane.held().current_state() for lane in lanes_]) if want_state else None
    return Reading(hidden, out_state, stats)


def _in_turn(readers: list) -> None:
    """Each (lane, reading generator) advanced in turn on the lane's stream, one synchronisation at a time, until
    every reading has ended."""
    while readers:
        for item in list(readers):
            lane, reader = item
            with lane.stream_context():
                try:
                    next(reader)
                except StopIteration:
                    readers.remove(item)


def row_groups(batch: int, lanes: int) -> list[slice]:
    """`batch` rows in at most `lanes` contiguous groups of near-equal size (the first ones one row larger)."""
    lanes = max(1, min(lanes, batch))
    size, extra = divmod(batch, lanes)
    bounds = [0]
    for g in range(lanes):
        bounds.append(bounds[-1] + size + (g < extra))
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


class _Lane:
    """A group of rows and its solves, on its own CUDA stream (forked from the current one) when there are several
    lanes on a GPU."""

    def __init__(self, rows: slice, index: int, device: torch.device, own_stream: bool):
        self.rows, self.index = rows, index
        self.solver: PieceSolve | None = None
        self.stream = torch.cuda.Stream(device) if own_stream and device.type == "cuda" else None
        if self.stream is not None:  # the inputs were made on the current stream
            self.stream.wait_stream(torch.cuda.current_stream(device))

    def stream_context(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def held(self) -> PieceSolve:
        assert self.solver is not None  # a sequence has at least one piece
        return self.solver

    def read(self, solver_for, u: Tensor, valid: Tensor, lengths: Tensor, state: State | None, budget: Budget,
             hidden: Tensor, stats):
        """This lane's rows read piece by piece (a generator: it yields at each host synchronisation and after each
        piece): each piece by the solve of its shape (made, loaded with the state, on first use), its final
        evaluation put into `hidden` and its statistics into `stats`."""
        rows, length = self.rows, u.shape[1]
        size = budget.piece_size(length)
        for p, (start, end) in enumerate(pieces(length, budget)):
            u_piece, valid_piece = (u[rows, start], None) if size == 1 else \
                _whole_block(u[rows], valid[rows], start, end, size)
            if self.solver is None or tuple(self.solver.u.shape) != tuple(u_piece.shape):
                previous, self.solver = self.solver, solver_for(u_piece, self.index)
                if previous is not None:
                    self.solver.load_state(previous.held_state)
                elif state is not None:
                    self.solver.load_state([MixerState(s.conv[rows], s.ssm[rows]) for s in state])
                else:
                    self.solver.clear_state()
            out, solved = yield from self.solver.solving(u_piece, lengths[rows] > start, valid_piece)
            hidden[rows, start:end] = out[:, None] if size == 1 else out[:, :end - start]
            put_stats(stats, rows, p, solved)
            yield


def _joined(states: list[State]) -> State:
    """The lanes' states (each a copy, made on the current stream after the lanes joined) as one batch."""
    if len(states) == 1:
        return states[0]
    return [MixerState(torch.cat([s[i].conv for s in states]), torch.cat([s[i].ssm for s in states]))
            for i in range(len(states[0]))]


def _whole_block(u: Tensor, valid: Tensor, start: int, end: int, size: int) -> tuple[Tensor, Tensor]:
    """The injection and valid mask of tokens [start, end) as a block of `size` tokens, right-padded: padding takes
    no step (dt = 0), is left out of the residuals and is read at each sequence's own end by the conv, so the valid
    tokens read as in a block of end - start (to float rounding: the kernels sum over the longer block)."""
    u_piece, valid_piece = u[:, start:end], valid[:, start:end]
    short = size - (end - start)
    if not short:
        return u_piece, valid_piece
    return F.pad(u_piece, (0, 0, 0, short)), F.pad(valid_piece, (0, short), value=False)
