"""The per-document metrics of the state-tracking and bAbI tasks.

Only scores are metrics. A document's ``chance`` and ``data_hash`` (and ``family``, ``task``, ``bucket``,
``length``) stay fields of the document: lm-eval would print a constant reported as a metric as a table
row with a meaningless ± column, while a model adapter reads the fields from each request's ``doc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def scaled_accuracy(acc: float, chance: float) -> float:
    """(acc - chance) / (1 - chance): 0 at chance level, 1 when perfect (Delétang et al., 2023)."""
    return (acc - chance) / (1.0 - chance)


def process_greedy_answer(doc: Mapping[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """Metrics of one ``loglikelihood`` document: acc is whether the answer is the model's greedy choice."""
    _, is_greedy = results[0]
    acc = float(is_greedy)
    return {"acc": acc, "scaled_acc": scaled_accuracy(acc, float(doc["chance"]))}
