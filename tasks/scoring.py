"""lm-eval hooks shared by the state-tracking and bAbI tasks: per-document metrics and their aggregations.

Each document carries its ``chance`` level and the ``data_hash`` of the whole generated split. Emitting
the hash as a metric whose aggregation returns the string is what puts it into lm-eval's result table
and results JSON with the stock CLI; groups aggregate only ``acc`` and ``scaled_acc``, so it never
enters an average.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def scaled_accuracy(acc: float, chance: float) -> float:
    """(acc - chance) / (1 - chance): 0 at chance level, 1 when perfect (Delétang et al., 2023)."""
    return (acc - chance) / (1.0 - chance)


def process_greedy_answer(doc: Mapping[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """Metrics of one ``loglikelihood`` document: acc is whether the answer is the model's greedy choice."""
    _, is_greedy = results[0]
    acc = float(is_greedy)
    chance = float(doc["chance"])
    return {
        "acc": acc,
        "scaled_acc": scaled_accuracy(acc, chance),
        "chance": chance,
        "data_hash": doc["data_hash"],
    }


def same_string(items: Sequence[str]) -> str:
    """Aggregation of a per-document constant such as ``data_hash``: the value itself."""
    distinct = sorted(set(items))
    if len(distinct) != 1:
        raise ValueError(f"expected one value shared by all documents, got {distinct[:3]}")
    return distinct[0]
