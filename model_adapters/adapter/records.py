"""What an evaluation run produces, typed: answers at every scored budget, statistics per budget and per task.

    Answer          one loglikelihood request at one budget: (logprob, greedy), and its Compute
    Compute         what a request cost: iterations, final residual, convergence and tokens per piece
    BudgetRecord    one budget's answers and compute (by request key) and convergence logs (whole run, per task)
    TaskRecord      what the run learnt about one lm-eval task from its requests: the fields the task's documents
                    carry (family, task, bucket, length, data_hash, chance) and how well the tokenizer read it

An lm-eval adapter fills one BudgetRecord per scored budget (the run's budget first, then anytime budgets read off
the same trajectory) and one TaskRecord per task; results, anytime replays and the report read them from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..convergence import ConvergenceLog
from ..reading import ReadStats
from .requests import RequestKey

DOC_FIELDS = ("family", "task", "bucket", "data_hash", "chance")  # carried by documents of registered task families


@dataclass(frozen=True)
class Compute:
    """What one request cost at one budget, per piece of the sequence it was scored on (of every window, in order,
    for a rolling request): f evaluations (the final one included), the relative residual at the final evaluation,
    whether the piece met the exit criterion, and its tokens."""

    iterations: tuple[int, ...]
    residual: tuple[float, ...]
    converged: tuple[bool, ...]
    tokens: tuple[int, ...]

    @classmethod
    def of_row(cls, stats: ReadStats, row: int) -> Compute:
        present = stats.present[row]
        return cls(*(tuple(getattr(stats, f)[row][present].tolist()) for f in ("iterations", "residual", "converged",
                                                                                "tokens")))

    @classmethod
    def joined(cls, parts: list[Compute]) -> Compute:
        return cls(*(sum((getattr(p, f) for p in parts), ()) for f in ("iterations", "residual", "converged",
                                                                       "tokens")))


@dataclass(frozen=True)
class Answer:
    logprob: float
    greedy: bool
    compute: Compute | None = None  # an implicit model's cost of the request (None: an explicit model)

    def as_lm_eval(self) -> tuple[float, bool]:
        return self.logprob, self.greedy


@dataclass
class BudgetRecord:
    answers: dict[RequestKey, Answer | float] = field(default_factory=dict)  # float: loglikelihood_rolling totals
    scoring: ConvergenceLog = field(default_factory=ConvergenceLog)
    per_task: dict[str, ConvergenceLog] = field(default_factory=dict)
    compute: dict[RequestKey, Compute] = field(default_factory=dict)  # per request, for the logged samples

    def log(self, task: str, stats: ReadStats) -> None:
        self.scoring.add(stats)
        self.per_task.setdefault(task, ConvergenceLog()).add(stats)

    def extend(self, other: BudgetRecord) -> None:
        """Merge another rank's record (answers stay per rank: each rank replays its own shard; the compute of every
        request is merged, since lm-eval gathers every rank's samples on rank 0)."""
        self.scoring.extend(other.scoring)
        for task, log in other.per_task.items():
            self.per_task.setdefault(task, ConvergenceLog()).extend(log)
        self.compute.update(other.compute)


@dataclass
class TaskRecord:
    documents: set = field(default_factory=set)  # doc ids seen
    fields: dict[str, Any] = field(default_factory=dict)  # DOC_FIELDS values, when one value is shared by all docs
    lengths: list[int] = field(default_factory=list)  # per-document `length` field, when present
    tokens: int = 0
    unknown_tokens: int = 0
    unknown_examples: list[str] = field(default_factory=list)

    def observe(self, doc_id, doc: Any, tokens: int, unknown: Iterable[str]) -> None:
        unknown = list(unknown)
        self.tokens += tokens
        self.unknown_tokens += len(unknown)
        new = [w for w in unknown if w not in self.unknown_examples]
        self.unknown_examples += new[: 5 - len(self.unknown_examples)]
        if doc_id in self.documents or not isinstance(doc, dict):
            return
        self.documents.add(doc_id)
        if isinstance(doc.get("length"), int):
            self.lengths.append(doc["length"])
        for name in DOC_FIELDS:
            if name in doc:
                self.fields.setdefault(name, doc[name])
                if self.fields[name] != doc[name]:
                    self.fields[name] = "mixed"

    @property
    def unknown_fraction(self) -> float:
        return self.unknown_tokens / self.tokens if self.tokens else 0.0

    def extend(self, other: TaskRecord) -> None:
        self.documents |= other.documents
        self.lengths += other.lengths
        self.tokens += other.tokens
        self.unknown_tokens += other.unknown_tokens
        self.unknown_examples = (self.unknown_examples + other.unknown_examples)[:5]
        for name, value in other.fields.items():
            self.fields[name] = value if self.fields.get(name, value) == value else "mixed"

    def summary(self) -> dict:
        out = {"documents": len(self.documents), **self.fields, "tokens": self.tokens,
               "unknown_tokens": self.unknown_tokens}
        if self.lengths:
            out["length"] = [min(self.lengths), max(self.lengths)]
            out["length_mean"] = sum(self.lengths) / len(self.lengths)
        return out
