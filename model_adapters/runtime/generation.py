"""Greedy decoding with the recurrent state: the prompt is read once, then one step per token.

For an explicit model a step is O(1) work; for an implicit model it is the reading of one more token at the
budget (reading.py): the same computation as the sequential reading. Decoding runs through a Runtime (its kernels,
graphs and piece solves). The host looks at the generated tokens only
every `check_every` tokens (to test stop sequences); tokens produced past a stop are discarded, which cannot change
greedy output before it.

A stepper owns the recurrent state and turns a token into the next one:
    EagerStep      model.step op by op (the CPU path; rows that finished leave the batch)
    GraphedStep    CUDA: the whole step, logits and argmax captured in one CUDA graph, the state updated in place
                   in the graph (explicit models, implicit ones at tol = 0: data-independent work)
    SolvedStep     CUDA, implicit at tol > 0: the token's solve in captured segments (graphs.PieceSolve)
`make_stepper` chooses, in one place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..config import Budget
from ..convergence import ConvergenceLog
from ..errors import NonFiniteError
from ..mamba2 import MixerState
from ..reading import ReadStats
from ..tensors import take_rows
from .graphs import can_capture
from .runtime import Runtime


def right_pad(seqs: list[list[int]], device: torch.device, pad: int = 0) -> tuple[Tensor, Tensor]:
    """(ids (B, L) right-padded with `pad`, lengths (B,))."""
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    ids = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long, device=device)
    return ids, lengths


def next_token(logits: Tensor, vocab_size: int) -> tuple[Tensor, Tensor]:
    """Greedy tokens over the real vocabulary, and a device flag: were all logits finite (checked at flush)."""
    return logits[:, :vocab_size].argmax(-1), torch.isfinite(logits).all()


class EagerStep:
    def __init__(self, runtime: Runtime, state, budget: Budget | None, vocab_size: int):
        self.runtime, self.state, self.budget, self.vocab_size = runtime, state, budget, vocab_size

    def __call__(self, token: Tensor) -> tuple[Tensor, Tensor, ReadStats | None]:
        out = self.runtime.step(token, self.state, self.budget)
        self.state = out.state
        return (*next_token(self.runtime.logits(out.hidden), self.vocab_size), out.stats)

    def keep(self, positions: Tensor) -> None:
        """Rows that finished leave the batch (a fixed-batch stepper keeps them, their tokens ignored)."""
        self.state = take_rows(self.state, positions)


class GraphedStep:
    """model.step, logits and argmax for one batch size, captured as one CUDA graph. The state lives in static
    buffers that the graph itself advances, so a replay copies in nothing but the token.

    `state` (the prompt's, which nothing else reads) becomes those buffers: no second copy of it. The warm-up steps
    run on a scratch state of one layer's size shared by every layer, since a triton step advances the SSM state in
    place (warming up on the graph's own buffers started decoding two steps of token 0 beyond the prompt)."""

    def __init__(self, runtime: Runtime, state, budget: Budget | None, vocab_size: int):
        self.token = torch.zeros(state[0].ssm.shape[0], dtype=torch.long, device=state[0].ssm.device)
        self.state = [MixerState(s.conv.contiguous(), s.ssm.contiguous()) for s in state]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: compile and autotune kernels, settle the allocator
            scratch = _scratch_state(self.state)
            for _ in range(2):
                runtime.step(self.token, scratch, budget)
            del scratch
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            out = runtime.step(self.token, self.state, budget)
            assert out.state is not None  # a step commits its state
            self.next_token, self.finite = next_token(runtime.logits(out.hidden), vocab_size)
            self.stats = out.stats
            for static, new in zip(self.state, out.state):
                for buffer, value in ((static.conv, new.conv), (static.ssm, new.ssm)):
                    if value.data_ptr() != buffer.data_ptr():  # an in-place step (triton) already advanced it
                        buffer.copy_(value)

    def __call__(self, token: Tensor) -> tuple[Tensor, Tensor, ReadStats | None]:
        self.token.copy_(token)
        self.graph.replay()
        return self.next_token, self.finite, self.stats

    def keep(self, positions: Tensor) -> None:
        pass


class SolvedStep:
    """An implicit model's step at tol > 0 on CUDA: the token's solve replayed in captured segments."""

    def __init__(self, runtime: Runtime, state, budget: Budget, vocab_size: int):
        self.runtime, self.vocab_size = runtime, vocab_size
        self.tokens = torch.ones(state[0].ssm.shape[0], 1, dtype=torch.long, device=state[0].ssm.device)
        u = runtime.implicit.inject(self.tokens[:, 0])
        self.solve = runtime.piece_solve(budget, u)
        self.solve.load_state(state)
        self.alive = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)

    def __call__(self, token: Tensor) -> tuple[Tensor, Tensor, ReadStats]:
        hidden, solved = self.solve(self.runtime.implicit.inject(token), self.alive, None)
        stats = ReadStats(solved.iterations[:, None].clone(), solved.residual[:, None].clone(),
                          solved.converged[:, None].clone(), self.tokens)
        return (*next_token(self.runtime.logits(hidden), self.vocab_size), stats)

    def keep(self, positions: Tensor) -> None:
        pass


def _scratch_state(state: list[MixerState]) -> list[MixerState]:
    """A state of the same shapes for throwaway steps, with one copy per distinct layer shape (1/n_layers of a
    state where all layers are alike): its values do not matter, only that they are the model's kind of state."""
    copies: dict[tuple, MixerState] = {}
    for s in state:
        copies.setdefault(_layout(s), MixerState(s.conv.clone(), s.ssm.clone()))
    return [copies[_layout(s)] for s in state]


def _layout(s: MixerState) -> tuple:
    return s.conv.shape, s.conv.dtype, s.ssm.shape, s.ssm.dtype


def make_stepper(runtime: Runtime, state, budget: Budget | None, vocab_size: int, cuda_graphs: bool | None):
    """Graphs need CUDA; None = whenever possible. Explicit models and implicit ones at tol = 0 capture the whole
    step; implicit ones at tol > 0 capture the solve in segments (damped iteration stopping on the residual only)."""
    on_cuda = runtime.model.embedding.weight.is_cuda
    if cuda_graphs and not on_cuda:
        raise ValueError("cuda_graphs needs a CUDA device")
    if cuda_graphs is False or not on_cuda:
        return EagerStep(runtime, state, budget, vocab_size)
    if budget is None or budget.tol == 0:
        return GraphedStep(runtime, state, budget, vocab_size)
    if can_capture(budget):
        return SolvedStep(runtime, state, budget, vocab_size)
    if cuda_graphs:
        raise ValueError(f"cuda_graphs at tol > 0 needs solver=fixed_point and exit=residual, got "
                         f"solver={budget.solver}, exit={budget.exit}")
    return EagerStep(runtime, state, budget, vocab_size)


@torch.inference_mode()
def greedy_generate(runtime: Runtime, prompts: list[list[int]], max_new_tokens: int,
                    budget: Budget | None, is_done: Callable[[int, list[int]], bool], vocab_size: int,
                    check_every: int = 16, log: ConvergenceLog | None = None,
                    cuda_graphs: bool | None = None) -> list[list[int]]:
    """Generate up to max_new_tokens for each prompt; is_done(row, tokens) says when a row may stop."""
    device = runtime.model.embedding.weight.device
    ids, lengths = right_pad(prompts, device)
    out = runtime(ids, budget, lengths=lengths)
    _log(log, out.stats)
    last = out.hidden[torch.arange(len(prompts), device=device), lengths - 1]
    token, finite = next_token(runtime.logits(last), vocab_size)
    rows = torch.arange(len(prompts), device=device)
    stepper = make_stepper(runtime, out.state, budget, vocab_size, cuda_graphs) if max_new_tokens > 1 else None
    fixed_batch = not isinstance(stepper, EagerStep)
    generated: list[list[int]] = [[] for _ in prompts]
    pending = [token]
    for step in range(1, max_new_tokens + 1):
        if step % check_every == 0 or step == max_new_tokens:
            if not bool(finite):
                raise NonFiniteError("the model produced non-finite logits (NaN/inf) while generating; no token is "
                                     "reported from them")
            rows, keep = _flush(pending, rows, generated, is_done)
            pending = []
            if rows.numel() == 0 or step == max_new_tokens:
                break
            if not fixed_batch:
                assert stepper is not None  # max_new_tokens > 1 here (one token stops at its flush)
                stepper.keep(keep)
                token = token[keep]
        assert stepper is not None  # as above
        token, ok, stats = stepper(token)
        finite = finite & ok
        pending.append(token[rows] if fixed_batch else token)
        _log(log, stats)
    return generated


def _flush(pending: list[Tensor], rows: Tensor, generated: list[list[int]], is_done) -> tuple[Tensor, Tensor]:
    """Move pending tokens to the host; returns the rows still running and their positions in the batch."""
    block = torch.stack(pending, 1).tolist() if pending else [[] for _ in rows]
    keep = []
    for position, (row, tokens) in enumerate(zip(rows.tolist(), block)):
        generated[row].extend(tokens)
        if not is_done(row, generated[row]):
            keep.append(position)
    keep_t = torch.tensor(keep, dtype=torch.long, device=rows.device)
    return rows[keep_t], keep_t


def _log(log: ConvergenceLog | None, stats: ReadStats | None) -> None:
    if log is not None and stats is not None:
        log.add(stats)
