"""CUDA graphs: a piece's whole fixed-point solve (the readings), and the scoring forward of either model.

Sequential scoring and decoding run one small computation thousands of times: the solve of a one-token piece (or
of a block), a few f evaluations of the whole stack. Launched op by op, the host is the bottleneck. A PieceSolve
holds static buffers for one piece shape (rows, piece length) and budget, and the solve captured as CUDA graphs:

    tol = 0   one graph: max_iter - 1 updates, the final evaluation, the commit of the state (no host involvement)
    tol > 0   a start graph, a segment graph of at most `segment` masked updates (SEGMENT for the pieces of a
              reading, evened out over max_iter - 1: 255 updates as 32 segments of 8, 2 as one of 2), a finish
              graph; the host replays segments until no row is active (one synchronisation per segment, none per
              iteration)

Each update after f is the backend's damped_update (one kernel on the triton backend, the plain twin on the
torch backend). Masked updates give exactly what the gathering solver (fixed_point.solve) gives: a row that
converges keeps its iterate and its count, and stops at max_iter - 1 updates; rows outside the piece (a sequence
that has ended) take no part and keep their state. Only damped iteration (solver "fixed_point", or "backoff": a
damping per row, held in buffers of the solve) stopping on the relative residual (exit "residual") is captured;
Anderson and the other exit criteria run eagerly. The same code runs without capture (capture=False), on any
device: that is what the CPU tests hold to the eager solver, and what the GPU tests hold the captured graphs to.

The forward that scoring runs (no state in, none out: the explicit stack, or the simultaneous reading at tol = 0) is
host-bound on the GPU: about 13 launches a layer, seven of them Triton's, whose Python launch path costs more than
many of the kernels. A ForwardGraph captures it for one (batch, length) shape; ForwardGraphs captures a shape when
it comes twice in a row (a shape seen once would pay a capture for nothing), keeps several, and replays them. The
batches of an evaluation come in many lengths, so the scoring forward runs at padded_length(L): L rounded up to one
of 16 steps per octave (right padding, masked, at most 1/16 more tokens). Batches whose lengths round alike share
one graph, and the first of them (run eagerly) computes at the same shape, so it gets the same bits.

A scoring forward at tol > 0 (the simultaneous reading, which stops on residuals) is a PieceSolve of the whole
padded sequence with no state, one update per segment: an f evaluation over a whole batch of sequences costs
milliseconds, a synchronisation tens of microseconds, and a longer segment would evaluate f for up to segment - 1
updates after every row converged (reading.MaskedReadingGraph, kept by ForwardGraphs like a ForwardGraph).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from ..exits import DEFAULT_EXIT
from ..fixed_point import RowDamping, SolveStats, relative_residual
from ..mamba2 import MixerState, Ops, State
from ..tensors import broadcast_mask, map_tensors

if TYPE_CHECKING:
    from ..config import Budget
    from ..models import ImplicitLM

logger = logging.getLogger(__name__)
SEGMENT = 8  # tol > 0: masked updates per captured segment; the host looks for convergence between segments


def padded_length(length: int) -> int:
    """`length` rounded up to a multiple of 2^(b - 5), b its bit length: 16 lengths per octave, <= 1/16 more."""
    step = 1 << max(0, length.bit_length() - 5)
    return -(-length // step) * step


def trim_length(tree, padded: int, length: int):
    """The tensors of `tree` whose second dimension is `padded` cut back to its first `length` positions: views, no
    copy (a replay's outputs are copies already)."""
    if padded == length:
        return tree
    return map_tensors(tree, lambda t: t[:, :length] if t.dim() > 1 and t.shape[1] == padded else t)


def can_capture(budget: Budget) -> bool:
    """Masked solves run damped iteration (with a damping per row for "backoff") stopping on the relative residual
    (the backends' damped_update); Anderson and the other exit criteria (exits.py) run in the eager solver."""
    return budget.solver in ("fixed_point", "backoff") and budget.exit == DEFAULT_EXIT


def capture(parts: dict, pool=None, warm: dict | None = None) -> tuple[dict, dict]:
    """Each callable of `parts` captured in a CUDA graph, after all of them ran once on a side stream (the warm-up
    compiles and autotunes kernels and settles the allocator); pool: a memory pool shared with other graphs
    (torch.cuda.graph_pool_handle), else each graph has its own; warm: filled with what each warm-up call returned,
    by name, for use on the current stream. Returns the graphs and what each call returned while captured (its
    output buffers), by name."""
    stream, current = torch.cuda.Stream(), torch.cuda.current_stream()
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        for name, fn in parts.items():
            out = fn()
            if warm is not None:  # used on the current stream: its memory must not be reused before that is done
                warm[name] = map_tensors(out, lambda t: t.record_stream(current) or t)
    current.wait_stream(stream)
    graphs, outputs = {}, {}
    for name, fn in parts.items():
        graphs[name] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graphs[name], pool=pool):
            outputs[name] = fn()
    return graphs, outputs


