"""What a results JSON of our adapters says, read back: no torch, no lm-eval (reports import this).

    split_anytime(results)      one standalone results dict per budget of a run with anytime budgets
    unconverged_tasks(info)     tasks whose adaptive budget left more than UNCONVERGED_WARN of pieces unconverged
    convergence_block(info)     the short summary printed after lm-eval's results table

`info` is a run's `config.ssm_model` (adapter/info.py writes it).
"""

from __future__ import annotations

from .readings import reading_label, reading_unit

UNCONVERGED_WARN = 0.1  # above this share of pieces at the cap unconverged, a score is flagged as unconverged


def split_anytime(results: dict) -> dict[int | str | None, dict]:
    """One standalone results dict per budget of a run: its own (keyed by its max_iter; None for an explicit model)
    and each anytime budget's (by max_iter, or by name for an exit point: "kl=0.001"), as if that budget had been
    run alone. Used by the sweep (a file per budget) and by
    the report (plain lm-eval results of a run with anytime budgets)."""
    info = results.get("config", {}).get("ssm_model", {})
    anytime = results.get("anytime") or {}
    copies = {f"k={k}" if k.isdigit() else k for k in anytime}  # acc@k=4, acc@kl=0.001: the points' metrics
    own = {k: v for k, v in results.items() if k != "anytime"}
    for section in ("results", "groups"):
        if section in own:
            own[section] = {task: {m: v for m, v in metrics.items() if not _anytime_copy(m, copies)}
                            for task, metrics in own[section].items()}
    out: dict[int | str | None, dict] = {(info.get("budget") or {}).get("max_iter"): own}
    for k, part in anytime.items():
        out[int(k) if k.isdigit() else k] = {**own, "results": part["results"], "groups": part["groups"],
                                             "config": {**own.get("config", {}), "ssm_model": part["ssm_model"]}}
    return out


def _anytime_copy(name: str, points: set[str]) -> bool:
    """Whether a metric name ("acc@k=4,none", "acc@kl=0.001_stderr,none") is an anytime point's copy."""
    base, at, point = name.partition(",")[0].rpartition("@")
    return bool(at) and point.removesuffix("_stderr") in points


def unconverged_tasks(info: dict) -> dict[str, float]:
    """Tasks of a run (config.ssm_model) whose adaptive budget left more than UNCONVERGED_WARN unconverged."""
    if not (info.get("budget") or {}).get("tol"):
        return {}  # a fixed budget (tol 0) is meant to stop at max_iter
    shares = {task: (rec.get("convergence") or {}).get("fraction_hit_max_iter_unconverged", 0.0)
              for task, rec in (info.get("tasks") or {}).items()}
    return {task: share for task, share in shares.items() if share > UNCONVERGED_WARN}


def convergence_block(info: dict) -> str:
    """The short summary printed after lm-eval's results table: the budget, and per task the iterations used and
    the share of pieces that hit max_iter unconverged."""
    budget = info.get("budget")
    if not budget:
        return ""
    unit = info.get("unit") or reading_unit(budget.get("mode"))
    exit = f", exit={budget['exit']}" if budget.get("exit") else ""  # the default (the residual) goes unsaid
    lines = [f"{info.get('kind', '')}_ssm convergence: max_iter={budget['max_iter']}, tol={budget['tol']:g}{exit}, "
             f"tau={budget['tau']:g}, {budget['solver']}, {reading_label(budget)} (iterations per {unit})", "",
             "| task | mean iterations | p90 | per token | hit max_iter unconverged |", "|---|---|---|---|---|"]
    overall = (info.get("convergence") or {}).get("scoring") or {}
    for task, summary in [("all", overall)] + [(t, (r.get("convergence") or {})) for t, r in
                                                sorted((info.get("tasks") or {}).items())]:
        if summary.get("count"):
            lines.append(f"| {task} | {summary['iterations_mean']:.1f} | {summary['iterations_p90']:.0f} | "
                         f"{summary['iterations_per_token']:.1f} | "
                         f"{summary['fraction_hit_max_iter_unconverged']:.1%} |")
    for task, share in unconverged_tasks(info).items():
        lines.append(f"WARNING: {task}: {share:.0%} of its {unit}s hit max_iter={budget['max_iter']} unconverged; "
                     "its score is that of an unconverged model (raise max_iter or tol)")
    return "\n".join(lines) + "\n"
