"""Scoring continuations: items whose model input is the same token sequence share one forward; sequences run
longest first, right padded, in batches; each item is scored at its own positions at every scored budget.

Log-softmax runs over the checkpoint's padded vocabulary, as lm-eval's HF and mamba_ssm models do, so scores stay
comparable. Scores are never computed from non-finite logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import Budget
from ..errors import NonFiniteError
from ..exits import ExitPoint, Point
from ..reading import ReadStats
from ..runtime import Runtime
from ..runtime.generation import right_pad
from ..tensors import map_tensors
from .greedy_log import append_records, greedy_records
from .records import Answer, BudgetRecord, Compute
from .requests import Item, model_input
from .shared_context import score_shared


@dataclass
class Scorer:
    runtime: Runtime
    budget: Budget | None  # None for an explicit model
    anytime: tuple  # the anytime budgets (max_iter values, ExitPoints) read off the run's trajectory (its own included)
    budgets: tuple  # the budgets scored: the run's own max_iter first (0 for an explicit model)
    max_length: int
    vocab_size: int
    batch_size: Callable[[int], int]  # longest sequence -> sequences per forward
    records: dict[Point, BudgetRecord]
    greedy_log: str | None = None
    model_name: str = "the model"  # in messages: implicit_ssm, explicit_ssm
    truncated: int = 0
    share_context: bool = False  # inputs that begin with one context read it once where exact (shared_context.py)

    def score(self, items: list[Item], progress, share: bool = False) -> list[dict[Point, Answer]]:
        """Every item's Answer at every scored budget; share: contexts read once (multiple choice)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, item in enumerate(items):
            sequence, cut = model_input(item, self.max_length)
            self.truncated += cut
            groups.setdefault(sequence, []).append(i)
        answers: list[dict[Point, Answer]] = [{} for _ in items]
        size = self.batch_size(max((len(s) for s in groups), default=1))
        if share and self.share_context:
            groups = score_shared(self, items, groups, answers, size, progress)
        order = sorted(groups, key=lambda seq: (-len(seq), seq))
        for start in range(0, len(order), size):
            batch = order[start: start + size]
            scored = self._score_batch(batch, [[items[i] for i in groups[seq]] for seq in batch])
            for seq, by_item in zip(batch, scored):
                for i, by_budget in zip(groups[seq], by_item):
                    answers[i] = by_budget
                progress.update(len(groups[seq]))
        return answers

    @torch.inference_mode()
    def _score_batch(self, sequences: list[tuple[int, ...]], members: list[list[Item]]
                     ) -> list[list[dict[Point, Answer]]]:
        """One forward over `sequences`; per sequence, per member item, its Answer at every scored budget."""
        device = self.runtime.model.embedding.weight.device
        ids, lengths = right_pad([list(s) for s in sequences], device)
        out = self.runtime(ids, self.budget, lengths=lengths, anytime=self.anytime, want_state=False)
        hidden = {k: r.hidden for k, r in out.anytime.items()} or {self.budgets[0]: out.hidden}
        stats: dict[Point, ReadStats | None] = ({k: r.stats for k, r in out.anytime.items()}
                                              or {self.budgets[0]: out.stats})
        self._log_stats(stats, [m[0].task for m in members])
        if self.greedy_log:
            append_records(self.greedy_log, greedy_records(sequences, members, hidden, stats, self.runtime.logits,
                                                           self.vocab_size))
        cpu_stats = {k: map_tensors(s, torch.Tensor.cpu) for k, s in stats.items()}  # one copy, not one per row
        results = []
        for i, (n, group) in enumerate(zip(lengths.tolist(), members)):
            span = max(len(item.continuation) for item in group)
            compute = {k: Compute.of_row(s, i) if s is not None else None for k, s in cpu_stats.items()}
            results.append(self._answers({k: h[i, n - span: n] for k, h in hidden.items()}, group, compute))
        return results

    def _answers(self, tails: dict[Point, torch.Tensor], group: list[Item], compute: dict[Point, Compute | None]
                 ) -> list[dict[Point, Answer]]:
        """The Answers of items that share one model input, from its last positions' hidden states per budget, and
        its compute per budget."""
        logprobs = {k: self._logprobs(h, group[0], k) for k, h in tails.items()}
        return [{k: answer(lp, item.continuation, compute[k]) for k, lp in logprobs.items()} for item in group]

    def _logprobs(self, hidden: torch.Tensor, item: Item, k: Point) -> torch.Tensor:
        logits = self.runtime.logits(hidden)
        if not torch.isfinite(logits).all():
            where = f"task {item.task} doc {item.doc_id}" if item.key else "a request"
            at = f" at {k.label if isinstance(k, ExitPoint) else f'max_iter={k}'}" if self.budget is not None else ""
            raise NonFiniteError(f"{self.model_name} produced non-finite logits (NaN/inf) for {where}{at}; no score "
                                 "is reported from them")
        return F.log_softmax(logits, dim=-1)

    def _log_stats(self, stats: dict[Point, ReadStats | None], tasks: list[str]) -> None:
        """Each sequence's convergence statistics go to the task of its first request."""
        if self.budget is None:
            return
        for k, s in stats.items():
            assert s is not None  # an implicit model's reading has statistics
            for task in dict.fromkeys(tasks):
                rows = torch.tensor([t == task for t in tasks], device=s.iterations.device)
                self.records[k].log(task, ReadStats(s.iterations[rows], s.residual[rows], s.converged[rows],
                                                    s.tokens[rows]))


def answer(logprobs: torch.Tensor, cont_toks: list[int], compute: Compute | None = None) -> Answer:
    """logprobs (positions, vocab): the trailing len(cont_toks) positions score the continuation."""
    logprobs = logprobs[-len(cont_toks):]
    target = torch.tensor(cont_toks, device=logprobs.device)
    greedy = bool((logprobs.argmax(-1) == target).all())
    return Answer(float(logprobs.gather(1, target[:, None]).sum()), greedy, compute)
