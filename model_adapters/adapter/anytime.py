"""Anytime budgets: the metrics of every budget of one trajectory, through lm-eval's own evaluation.

`anytime=1;4;16` (simultaneous mode, tol 0) makes the adapter score every request at each of those budgets from the
one trajectory of its run (scores.py keeps the answers); `anytime_exits=kl:0.01;kl:0.001` adds the runs that stop on
an exit criterion at those thresholds (capped at the run's max_iter), read off the same trajectory. lm-eval computes
metrics for the run's own budget; for the others, `evaluate_with_anytime` evaluates the same tasks once more per
budget with a BudgetView, an lm-eval model that answers from those scores (no model compute), and puts the metrics
into the results:

    results["anytime"][str(k)] = {"results": ..., "groups": ..., "ssm_model": model info at budget k}
    results["results"][task]["acc@k=4,none"] = ...      (so lm-eval's printed table shows every budget)
    results["anytime"]["kl=0.001"], results["results"][task]["acc@kl=0.001,none"]    (an exit point)

The sweep calls it directly; for the stock `lm_eval` CLI the registration hook (hook.py) installs it in
place of lm_eval.evaluator.evaluate. It changes nothing for any other model or without anytime budgets.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM

from ..errors import ConfigError
from ..exits import ExitPoint, Point, point_name
from .samples import add_compute


class BudgetView(LM):
    """A run's answers at one of its anytime budgets, as an lm-eval model. Rank, world size and the collectives are
    the source's, so a data-parallel run replays each rank's own shard."""

    def __init__(self, source, k: Point):
        super().__init__()
        if k not in source.budgets_scored:
            raise ConfigError(f"budget {k} was not scored by this run (it scored {list(source.budgets_scored)})")
        self.source, self.k = source, k
        self.record = source.view.records[k]

    def _answers(self, kind: str, requests) -> list:
        try:
            answers = [self.record.answers[(kind, req.args)] for req in requests]
        except KeyError:
            raise ConfigError(f"anytime budget {self.k}: a {kind} request was not scored by the run it replays; "
                              "replay the same tasks, limit and metadata") from None
        return [a.as_lm_eval() if hasattr(a, "as_lm_eval") else a for a in answers]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._answers("loglikelihood", requests)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._answers("loglikelihood_rolling", requests)

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise ConfigError("anytime budgets cover loglikelihood requests only")

    def get_model_info(self) -> dict:
        return {"ssm_model": self.source.model_info(self.k)}

    @property
    def rank(self):
        return self.source.rank

    @property
    def world_size(self):
        return self.source.world_size

    def all_gather(self, tensor):
        return self.source.all_gather(tensor)

    def gather_object(self, obj, dst=0):
        return self.source.gather_object(obj, dst)

    def barrier(self) -> None:
        self.source.barrier()


def extra_budgets(lm) -> tuple[Point, ...]:
    """The anytime budgets of an SSM adapter other than its own; () for any other model."""
    return tuple(getattr(lm, "budgets_scored", ())[1:])


def evaluate_with_anytime(evaluate, lm, task_dict, **kwargs) -> Any:
    """lm-eval's evaluate(lm, task_dict, **kwargs), its logged samples with their compute (samples.py), plus one
    replay per anytime budget merged into its results."""
    results = evaluate(lm=lm, task_dict=task_dict, **kwargs)
    add_compute(results, lm)
    budgets = extra_budgets(lm)
    if not budgets:
        return results
    replay_kwargs = {**kwargs, "log_samples": False, "write_out": False}
    per_budget = {k: evaluate(lm=lm.at_budget(k), task_dict=task_dict, **replay_kwargs) for k in budgets}
    if results is not None:  # rank 0
        add_anytime(results, per_budget, lm.at_budget)
    return results


def add_anytime(results: dict, per_budget: dict, view) -> None:
    """Each point's metrics under results["anytime"][name] ("4", "kl=0.001") and as `acc@k=4`, `acc@kl=0.001`."""
    results["anytime"] = {}
    for k, replay in per_budget.items():
        results["anytime"][point_name(k)] = {"results": replay.get("results", {}), "groups": replay.get("groups", {}),
                                             "ssm_model": view(k).get_model_info()["ssm_model"]}
        at = k.label if isinstance(k, ExitPoint) else f"k={k}"
        for section in ("results", "groups"):
            for task, metrics in replay.get(section, {}).items():
                target = results.setdefault(section, {}).setdefault(task, {})
                for name, value in metrics.items():
                    metric, sep, rest = name.partition(",")
                    if sep and metric not in ("alias", "samples") and not metric.endswith("_stderr"):
                        target[f"{metric}@{at},{rest}"] = value
                        stderr = metrics.get(f"{metric}_stderr,{rest}")
                        if stderr is not None:
                            target[f"{metric}@{at}_stderr,{rest}"] = stderr
