"""What each logged sample cost: `--log_samples` records of an implicit model carry its compute.

lm-eval builds a sample per document from the task's results and the requests' arguments; a model only answers
(logprob, is_greedy) per request. The adapter keeps each request's Compute (records.py) by its key (request type,
args), merged over ranks, and after lm-eval's evaluate returns (hook.py wraps it; anytime.evaluate_with_anytime
calls this) every sample gets, under "ssm_compute":

    reading, unit, exit, tol, max_iter    the run's budget: its reading ("blockwise 8"), what a piece is, the exit
                                          criterion and its threshold, the cap
    requests                              per request of the document, in lm-eval's order: iterations, residual,
                                          converged and tokens per piece (per token in the sequential reading); None
                                          for a generate_until request (its decoding steps are counted per run only)
    iterations_mean, iterations_max       over the pieces of all its requests
    fraction_converged                    the share of those pieces that met the criterion
    fraction_hit_max_iter_unconverged     the share that hit max_iter without meeting it (as in the results)

lm-eval's own command line writes these fields into samples_<task>_<date>.jsonl unchanged.
"""

from __future__ import annotations

from typing import Any

from ..readings import reading_label, reading_unit
from .records import BudgetRecord, Compute

REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling")


def add_compute(results: dict | None, lm) -> None:
    """Each logged sample of an implicit run (results["samples"], rank 0) gets its compute at the run's budget."""
    samples = (results or {}).get("samples")
    if not samples or lm.budget is None:
        return
    record = lm.view.records[lm.budgets_scored[0]]
    for task_samples in samples.values():
        for sample in task_samples:
            sample["ssm_compute"] = sample_compute(record, sample.get("arguments") or [], lm.budget)


def sample_compute(record: BudgetRecord, arguments: list, budget) -> dict[str, Any]:
    requests = [_request_compute(record, args) for args in arguments]
    pieces = [c for c in requests if c is not None]
    iterations = [i for c in pieces for i in c.iterations]
    capped = [i >= budget.max_iter and not ok for c in pieces for i, ok in zip(c.iterations, c.converged)]
    converged = [ok for c in pieces for ok in c.converged]
    budget_dict = budget.to_dict()
    return {
        "reading": reading_label(budget_dict), "unit": reading_unit(budget.mode), "exit": budget.exit,
        "tol": budget.tol, "max_iter": budget.max_iter,
        "requests": [None if c is None else {"iterations": list(c.iterations), "residual": list(c.residual),
                                             "converged": list(c.converged), "tokens": list(c.tokens)}
                     for c in requests],
        "iterations_mean": sum(iterations) / len(iterations) if iterations else None,
        "iterations_max": max(iterations, default=None),
        "fraction_converged": sum(converged) / len(converged) if converged else None,
        "fraction_hit_max_iter_unconverged": sum(capped) / len(capped) if capped else None,
    }


def _request_compute(record: BudgetRecord, args) -> Compute | None:
    key = tuple(args) if isinstance(args, list) else args
    try:
        hash(key)
    except TypeError:  # generate_until's args hold its gen_kwargs dict; its steps are counted per run only
        return None
    for kind in REQUEST_TYPES:
        found = record.compute.get((kind, key))
        if found is not None:
            return found
    return None