def drain(steps):
    """Run a generator to its end and return what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class PieceSolve:
    """The solve of pieces of one shape: u (R, d_in_proj) for one token, (R, T, d_in_proj) for a block. stateful
    False: no state in or out (a one-piece reading for scoring: the kernels read zeros, nothing is committed); True:
    the solve holds the recurrent state its pieces start from (load_state, clear_state) and each piece advances it.
    ops: the kernels (a backend module); segment: masked updates per segment graph at tol > 0; pool: the memory
    pool to capture into (else a new one)."""

    def __init__(self, model: ImplicitLM, budget: Budget, u_like: Tensor, stateful: bool, capture: bool,
                 ops: Ops, segment: int = SEGMENT, pool=None):
        self.model, self.budget, self.capture, self.ops = model, budget, capture, ops
        # The max_iter - 1 updates in as few segments of at most `segment` as before, balanced: the last segment runs
        # whole, so at max_iter = 3 segments of 8 would evaluate every piece 9 times where 3 do (2 of 2 and a finish).
        updates = max(budget.max_iter - 1, 0)
        self.segments = math.ceil(updates / segment) if budget.tol else 0
        self.segment = math.ceil(updates / self.segments) if self.segments else segment
        rows, dev = u_like.shape[0], u_like.device
        self.step = u_like.dim() == 2
        self.u = torch.zeros_like(u_like)
        self.alive = torch.ones(rows, dtype=torch.bool, device=dev)
        self.valid = None if self.step else torch.ones(u_like.shape[:2], dtype=torch.bool, device=dev)
        self.state = model.empty_state(rows) if stateful else None  # the one state a reading holds
        shape = (rows, model.cfg.d_model) if self.step else (*u_like.shape[:2], model.cfg.d_model)
        self.z = torch.zeros(shape, dtype=model.cd, device=dev)
        self.iterations = torch.zeros(rows, dtype=torch.long, device=dev)
        self.converged = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.active = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.damping = RowDamping.start(rows, budget.tau, self.z) if budget.solver == "backoff" else budget.tau
        self.evaluations = 0  # f evaluations made (every row at once, segments whole), counted on the host
        self.graphs = self._capture(pool) if capture else None

    # -- what is captured ------------------------------------------------------------------------------
    def _f(self, z: Tensor, commit: bool):
        if self.step:  # the commit advances the held state in place (where the backend can), the ended rows kept
            return self.model.f_step(z, self.u, self.held_state, commit, self.ops, in_place=commit,
                                     valid=self.alive if commit else None)
        return self.model.f(z, self.u, self.state, self.valid, commit, self.ops)

    def _start(self) -> None:
        self.z.zero_()
        self.iterations.zero_()
        self.converged.zero_()
        self.active.copy_(self.alive & (self.budget.max_iter > 1))
        if isinstance(self.damping, RowDamping):
            self.damping.reset(self.budget.tau)

    def _update(self) -> None:
        """One damped update of the active rows; a row whose residual meets tol is converged and leaves."""
        b = self.budget
        fz, _ = self._f(self.z, commit=False)
        self.ops.damped_update(self.z, fz, self.valid, self.active, self.iterations, self.converged, self.damping,
                               b.tol, b.max_iter)

    def _finish(self) -> None:
        """The final evaluation (every row), the statistics, and the commit of the alive rows' new states."""
        fz, new_state = self._f(self.z, commit=self.state is not None)
        residual = relative_residual(fz, self.z, self.valid)
        self.out = fz
        self.stats = SolveStats((self.iterations + 1) * self.alive.long(), residual * self.alive,
                                (self.converged | (residual < self.budget.tol)) & self.alive)
        for s, n in zip(self.state or (), new_state or ()):
            if self.step:  # the ended rows took no step: their new state is their old one (Mamba2.step)
                for buffer, value in ((s.conv, n.conv), (s.ssm, n.ssm)):
                    if value is not buffer:  # not advanced in place (the torch backend)
                        buffer.copy_(value)
                continue
            s.conv.copy_(torch.where(broadcast_mask(self.alive, s.conv), n.conv, s.conv))
            s.ssm.copy_(torch.where(broadcast_mask(self.alive, s.ssm), n.ssm.to(s.ssm.dtype), s.ssm))

    def _whole(self) -> None:  # tol = 0: fixed work, nothing to look at on the host
        self._start()
        for _ in range(self.budget.max_iter - 1):
            self._update()
        self._finish()

    def _segment(self) -> None:
        for _ in range(self.segment):
            self._update()

    # -- capture and replay ----------------------------------------------------------------------------
    def _capture(self, pool) -> dict[str, torch.cuda.CUDAGraph]:
        parts = {"whole": self._whole} if not self.budget.tol else \
            {"start": self._start, "segment": self._segment, "finish": self._finish}
        self.alive.zero_()  # the warm-up runs with no row alive, so it commits nothing (no copy of the state to
        # put back: a state is 24 layers x B x H x P x N float32 values); each call sets its own rows
        graphs, _ = capture(parts, pool)
        return graphs

    def __call__(self, u: Tensor, alive: Tensor, valid: Tensor | None) -> tuple[Tensor, SolveStats]:
        """Solve one piece: u like u_like, alive (R,) the rows that have this piece, valid (R, T) for a block.
        The state buffers advance for the alive rows. Returns the final evaluation (R, [T,] D) and statistics."""
        return drain(self.solving(u, alive, valid))

    def solving(self, u: Tensor, alive: Tensor, valid: Tensor | None):
        """__call__ as a generator: it yields once the work before each host synchronisation is launched (a segment,
        at tol > 0), so that a caller with other work on other streams (runtime/readings.py's lanes) can launch
        that before this one waits; it returns what __call__ returns."""
        self.u.copy_(u)
        self.alive.copy_(alive)
        if self.valid is not None:
            self.valid.copy_(valid if valid is not None else alive[:, None].expand_as(self.valid))
        if not self.budget.tol:
            self._run("whole", self._whole)
            self.evaluations += self.budget.max_iter
        else:
            self._run("start", self._start)
            for _ in range(self.segments):
                self._run("segment", self._segment)
                self.evaluations += self.segment
                yield
                if not bool(self.active.any()):  # the one host synchronisation per segment
                    break
            self._run("finish", self._finish)
            self.evaluations += 1
        return self.out, self.stats

    def _run(self, name: str, fn) -> None:
        if self.graphs is None:
            fn()
        else:
            self.graphs[name].replay()

    @property
    def held_state(self) -> State:
        """The state buffers of a solve made with a state_like (a one-token piece always is: reading.read)."""
        return cast(State, self.state)

    def load_state(self, state: State) -> None:
        for s, live in zip(self.held_state, state):
            s.conv.copy_(live.conv)
            s.ssm.copy_(live.ssm)

    def clear_state(self) -> None:
        """The state before any token: zeros."""
        for s in self.held_state:
            s.conv.zero_()
            s.ssm.zero_()

    def current_state(self) -> State:
        return [MixerState(s.conv.clone(), s.ssm.clone()) for s in self.held_state]


