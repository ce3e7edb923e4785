"""A model with what makes it fast: its kernels, CUDA graphs and the caches of captured computations.

The models (models.py) hold parameters and semantics and take their kernels as an argument; a Runtime wraps one and
decides how each computation runs, in one place:

    kernels     `backend` resolved by backends.resolve_backend: "torch" (the plain twin, the CPU path) or "triton"
    graphs      "off": eagerly, the solver gathering the rows still iterating (reading.read);
                "capture": on CUDA, the scoring forward replayed from CUDA graphs by padded shape (graphs.ForwardGraphs;
                the implicit one-piece reading through read_whole at tol = 0, read_masked at tol > 0), and the
                sequential and blockwise readings solved piece by piece in captured PieceSolves (budgets of damped
                iteration stopping on the relative residual; other solvers and exit criteria run eagerly, logged);
                "masked": the same masked piece solves without capture, on any device (what the CPU tests hold to
                the eager reading)
    caches      forward graphs and piece solves, emptied whenever a parameter changes (in place or replaced): a
                CUDA graph reads the weights, and what was derived from them, as they were at its capture
    lanes       the sequential and blockwise readings' rows in this many groups, each solved by piece solves of its
                own on its own CUDA stream, advanced in turn by the host (readings.read_in_pieces); default LANES

Numbers do not depend on the choice beyond float tolerance (the tests hold every path to the eager one, and that to
the one-file oracle, implicit_lm.py).
"""

from __future__ import annotations

import logging
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backends import get_ops
from ..config import Budget
from ..errors import ConfigError
from ..exits import DEFAULT_EXIT, ExitPoint
from ..mamba2 import State
from ..models import ExplicitLM, ImplicitLM, LMOutput
from ..reading import Reading, pieces
from ..tensors import valid_mask
from .graphs import ForwardGraphs, PieceSolve, can_capture, padded_length, trim_length
from .readings import (
    MaskedReadingGraph,
    can_read_masked,
    can_read_whole,
    read_in_pieces,
    read_masked,
    read_whole,
)

logger = logging.getLogger(__name__)
GRAPH_MODES = ("off", "capture", "masked")
PIECE_SOLVES_KEPT = 8  # a few shapes per run: the batch size, a shorter last batch (last blocks are padded)
LANES = 1  # row groups of a reading in pieces, each on its own CUDA stream (readings.read_in_pieces)


