"""The context of multiple-choice requests read once, the recurrent state branching per continuation.

A multiple-choice task scores several continuations of one context. Read from the start, every (context +
continuation) reads the context again; a recurrent model can read it once and go on from there per continuation.
Scorer.score(items, share=True) hands over the distinct model inputs that begin with the same context; each is read
in one of two ways, each the same computation as the un-shared reading in another order (so the same numbers, to
float tolerance):

    state        explicit models, and readings whose pieces do not depend on the sequence's length (sequential,
                 blockwise): the prefix is read once with its recurrent state committed, every member's rest from
                 that state. For an implicit model the prefix ends on a piece boundary of the un-shared reading
                 (blockwise: the last multiple of block_size inside the context, the context's last tokens read with
                 the continuation), so every piece is solved on the same tokens from the same state, tol > 0 included
                 (a piece stops on its own residual).
    lockstep     one-piece readings (simultaneous; blockwise when the sequence fits one block) at tol = 0 with the
                 damped solver: every row makes max_iter evaluations, and by causality the context's positions follow
                 the same iterates whatever follows them. Prefix and continuations iterate side by side: evaluation j
                 of a continuation starts from each layer's state at the context's end under evaluation j of the
                 prefix. Anytime budgets are read off the same evaluations; a sequence's residual joins its prefix's
                 and its continuation's norms.

On a GPU (cuda_graphs=auto) the explicit and lockstep reads of a batch are one computation of padded inputs (prefixes
to padded_length, rests to a multiple of REST_STEP), replayed from a CUDA graph per shape like the scoring forward
(Runtime.replayed); the readings in pieces run in their captured piece solves.

Read from the start as before: a one-piece reading at tol > 0 or with Anderson (a row's stopping, and Anderson's
mixing weights, depend on the whole sequence), a context shorter than one block (at tol > 0), an empty context, and a
context followed by only one distinct model input. Statistics and record_greedy lines are those of the un-shared
reading: each sequence's pieces, the prefix's joined to its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..fixed_point import EPS, damp, row_norms
from ..reading import ReadStats, pieces
from ..runtime.generation import right_pad
from ..runtime.graphs import padded_length
from ..tensors import map_tensors, take_rows, valid_mask
from .greedy_log import append_records, greedy_records
from .records import Compute

if TYPE_CHECKING:
    from ..config import Budget
    from ..exits import Point
    from ..runtime import Runtime
    from .records import Answer
    from .requests import Item


class Scorer(Protocol):
    """What sharing needs of scoring.Scorer (which calls score_shared): named here, not imported, so that the two
    modules do not import each other."""
    runtime: Runtime
    budget: Budget | None
    budgets: tuple
    vocab_size: int
    greedy_log: str | None

    def _answers(self, tails: dict[Point, Tensor], group: list[Item], compute: dict[Point, Compute | None]
                 ) -> list[dict[Point, Answer]]: ...

    def _log_stats(self, stats: dict[Point, ReadStats | None], tasks: list[str]) -> None: ...


STATE, LOCKSTEP = "state", "lockstep"
_PROBE_LENGTHS = (1, 2, 3, 64, 1000, 4096)  # lengths at which a reading's piece size is looked at
REST_STEP = 16  # members' rests are padded to a multiple of this where the runtime pads (rest_length)
MEMBERS_PER_ROW = 4  # members a batch takes per prefix row: a 4-choice task batches as many contexts as un-shared rows
_FIELDS = ("iterations", "residual", "converged", "tokens")  # ReadStats' fields, in order


@dataclass
class Branch:
    """Distinct model inputs (members) that begin with the same prefix, which is read once."""

    how: str  # STATE or LOCKSTEP
    prefix: tuple[int, ...]
    members: list[tuple[int, ...]] = field(default_factory=list)
    spans: list[int] = field(default_factory=list)  # per member: the positions scored at its end


@dataclass
class Branched:
    """One member's reading, per scored budget: the hidden states of its last `span` positions, of every position
    (for record_greedy only) and its statistics (one row, its pieces in order; None for an explicit model)."""

    tail: dict[Point, Tensor] = field(default_factory=dict)
    full: dict[Point, Tensor] = field(default_factory=dict)
    stats: dict[Point, ReadStats | None] = field(default_factory=dict)


# -- when sharing is exact ------------------------------------------------------------------------------------
def _fixed_pieces(budget: Budget) -> bool:
    """The reading's pieces do not depend on the sequence's length (sequential, blockwise): a padded batch and each
    of its sequences are cut alike, and a piece boundary stays one when a prefix is read apart."""
    return len({budget.piece_size(n) for n in _PROBE_LENGTHS}) == 1


def _whole(budget: Budget) -> bool:
    return all(budget.piece_size(n) >= n for n in _PROBE_LENGTHS)


def _lockstep(budget: Budget) -> bool:
    """Every row makes max_iter evaluations with an update that looks at its own position only."""
    return budget.tol == 0 and budget.solver == "fixed_point"


def shareable(budget: Budget | None) -> bool:
    """Whether any context can be shared exactly under this budget."""
    return budget is None or _fixed_pieces(budget) or (_whole(budget) and _lockstep(budget))


def share_context_setting(requested: bool | None, budget: Budget | None, exit_points: bool = False) -> bool:
    """model_arg share_context (true, false, None = auto) -> whether scoring shares contexts; auto shares wherever it
    is exact, on any device; true where it never can be is refused. exit_points: anytime exit criteria are requested,
    which are read off a whole trajectory's iterates (the lockstep reading keeps only fixed budgets').

    On a GPU the explicit and the lockstep readings gain only since their shared read is replayed from CUDA graphs,
    as the reading from the start is (Runtime.replayed): uncaptured it had been 1.1-1.8x slower (BENCHMARKS.md)."""
    if requested and exit_points:
        raise ConfigError("share_context=true: anytime_exits are read off each input's whole trajectory, which a "
                          "shared context does not keep; leave share_context unset (auto: not shared with "
                          "anytime_exits) or drop anytime_exits")
    if requested and not shareable(budget):
        assert budget is not None
        raise ConfigError(f"share_context=true: reading a shared context once is exact for explicit models, the "
                          f"sequential and blockwise readings, and one-piece readings at tol=0 with "
                          f"solver=fixed_point; got mode={budget.mode}, tol={budget.tol}, solver={budget.solver}. "
                          "Leave share_context unset (auto: shared where exact) or set it to false")
    return requested is not False and not exit_points


def branch_point(length: int, context: int, budget: Budget | None) -> tuple[str, int] | None:
    """How a model input of `length` tokens, of which the first `context` are its context, branches, and after how
    many tokens (the shared prefix); None: it is read from the start."""
    if context < 1:
        return None
    if budget is None:
        return STATE, context
    if _fixed_pieces(budget):
        size = budget.piece_size(length)
        if context >= size:
            return STATE, context - context % size
    if _lockstep(budget) and len(pieces(length, budget)) == 1 and (_whole(budget) or _fixed_pieces(budget)):
        return LOCKSTEP, context
    return None


def plan(spans: dict[tuple[int, ...], int], budget: Budget | None
         ) -> tuple[list[Branch], list[tuple[int, ...]]]:
    """spans: each distinct model input and the positions scored at its end (its longest continuation). The branches
    (prefixes that two or more inputs share) and the inputs read from the start."""
    by_prefix: dict[tuple[str, tuple[int, ...]], Branch] = {}
    alone = []
    for seq, span in spans.items():
        point = branch_point(len(seq), len(seq) - span + 1, budget)
        if point is None:
            alone.append(seq)
            continue
        how, split = point
        branch = by_prefix.setdefault((how, seq[:split]), Branch(how, seq[:split]))
        branch.members.append(seq)
        branch.spans.append(span)
    branches = [b for b in by_prefix.values() if len(b.members) > 1]
    alone += [b.members[0] for b in by_prefix.values() if len(b.members) == 1]
    return branches, alone


# -- scoring ----------------------------------------------------------------------------------------------------
@torch.inference_mode()
def score_shared(scorer: Scorer, items: list[Item], groups: dict[tuple[int, ...], list[int]],
                 answers: list[dict[Point, Answer]], size: int, progress) -> dict[tuple[int, ...], list[int]]:
    """Scores the groups (distinct model input -> its items) that branch off a shared prefix into `answers`, in
    batches of at most `size` prefixes (see _batches); returns the groups left to read from the start."""
    spans = {seq: max(len(items[i].continuation) for i in rows) for seq, rows in groups.items()}
    branches, alone = plan(spans, scorer.budget)
    for batch in _batches(branches, size):
        members = [m for b in batch for m in b.members]
        member_items = [[items[i] for i in groups[m]] for m in members]
        read = read_branches(scorer.runtime, scorer.budget, scorer.budgets, batch, bool(scorer.greedy_log))
        stats = {k: _stack_stats([r.stats[k] for r in read]) for k in read[0].stats}
        scorer._log_stats(stats, [group[0].task for group in member_items])
        if scorer.greedy_log:
            hidden = {k: _stack_padded([r.full[k] for r in read]) for k in read[0].full}
            append_records(scorer.greedy_log, greedy_records(members, member_items, hidden, stats,
                                                             scorer.runtime.logits, scorer.vocab_size))
        for m, r, group in zip(members, read, member_items):
            compute = {k: _row_compute(s) for k, s in r.stats.items()}
            for i, scored in zip(groups[m], scorer._answers(r.tail, group, compute)):
                answers[i] = scored
            progress.update(len(group))
    return {seq: groups[seq] for seq in alone}


def _batches(branches: list[Branch], size: int) -> list[list[Branch]]:
    """Branches of one kind, longest first, batched: at most `size` prefixes (the rows of an un-shared batch) and
    MEMBERS_PER_ROW x size members (each a short rest and a recurrent state) a batch; a larger branch alone."""
    out: list[list[Branch]] = []
    for how in (STATE, LOCKSTEP):
        mine = sorted((b for b in branches if b.how == how), key=lambda b: (-max(map(len, b.members)), b.prefix))
        batch: list[Branch] = []
        for branch in mine:
            members = sum(len(b.members) for b in batch) + len(branch.members)
            if batch and (len(batch) == size or members > MEMBERS_PER_ROW * size):
                out.append(batch)
                batch = []
            batch.append(branch)
        if batch:
            out.append(batch)
    return out


@torch.inference_mode()
def read_branches(runtime: Runtime, budget: Budget | None, budgets: tuple[int, ...], branches: list[Branch],
                  full: bool) -> list[Branched]:
    """Every member of `branches` (all of one kind) read, its prefix once; full: keep every position's hidden."""
    if branches[0].how == STATE:
        return _read_by_state(runtime, budget, budgets, branches, full)
    assert budget is not None  # lockstep is an implicit reading
    return _read_in_lockstep(runtime, budget, budgets, branches, full)