class ForwardGraph:
    """fn(*inputs) -> a tree of tensors (tuples, lists, dicts, dataclasses), captured for inputs of given shapes (the
    scoring forward: ids (batch, length) and lengths; a shared context's read: the prefixes' and the continuations'
    too). Made from a call's inputs: the capture's warm-up computes that call's outputs (`first`). A later call
    copies its inputs into the static buffers, replays, and returns a copy of the outputs."""

    def __init__(self, fn, *inputs: Tensor, pool=None):
        self.inputs = [t.clone() for t in inputs]
        warm: dict = {}
        graphs, outputs = capture({"forward": lambda: fn(*self.inputs)}, pool, warm)
        self.graph, self.out = graphs["forward"], outputs["forward"]
        self.first = warm["forward"]

    def __call__(self, *inputs: Tensor):
        for buffer, t in zip(self.inputs, inputs):
            buffer.copy_(t)
        self.graph.replay()
        return map_tensors(self.out, Tensor.clone)  # the buffers are the next replay's outputs


class ForwardGraphs:
    """A model's forward graphs by key (the ids' shape and whatever else the computation depends on). A key is
    captured when it comes twice in a row: a run of batches of one shape is under way (an evaluation's batches come
    sorted by length), where a shape that comes back only now and then would pay its capture for one or two uses. At
    most `keep` graphs are held, the least recently used dropped first. A key whose capture runs out of memory stays
    eager.

    The graphs share one memory pool: replays never overlap and each replay's outputs are copied before the next
    (ForwardGraph.__call__), so the activations of one forward may reuse those of another; a graph held costs its
    output buffers, not its activations. That is what lets an evaluation keep a graph for each of its lengths."""

    def __init__(self, keep: int = 16, make=ForwardGraph):
        self.keep, self.make = keep, make
        self.graphs: dict[tuple, ForwardGraph] = {}
        self.last: tuple | None = None  # the previous call's key
        self.failed: set[tuple] = set()  # keys whose capture ran out of memory
        self.pool: object | None = None  # the shared memory pool, made with the first capture

    def __call__(self, key: tuple, fn, *inputs: Tensor, make=None):
        """fn(*inputs): replayed, captured (the capture's warm-up gives this call's outputs) or run eagerly. The key
        is the first input's shape and `key` (what else the computation and its shapes depend on).
        make(fn, *inputs, pool=pool): what captures it, if not the ForwardGraphs' own (a ForwardGraph)."""
        key, previous = (tuple(inputs[0].shape), *key), self.last
        self.last = key
        graph = self.graphs.pop(key, None)
        if graph is not None:
            self.graphs[key] = graph  # re-inserted: the most recently used comes last
            return graph(*inputs)
        if key != previous or key in self.failed:
            return fn(*inputs)
        while len(self.graphs) >= self.keep:
            self.graphs.pop(next(iter(self.graphs)))
        try:
            if self.pool is None and inputs[0].is_cuda:
                self.pool = torch.cuda.graph_pool_handle()
            graph = (make or self.make)(fn, *inputs, pool=self.pool)
        except torch.OutOfMemoryError:  # this shape stays eager
            self.failed.add(key)
            torch.cuda.empty_cache()
            logger.info("no memory to capture the forward of shape %s in a CUDA graph: it runs eagerly", key[0])
            return fn(*inputs)
        self.graphs[key] = graph
        return graph.first