class Runtime:
    """runtime(ids, budget, ...) and runtime.step(...) as the model's forward and step, run as this runtime says."""

    def __init__(self, model: ExplicitLM | ImplicitLM, backend: str = "torch", graphs: str = "off",
                 lanes: int | None = None):
        if graphs not in GRAPH_MODES:
            raise ConfigError(f"graphs must be one of {GRAPH_MODES}, got {graphs!r}")
        lanes = LANES if lanes is None else lanes
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise ConfigError(f"lanes must be a whole number >= 1, got {lanes!r}")
        self.model, self.backend, self.graphs, self.lanes = model, backend, graphs, lanes
        self.ops = get_ops(backend)
        self._caches: dict[str, object] = {}
        self._weights_version: tuple | None = None
        self._noted_exits: set[str] = set()  # exit criteria whose eager solves were logged

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def implicit(self) -> ImplicitLM:
        """The model on the implicit paths (__call__ sends an explicit model to its own)."""
        return cast(ImplicitLM, self.model)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.logits(hidden)

    def __call__(self, ids: Tensor, budget: Budget | None = None, lengths: Tensor | None = None,
                 state: State | None = None, anytime=(), want_state: bool = True) -> LMOutput:
        """The model's forward (see models.py) with this runtime's kernels, graphs and caches."""
        if isinstance(self.model, ExplicitLM):
            return self._explicit(ids, budget, lengths, state, anytime, want_state)
        return self._implicit(ids, budget, lengths, state, anytime, want_state)

    def step(self, token_ids: Tensor, state: State, budget: Budget | None = None) -> LMOutput:
        return self.model.step(token_ids, state, budget, ops=self.ops)

    # -- explicit ------------------------------------------------------------------------------------
    def _explicit(self, ids, budget, lengths, state, anytime, want_state) -> LMOutput:
        if budget is None and not anytime and self._graphable(ids, state, want_state):
            return LMOutput(self._captured_scoring((), self._explicit_scoring, ids, lengths), None)
        return self.model(ids, budget, lengths, state, anytime, want_state, ops=self.ops)

    def _explicit_scoring(self, ids: Tensor, lengths: Tensor) -> Tensor:
        model = self.model
        valid = valid_mask(lengths, ids.shape[1])
        return model.stack(model.embed(ids), None, None, valid, commit=False, ops=self.ops)[0]

    # -- implicit ------------------------------------------------------------------------------------
    def _implicit(self, ids, budget, lengths, state, anytime, want_state) -> LMOutput:
        model = self.implicit
        budget = budget or model.cfg.default_budget()
        keep = budget.anytime_budgets(anytime)
        model.check_ids(ids)
        self._note_eager_exit(budget, keep)
        if self._graphable(ids, state, want_state) and (lengths is None or bool(lengths.min() > 0)):
            r = self._captured_reading(budget, keep, ids, lengths)
            if r is not None:
                return LMOutput(r.hidden, None, r.stats, r.anytime)
        u = model.inject(ids)
        if self._in_piece_solves(budget, keep, u):
            r = read_in_pieces(self.piece_solve_for(budget), model, u, budget, lengths, state, want_state,
                               self.lanes)
            return LMOutput(r.hidden, r.state, r.stats, r.anytime)
        return model(ids, budget, lengths, state, anytime, want_state, ops=self.ops)

    def _captured_reading(self, budget: Budget, keep: tuple[int, ...], ids: Tensor, lengths: Tensor | None
                          ) -> Reading | None:
        """The scoring reading from CUDA graphs where its budget allows (one piece of damped iteration): read_whole
        at tol = 0, read_masked at tol > 0; None where it does not."""
        length = ids.shape[1]
        model, ops = self.implicit, self.ops
        if any(isinstance(k, ExitPoint) for k in keep):  # exit tests read the head: eagerly
            return None
        if all(can_read_whole(budget, n) for n in (length, padded_length(length))):
            def whole(ids: Tensor, lengths: Tensor) -> Reading:
                return read_whole(model, model.inject(ids), budget, lengths, keep, ops)

            return self._captured_scoring((budget, keep), whole, ids, lengths)
        if all(can_read_masked(budget, n) for n in (length, padded_length(length))):
            def masked(ids: Tensor, lengths: Tensor) -> Reading:  # eagerly: a fresh, uncaptured masked solve
                u = model.inject(ids)
                return read_masked(PieceSolve(model, budget, u, False, False, ops, segment=1), u, lengths)

            def capture(fn, ids: Tensor, lengths: Tensor, pool) -> MaskedReadingGraph:
                return MaskedReadingGraph(model, budget, ops, ids, lengths, pool)

            return self._captured_scoring((budget, keep), masked, ids, lengths, capture)
        return None

    def _in_piece_solves(self, budget: Budget, keep: tuple, u: Tensor) -> bool:
        """Sequential and blockwise readings run in masked PieceSolves: captured on CUDA ("capture"), or uncaptured
        on any device ("masked"); never inside a caller's own graph capture, and only for damped iteration."""
        if self.graphs == "off" or keep or len(pieces(u.shape[1], budget)) == 1 or not can_capture(budget):
            return False
        capturing = u.is_cuda and torch.cuda.is_current_stream_capturing()
        return not capturing and (self.graphs == "masked" or u.is_cuda)

    def _note_eager_exit(self, budget: Budget, keep: tuple) -> None:
        """Masked and captured solves test the relative residual only (graphs.can_capture): a budget that stops on
        another criterion, or reads exit points off a trajectory, runs in the eager solver. Said once per criterion."""
        exits = {budget.exit} - {DEFAULT_EXIT} if budget.tol else set()
        exits |= {k.exit for k in keep if isinstance(k, ExitPoint)}
        if self.graphs == "off" or not exits - self._noted_exits:
            return
        self._noted_exits |= exits
        logger.info("exit criteria %s: masked and captured solves (graphs=%s) test the relative residual only; these "
                    "budgets' readings run in the eager solver (fixed_point.solve), with a head evaluation per "
                    "iteration where the criterion reads the next-token distribution", sorted(exits), self.graphs)

    # -- captured computations and their caches ------------------------------------------------------
    def _graphable(self, ids: Tensor, state: State | None, want_state: bool) -> bool:
        """With graphs "capture", a forward on CUDA without state in or out (scoring) may replay a CUDA graph."""
        return (self.graphs == "capture" and ids.is_cuda and state is None and not want_state
                and not torch.is_grad_enabled() and not torch.cuda.is_current_stream_capturing())

    def _captured_scoring(self, key: tuple, fn, ids: Tensor, lengths: Tensor | None, make=None):
        """fn(ids, lengths), the scoring forward, run at padded_length(L) (right padding, masked): eagerly, or captured
        in a CUDA graph and replayed once that padded shape comes twice in a row (ForwardGraphs; the same shape, so
        the same bits; make: how to capture it, if not as one graph of fn). Outputs come back cut to L positions."""
        batch, length = ids.shape
        if lengths is None:
            lengths = torch.full((batch,), length, dtype=torch.long, device=ids.device)
        padded = padded_length(length)
        ids = F.pad(ids, (0, padded - length))
        graphs = self.cache("forward_graphs", ForwardGraphs)
        return trim_length(graphs(key, fn, ids, lengths, make=make), padded, length)

    def replayed(self, key: tuple, fn, *inputs: Tensor):
        """fn(*inputs), a computation with no state in or out whose inputs the caller padded to shapes that recur
        (padded_length: see `pads`), replayed from CUDA graphs like the scoring forward where this runtime captures
        (ForwardGraphs: by the first input's shape and `key`, which names the computation and the other inputs'
        shapes), else run as it is."""
        if self._graphable(inputs[0], None, False):
            return self.cache("forward_graphs", ForwardGraphs)(key, fn, *inputs)
        return fn(*inputs)

    @property
    def pads(self) -> bool:
        """Whether callers of `replayed` pad their inputs: wherever graphs are on ("masked" runs the same padded
        computations uncaptured, which is what the CPU tests hold to the unpadded ones)."""
        return self.graphs != "off"

    def piece_solve_for(self, budget: Budget):
        """solver_for(u_like, lane): the PieceSolve of that shape, budget and lane (each lane of a reading holds a state
        of its own), made (and captured, on CUDA) on first use and kept."""
        def solver_for(u_like: Tensor, lane: int = 0) -> PieceSolve:
            return self.piece_solve(budget, u_like, lane)

        return solver_for

    def piece_solve(self, budget: Budget, u_like: Tensor, lane: int = 0) -> PieceSolve:
        """The stateful PieceSolve of u_like's shape and this budget for `lane` (its state is the caller's to
        load)."""
        cache = self.cache("piece_solves", dict)
        key = (tuple(u_like.shape), u_like.dtype, str(u_like.device), budget, lane)
        if key not in cache:
            if len(cache) >= PIECE_SOLVES_KEPT * self.lanes:
                cache.pop(next(iter(cache)))
            capture = self.graphs == "capture" and u_like.is_cuda
            cache[key] = PieceSolve(self.implicit, budget, u_like, True, capture, self.ops)
        return cache[key]

    def cache(self, name: str, make):
        """The cache `name` of captured computations, made by make() and emptied whenever a parameter changes."""
        version = tuple((p.data_ptr(), p._version) for p in self.model.parameters())
        if self._weights_version != version:
            self._weights_version = version
            self._caches.clear()
        if name not in self._caches:
            self._caches[name] = make()
        return self._caches[name]
