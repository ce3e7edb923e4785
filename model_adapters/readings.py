"""The readings of an implicit model, in one registry: each declares its name, unit, parameters and label once.

A reading cuts a sequence into consecutive pieces, each iterated to its fixed point from the recurrent state the
previous piece committed (reading.py). The registry says how, and everything that names a reading asks it: Budget
validation, the adapter's results (the unit of its convergence statistics), the console summary, the report, plots
and the leaderboard. It imports nothing (reports read it without torch).

    simultaneous   one piece of the whole sequence        unit: sequence
    sequential     one token a piece (the RNN reading)    unit: token
    blockwise      block_size tokens a piece              unit: block

Adding a reading is one registration, here or from outside the package:

    register_reading(ReadingSpec("halves", unit="half", piece_size=lambda budget, n: max(1, -(-n // 2))))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class HasReadingParams(Protocol):
    """What a piece size is computed from: a Budget, or anything with its reading parameters."""

    block_size: int | None


@dataclass(frozen=True)
class ReadingSpec:
    name: str  # the Budget's `mode`, the model_arg `mode=...`
    unit: str  # what one convergence statistic covers ("sequence", "token", "block")
    piece_size: Callable[[Any, int], int]  # (budget, sequence length) -> tokens per piece (>= 1)
    params: tuple[str, ...] = ()  # Budget fields the reading needs (set exactly when the reading is chosen)
    description: str = ""

    def label(self, budget: Mapping[str, Any]) -> str:
        """How reports name a run of this reading: its name, then its parameters' values ("blockwise 8")."""
        values = [str(budget[p]) for p in self.params if budget.get(p) is not None]
        return " ".join([self.name, *values])


READINGS: dict[str, ReadingSpec] = {}


def register_reading(spec: ReadingSpec) -> ReadingSpec:
    if spec.name in READINGS and READINGS[spec.name] != spec:
        raise ValueError(f"a reading named {spec.name!r} is registered already")
    READINGS[spec.name] = spec
    return spec


def reading(name: str) -> ReadingSpec:
    if name not in READINGS:
        raise KeyError(f"unknown reading {name!r}; registered: {sorted(READINGS)}")
    return READINGS[name]


def reading_label(budget: Mapping[str, Any] | None) -> str:
    """A budget's reading as reports name it ("simultaneous", "blockwise 8"); "" for no budget (explicit)."""
    if not budget:
        return ""
    spec = READINGS.get(budget.get("mode", ""))
    return spec.label(budget) if spec else str(budget.get("mode"))


def reading_unit(mode: str | None) -> str:
    spec = READINGS.get(mode or "")
    return spec.unit if spec else "piece"


register_reading(ReadingSpec("simultaneous", "sequence", lambda budget, n: max(n, 1),
                             description="the whole sequence in one piece: one parallel scan per f evaluation"))
register_reading(ReadingSpec("sequential", "token", lambda budget, n: 1,
                             description="one token a piece, the recurrent step: the RNN and generation reading"))
register_reading(ReadingSpec("blockwise", "block", lambda budget, n: budget.block_size, params=("block_size",),
                             description="block_size tokens a piece, each from the state the previous committed"))
