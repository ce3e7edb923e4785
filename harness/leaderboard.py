"""Leaderboard markdown from a sweep's tidy rows (tabulate). Generated, never edited by hand."""

from __future__ import annotations

import datetime
from collections import defaultdict

from tabulate import tabulate

from .plots import budget_label
from .report import BUCKETS


def header(results: list[dict], sweep: dict, command: str) -> str:
    """Provenance: commits, backend, device, dtype, date of the newest result, task parameters, the command."""
    infos = [r.get("config", {}).get("ssm_model", {}) for r in results]
    dates = [r.get("date") for r in results if isinstance(r.get("date"), (int, float))]
    date = datetime.datetime.fromtimestamp(max(dates), datetime.timezone.utc).strftime("%Y-%m-%d") if dates else "?"
    params = sweep.get("spec", {}).get("metadata") or {}

    def values(key: str) -> str:
        return ", ".join(sorted({str(i.get(key)) for i in infos if i.get(key) is not None})) or "?"

    # Resumed sweeps mix results of several commits: name them all.
    commits = sorted({r["git_hash"] for r in results if r.get("git_hash")}) or [sweep.get("commit", "?")]
    commit = f"commit{'s' if len(commits) > 1 else ''} {', '.join(f'`{c}`' for c in commits)}"
    return (f"{commit} · backend {values('backend')} · device {values('device')} · "
            f"dtype {values('dtype')} · date {date} · task parameters {params or 'defaults'}\n\n"
            f"Regenerate: `{command}`\n")


def _budget_sort(row: dict) -> tuple:
    return (row["kind"] != "explicit", row["mode"] or "", bool(row["tol"]), row["tol"] or 0, row["max_iter"] or 0)


def group_table(rows: list[dict], metric: str) -> tuple[str, list[dict]]:
    """One task group: models x budgets, accuracy per bucket, iterations and wall time; plus best budgets."""
    rows = [r for r in rows if r["metric"] == metric]
    buckets = [b for b in BUCKETS if any(r["bucket"] == b for r in rows)] or ["all"]
    cells = defaultdict(dict)
    for r in rows:
        cells[(r["checkpoint"], budget_label(r))][r["bucket"]] = r
    table, summaries = [], []
    for (checkpoint, label), by_bucket in sorted(cells.items(), key=lambda kv: (kv[0][0], _budget_sort(
            next(iter(kv[1].values()))))):
        first = next(iter(by_bucket.values()))
        accs = [by_bucket[b]["value"] if b in by_bucket else None for b in buckets]
        table.append([checkpoint, first["kind"], label, *[_cell(by_bucket.get(b)) for b in buckets],
                      _fmt(first["run_iters_mean"], 1), _fmt(first["wall_s"], 1)])
        present = [a for a in accs if a is not None]
        summaries.append({"checkpoint": checkpoint, "budget": label, "mean": sum(present) / len(present),
                          "hardest": accs[-1], "iters": first["run_iters_mean"] or 1.0, "wall_s": first["wall_s"]})
    headers = ["model", "kind", "budget", *buckets, "iters (mean)", "wall s"]
    return tabulate(table, headers=headers, tablefmt="github"), summaries


def best_budgets(summaries: list[dict]) -> str:
    """Each model's best budget: highest mean accuracy over buckets, ties to the fewest iterations."""
    best = {}
    for s in summaries:
        current = best.get(s["checkpoint"])
        if current is None or (round(s["mean"], 4), -s["iters"]) > (round(current["mean"], 4), -current["iters"]):
            best[s["checkpoint"]] = s
    rows = [[s["checkpoint"], s["budget"], _fmt(s["mean"]), _fmt(s["hardest"]), _fmt(s["iters"], 1),
             _fmt(s["wall_s"], 1)] for s in sorted(best.values(), key=lambda s: s["checkpoint"])]
    return tabulate(rows, headers=["model", "best budget", "mean over buckets", "longest bucket", "iters (mean)",
                                   "wall s"], tablefmt="github")


def render(rows: list[dict], results: list[dict], sweep: dict, command: str, metric: str = "acc",
           agreement: list[dict] | None = None) -> str:
    parts = ["# Leaderboard\n", header(results, sweep, command)]
    groups = sorted({r["group"] for r in rows if r["metric"] == metric and r["bucket"] != "all"})
    for group in groups:
        group_rows = [r for r in rows if r["group"] == group]
        chance = next((r["chance"] for r in group_rows if r.get("chance") is not None), None)
        table, summaries = group_table(group_rows, metric)
        title = f"## {group}" + (f" (chance {chance:.3f})" if chance is not None else "")
        parts += [title, "", f"{metric} per length bucket (adaptive budgets: with the bucket's mean iterations); "
                  "iters = mean f evaluations per sequence (simultaneous) or per token (sequential) over the run; "
                  "wall s = evaluation time (fixed simultaneous budgets share one anytime run, charged to the "
                  "largest):",
                  "", table, "", "Best budget per model:", "",
                  best_budgets(summaries), ""]
    if agreement:
        table = [[a["checkpoint"], f"k={a['max_iter']}" if not a["tol"] else f"tol={a['tol']:g} (≤{a['max_iter']})",
                  a["positions"], _fmt(a["agreement"], 4)] for a in agreement]
        parts += ["## Simultaneous vs sequential agreement", "",
                  "Fraction of positions where both modes choose the same greedy token (the paper: 97.6% at 1.3B).",
                  "", tabulate(table, headers=["model", "budget", "positions", "agreement"], tablefmt="github"), ""]
    return "\n".join(parts)


def _cell(row: dict | None) -> str:
    """Accuracy; under adaptive stopping also the bucket's mean iterations, which grow with length."""
    if row is None:
        return "–"
    if row["kind"] == "implicit" and row["tol"] and row.get("iters_mean") is not None:
        return f"{row['value']:.3f} ({row['iters_mean']:.0f} it)"
    return _fmt(row["value"])


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"