def _members(branches: list[Branch]) -> tuple[list[int], list[list[int]], list[int]]:
    """Per member: its branch's index, the tokens after the prefix, its span."""
    owners, rests, spans = [], [], []
    for g, branch in enumerate(branches):
        for seq, span in zip(branch.members, branch.spans):
            owners.append(g)
            rests.append(list(seq[len(branch.prefix):]))
            spans.append(span)
    return owners, rests, spans


def _read_by_state(runtime: Runtime, budget: Budget | None, budgets: tuple[int, ...], branches: list[Branch],
                   full: bool) -> list[Branched]:
    """The prefixes read with their states committed, then every member's rest from its prefix's state."""
    assert len(budgets) == 1  # anytime budgets are one-piece readings (lockstep)
    k = budgets[0]
    owners, rests, spans = _members(branches)
    live = [r for r, rest in enumerate(rests) if rest]  # a branch has two members or more: one at least has a rest
    where = {r: j for j, r in enumerate(live)}
    ids, lengths, ids_r, lengths_r, rows = _inputs(runtime, branches, owners, rests, live, pad=budget is None)
    if budget is None:  # one computation, replayed from a CUDA graph where the runtime captures
        key = ("explicit branches", tuple(ids_r.shape))
        hidden, hidden_r = runtime.replayed(key, _explicit_branches(runtime), ids, lengths, ids_r, lengths_r, rows)
        stats = stats_r = None
    else:  # the readings in pieces run in captured piece solves of their own
        head = runtime(ids, budget, lengths=lengths, want_state=True)
        rest = runtime(ids_r, budget, lengths=lengths_r, state=take_rows(head.state, rows), want_state=False)
        hidden, stats, hidden_r, stats_r = head.hidden, head.stats, rest.hidden, rest.stats
    out = []
    for r, (g, tokens, span) in enumerate(zip(owners, rests, spans)):
        h_head = hidden[g, :len(branches[g].prefix)]
        h_rest = hidden_r[where[r], :len(tokens)] if r in where else h_head[:0]
        s_rest = _row_stats(stats_r, where[r]) if r in where else None
        read = Branched({k: _tail(h_head, h_rest, span)}, stats={k: _join_stats(_row_stats(stats, g), s_rest)})
        if full:
            read.full[k] = torch.cat([h_head, h_rest])
        out.append(read)
    return out


