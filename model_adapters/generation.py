"""Greedy decoding with the recurrent state: the prompt is processed once, then one step per token.

For an explicit model a step is O(1) work; for an implicit model it is the sequential fixed-point step at
the given budget. The host looks at the generated tokens only every `check_every` tokens (to test stop
sequences); tokens produced past a stop are discarded, which cannot change greedy output before it.

On CUDA the step can be captured once as a CUDA graph and replayed (`GraphedStep`): that removes the launch
overhead that dominates small-batch decoding. Capture needs a step whose work does not depend on the data,
so it is used for explicit models and for implicit ones at tol = 0; `use_cuda_graphs` decides, in one place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .config import Budget
from .convergence import ConvergenceLog
from .models import ExplicitLM, ImplicitLM
from .tensors import NonFiniteError, take_rows


def right_pad(seqs: list[list[int]], device: torch.device, pad: int = 0) -> tuple[Tensor, Tensor]:
    """(ids (B, L) right-padded with `pad`, lengths (B,))."""
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    ids = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long, device=device)
    return ids, lengths


def use_cuda_graphs(model: ExplicitLM | ImplicitLM, budget: Budget | None, requested: bool | None) -> bool:
    """Graphs need CUDA and a data-independent step (explicit, or implicit at tol = 0). None = when possible."""
    possible = model.embedding.weight.is_cuda and (budget is None or budget.tol == 0)
    if requested and not possible:
        raise ValueError("cuda_graphs needs a CUDA device and, for implicit models, tol=0 (early stopping "
                         "depends on the data)")
    return possible if requested is None else requested


class GraphedStep:
    """model.step for one batch size, captured as a CUDA graph over static input and state buffers."""

    def __init__(self, model: ExplicitLM | ImplicitLM, batch: int, budget: Budget | None, vocab_size: int):
        self.token = torch.zeros(batch, dtype=torch.long, device=model.embedding.weight.device)
        self.state = model.empty_state(batch)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: compile kernels, settle the allocator
            for _ in range(2):
                model.step(self.token, self.state, budget)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = model.step(self.token, self.state, budget)
            self.next_token, self.finite = next_token(model.logits(self.out.hidden), vocab_size)

    def __call__(self, token: Tensor, state) -> tuple[Tensor, Tensor, list]:
        self.token.copy_(token)
        for static, live in zip(self.state, state):
            static.conv.copy_(live.conv)
            static.ssm.copy_(live.ssm)
        self.graph.replay()
        return self.next_token, self.finite, self.out.state


def next_token(logits: Tensor, vocab_size: int) -> tuple[Tensor, Tensor]:
    """Greedy tokens over the real vocabulary, and a device flag: were all logits finite (checked at flush)."""
    return logits[:, :vocab_size].argmax(-1), torch.isfinite(logits).all()


@torch.inference_mode()
def greedy_generate(model: ExplicitLM | ImplicitLM, prompts: list[list[int]], max_new_tokens: int,
                    budget: Budget | None, is_done: Callable[[int, list[int]], bool], vocab_size: int,
                    check_every: int = 16, log: ConvergenceLog | None = None,
                    cuda_graphs: bool | None = None) -> list[list[int]]:
    """Generate up to max_new_tokens for each prompt; is_done(row, tokens) says when a row may stop."""
    device = model.embedding.weight.device
    ids, lengths = right_pad(prompts, device)
    out = model(ids, budget, lengths=lengths)
    _log(log, out)
    last = out.hidden[torch.arange(len(prompts), device=device), lengths - 1]
    token, finite = next_token(model.logits(last), vocab_size)
    state, rows = out.state, torch.arange(len(prompts), device=device)
    graphed = GraphedStep(model, len(prompts), budget, vocab_size) \
        if use_cuda_graphs(model, budget, cuda_graphs) and max_new_tokens > 1 else None
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
            if graphed is None:  # a graph has a fixed batch: finished rows ride along, their tokens ignored
                state, token = take_rows(state, keep), token[keep]
        if graphed is not None:  # batch position == original row: keep the active rows' tokens
            token, ok, state = graphed(token, state)
            finite = finite & ok
            pending.append(token[rows])
            _log(log, graphed.out)
            continue
        out = model.step(token, state, budget)
        _log(log, out)
        token, ok = next_token(model.logits(out.hidden), vocab_size)
        state, finite = out.state, finite & ok
        pending.append(token)
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


def _log(log: ConvergenceLog | None, out) -> None:
    if log is not None and out.stats is not None:
        log.add(out.stats)