def _read_in_lockstep(runtime: Runtime, budget: Budget, budgets: tuple[int, ...], branches: list[Branch],
                      full: bool) -> list[Branched]:
    """The damped iteration of a one-piece reading, prefixes and members' rests side by side (_lockstep_reading),
    replayed from a CUDA graph where the runtime captures."""
    owners, rests, spans = _members(branches)
    live = [r for r, rest in enumerate(rests) if rest]
    where = {r: j for j, r in enumerate(live)}
    inputs = _inputs(runtime, branches, owners, rests, live, pad=True)
    key = ("lockstep", budget, budgets, tuple(inputs[2].shape))
    read = runtime.replayed(key, _lockstep_reading(runtime, budget, budgets), *inputs)
    device = inputs[0].device
    owner_rows, live_rows = torch.tensor(owners, device=device), torch.tensor(live, dtype=torch.long, device=device)
    out = [Branched() for _ in owners]
    for j, (fz, fz_r, norms, norms_r) in read.items():
        residual = _joined_residual(norms, norms_r, owner_rows, live_rows)
        for r, (g, tokens, span) in enumerate(zip(owners, rests, spans)):
            h_head = fz[g, :len(branches[g].prefix)]
            h_rest = fz_r[where[r], :len(tokens)] if r in where else h_head[:0]
            out[r].tail[j] = _tail(h_head, h_rest, span)
            out[r].stats[j] = _one_piece_stats(j, residual[r], len(h_head) + len(tokens), budget.tol)
            if full:
                out[r].full[j] = torch.cat([h_head, h_rest])
    return out


# -- what is replayed ---------------------------------------------------------------------------------------------
def _inputs(runtime: Runtime, branches: list[Branch], owners: list[int], rests: list[list[int]], live: list[int],
            pad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The prefixes and the live members' rests right padded, with their lengths, and each rest's prefix row. pad
    (a computation that Runtime.replayed may capture) and where the runtime pads (Runtime.pads): to lengths that
    recur, prefixes to padded_length, rests to a multiple of REST_STEP (continuations are short and many lengths; a
    few more padded tokens cost less than a capture). The readings in pieces are not padded: their piece solves are
    captured by piece shape, and padding would add pieces."""
    device = runtime.model.embedding.weight.device
    ids, lengths = right_pad([list(b.prefix) for b in branches], device)
    ids_r, lengths_r = right_pad([rests[r] for r in live], device)
    for t in (ids, ids_r):
        runtime.model.check_ids(t)
    if pad and runtime.pads:
        ids = F.pad(ids, (0, padded_length(ids.shape[1]) - ids.shape[1]))
        ids_r = F.pad(ids_r, (0, rest_length(ids_r.shape[1]) - ids_r.shape[1]))
    return ids, lengths, ids_r, lengths_r, torch.tensor([owners[r] for r in live], device=device)


def rest_length(n: int) -> int:
    """A rest of n tokens padded: to a multiple of REST_STEP, or padded_length where that is coarser."""
    return max(padded_length(n), -(-n // REST_STEP) * REST_STEP)


def _explicit_branches(runtime: Runtime):
    """(ids, lengths, ids_r, lengths_r, rows) -> the hidden states of the prefixes and of the rests, each rest read
    from the state its prefix row ends in."""
    model, ops = runtime.model, runtime.ops

    def read(ids: Tensor, lengths: Tensor, ids_r: Tensor, lengths_r: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        hidden, state = model.stack(model.embed(ids), None, None, valid_mask(lengths, ids.shape[1]), ops=ops)
        hidden_r, _ = model.stack(model.embed(ids_r), None, take_rows(state, rows),
                                  valid_mask(lengths_r, ids_r.shape[1]), commit=False, ops=ops)
        return hidden, hidden_r

    return read


def _lockstep_reading(runtime: Runtime, budget: Budget, budgets: tuple[int, ...]):
    """(ids, lengths, ids_r, lengths_r, rows) -> per scored budget j: f's evaluation j of the prefixes and of the
    rests, and the squared norms of each row's update and iterate (_square_norms). Evaluation j of a rest starts from
    the layers' states at its prefix's end under evaluation j of the prefix."""
    model, ops = runtime.implicit, runtime.ops

    def read(ids: Tensor, lengths: Tensor, ids_r: Tensor, lengths_r: Tensor, rows: Tensor) -> dict:
        u, valid = model.inject(ids), valid_mask(lengths, ids.shape[1])
        u_r, valid_r = model.inject(ids_r), valid_mask(lengths_r, ids_r.shape[1])
        z = torch.zeros(*ids.shape, model.cfg.d_model, dtype=model.cd, device=ids.device)
        z_r = torch.zeros(*ids_r.shape, model.cfg.d_model, dtype=model.cd, device=ids.device)
        out = {}
        for j in range(1, budget.max_iter + 1):
            fz, state = model.f(z, u, None, valid, commit=True, ops=ops)
            fz_r, _ = model.f(z_r, u_r, take_rows(state, rows), valid_r, commit=False, ops=ops)
            if j in budgets:
                out[j] = (fz, fz_r, _square_norms(fz, z, valid), _square_norms(fz_r, z_r, valid_r))
            if j < budget.max_iter:
                z, z_r = damp(z, fz, budget.tau), damp(z_r, fz_r, budget.tau)
        return out

    return read


def _square_norms(fz: Tensor, z: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per row, over its valid positions: |f(z) - z|^2 and |z|^2 (a member's residual joins its two parts')."""
    return row_norms(fz - z, valid) ** 2, row_norms(z, valid) ** 2


# -- pieces of readings put together --------------------------------------------------------------------------------
def _joined_residual(head: tuple[Tensor, Tensor], rest: tuple[Tensor, Tensor], owner_rows: Tensor,
                     live_rows: Tensor) -> Tensor:
    """Each member's relative residual over its whole sequence: its prefix's squared norms (_square_norms) joined
    with its rest's (the live members')."""
    changed, size = head[0][owner_rows], head[1][owner_rows]
    changed[live_rows] += rest[0]
    size[live_rows] += rest[1]
    return changed.sqrt() / (EPS + size.sqrt())


def _tail(head: Tensor, rest: Tensor, span: int) -> Tensor:
    """The hidden states of the last `span` positions of head followed by rest (rest is at most span - 1 short)."""
    if span <= len(rest):
        return rest[len(rest) - span:]
    return torch.cat([head[len(head) - (span - len(rest)):], rest])


def _row_compute(stats: ReadStats | None) -> Compute | None:
    """A branch's per-token compute (one row of stats: its prefix's tokens, then its own)."""
    return None if stats is None else Compute.of_row(map_tensors(stats, torch.Tensor.cpu), 0)


def _row_stats(stats: ReadStats | None, row: int) -> ReadStats | None:
    """One row's statistics, its pieces that were solved only: (1, pieces)."""
    if stats is None:
        return None
    present = stats.present[row]
    return ReadStats(*(getattr(stats, f)[row][present][None] for f in _FIELDS))


def _join_stats(head: ReadStats | None, rest: ReadStats | None) -> ReadStats | None:
    """A sequence's pieces: its prefix's, then its rest's."""
    if head is None or rest is None:
        return head
    return ReadStats(*(torch.cat([getattr(head, f), getattr(rest, f)], 1) for f in _FIELDS))


def _one_piece_stats(k: int, residual: Tensor, tokens: int, tol: float) -> ReadStats:
    """The statistics fixed_point.solve gives a one-piece row at evaluation k (tol = 0: never converged)."""
    device = residual.device
    return ReadStats(torch.full((1, 1), k, dtype=torch.long, device=device), residual.reshape(1, 1),
                     (residual < tol).reshape(1, 1), torch.full((1, 1), tokens, dtype=torch.long, device=device))


def _stack_stats(rows: list[ReadStats | None]) -> ReadStats | None:
    """Rows of (1, pieces) statistics as one (rows, most pieces) ReadStats; absent pieces have 0 tokens."""
    if rows[0] is None:
        return None
    parts = [r for r in rows if r is not None]
    width = max(r.tokens.shape[1] for r in parts)

    def pad(t: Tensor) -> Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]))

    return ReadStats(*(torch.cat([pad(getattr(r, f)) for r in parts]) for f in _FIELDS))


def _stack_padded(rows: list[Tensor]) -> Tensor:
    """(positions, d) tensors as one right-padded (rows, most positions, d)."""
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
