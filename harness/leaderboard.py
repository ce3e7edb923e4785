"""Leaderboard markdown from tidy rows (tabulate). Generated, never edited by hand.

Deterministic given the results: wall times live in a separate timings table (timings.md), so regenerating the
committed leaderboard from the same results changes nothing.
"""

from __future__ import annotations

import datetime
import math
from collections import defaultdict

from tabulate import tabulate

from ..model_adapters.readings import reading_label
from ..model_adapters.summaries import UNCONVERGED_WARN
from .fronts import FRONT_TOLERANCE, LENGTH_ACCURACY, cheapest_within, longest_at, points
from .report import LOWER_IS_BETTER, bucket_order, data_seeds, headline_metrics, one_pass
from .results import Run

UNCONVERGED_MARK = "†"


def budget_label(row: dict) -> str:
    if one_pass(row):
        return row["kind"]  # "explicit", "hf", "mamba_ssm"
    reading = reading_label(row)
    if row["tol"] and row.get("exit") not in (None, "residual"):  # another exit criterion at its threshold
        return f"{row['exit']}={row['tol']:g} (≤{row['max_iter']}), {reading}"
    if row["tol"]:
        return f"tol={row['tol']:g} (≤{row['max_iter']}), {reading}"
    return f"k={row['max_iter']}, {reading}"


def bucket_heading(rows: list[dict], bucket: str) -> str:
    """'id (1-32)', '2x (64)', or a shifted bucket's label with its lengths."""
    r = next(r for r in rows if r["bucket"] == bucket)
    lo, hi = r["length_min"], r["length_max"]
    span = "" if lo is None else f" ({lo})" if lo == hi else f" ({lo}-{hi})"
    if r["shift"]:
        return f"{r['shift']}{span}"
    mult = r["multiplier"]
    return (f"{'id' if mult == 1 else f'{mult:g}x'}" if mult else bucket) + span


def header(runs: list[Run], sweep: dict, command: str) -> str:
    """Provenance: commits, backend, device, dtype, date of the newest result, task parameters, the command."""
    ok = [r for r in runs if not r.error]
    dates = [r.date for r in ok if isinstance(r.date, (int, float))]
    date = datetime.datetime.fromtimestamp(max(dates), datetime.timezone.utc).strftime("%Y-%m-%d") if dates else "?"
    params = (sweep.get("spec") or {}).get("metadata") or {}
    seeds = data_seeds_of(ok)
    if len(seeds) > 1:  # the first sweep's own seed would mislead: say which seeds each score averages
        params = {k: v for k, v in params.items() if not k.endswith("_seed")}

    def values(key: str) -> str:
        return ", ".join(sorted({str(r.info.get(key)) for r in ok if r.info.get(key) is not None})) or "?"

    commits = sorted({r.git_hash for r in ok if r.git_hash}) or [sweep.get("commit", "?")]
    commit = f"commit{'s' if len(commits) > 1 else ''} {', '.join(f'`{c}`' for c in commits)}"
    return (f"{commit} · backend {values('backend')} · device {values('device')} · dtype {values('dtype')} · "
            f"date {date} · task parameters {params or 'defaults'}{seeds_note(seeds)}\n\nRegenerate: `{command}`\n")


def data_seeds_of(runs: list[Run]) -> list[int]:
    """The seeds of the generated task data these runs scored (none for text and tasks outside the registry)."""
    found: set[int] = set()
    for run in runs:
        seed = data_seeds(run)
        found.update(s for task in run.results if (s := seed(task)) is not None)
    return sorted(found)


def seeds_note(seeds: list[int]) -> str:
    if len(seeds) < 2:
        return ""
    return (f" · data seeds {', '.join(map(str, seeds))} (each score: the mean over the seeds ± their standard "
            "deviation)")


def _budget_sort(row: dict) -> tuple:
    return (not one_pass(row), row["kind"], row["mode"] or "", row["block_size"] or 0, bool(row["tol"]),
            row.get("exit") or "", row["tol"] or 0, row["max_iter"] or 0)


def cell(row: dict | None) -> str:
    """Accuracy; under adaptive stopping also the bucket's mean iterations (per piece), and a mark when too many
    pieces hit the cap unconverged."""
    if row is None:
        return "–"
    if row["status"] == "failed":  # a failed job; a score that failed says why ("failed (non-finite acc)")
        return f"failed ({row['error']})" if row["metric"] else "failed"
    text = f"{row['value']:.3f}"
    if row.get("spread") is not None:  # several data seeds: their mean ± standard deviation
        text += f"±{row['spread']:.3f}"
    if row["kind"] == "implicit" and row["tol"] and row.get("iters_mean") is not None:
        text += f" ({row['iters_mean']:.0f} it)"
    if unconverged(row):
        text += UNCONVERGED_MARK
    return text


def unconverged(row: dict) -> bool:
    return bool(row["kind"] == "implicit" and row["tol"] and (row.get("fraction_unconverged") or 0) > UNCONVERGED_WARN)


def _cells(rows: list[dict]) -> dict[tuple[str, str], dict[str, dict]]:
    cells: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for r in sorted(rows, key=lambda r: (r["checkpoint"], _budget_sort(r))):
        cells[(r["checkpoint"], budget_label(r))][r["bucket"]] = r
    return cells


def group_table(rows: list[dict], buckets: list[str], longest: bool = False) -> tuple[str, list[dict]]:
    """Models x budgets with one column per bucket (longest: and the longest length scored >= 90%); plus one
    summary per row for best_budgets()."""
    table, summaries = [], []
    failed = [r for r in rows if r["status"] == "failed"]
    for (checkpoint, label), by_bucket in _cells([r for r in rows if r["status"] == "ok"] + failed).items():
        first = next(iter(by_bucket.values()))
        table.append([checkpoint, first["kind"], label, *[cell(by_bucket.get(b, _failed(by_bucket))) for b in buckets],
                      "–" if first["run_iters_mean"] is None else f"{first['run_iters_mean']:.1f}"])
        if longest:
            table[-1].append(longest_at(by_bucket, buckets) or "–")
        accs = [by_bucket[b]["value"] for b in buckets if b in by_bucket and by_bucket[b]["status"] == "ok"]
        if accs:
            summaries.append({"checkpoint": checkpoint, "budget": label, "mean": sum(accs) / len(accs),
                              "hardest": by_bucket.get(buckets[-1], {}).get("value"),
                              "iters": first["run_iters_mean"] or 1.0})
    headers = ["model", "kind", "budget", *[bucket_heading(rows, b) for b in buckets], "iters (mean)"]
    headers += [f"longest ≥{LENGTH_ACCURACY:.0%}"] * longest
    return tabulate(table, headers=headers, tablefmt="github"), summaries


def front_table(rows: list[dict], buckets: list[str], metric: str) -> str:
    """Per implicit model and length bucket: its best score over every budget (fixed k, each exit criterion at
    each threshold, each reading), and the cheapest budget (mean f evaluations per token) within FRONT_TOLERANCE
    of it."""
    lower = metric in LOWER_IS_BETTER
    table = []
    for bucket in buckets:
        for checkpoint, pts in points([r for r in rows if r["bucket"] == bucket], metric).items():
            found = cheapest_within(pts, lower)
            if found is None:
                continue
            best, cheap = found
            table.append([checkpoint, bucket_heading(rows, bucket), f"{best.value:.3f}", budget_label(cheap.row),
                          f"{cheap.value:.3f}", f"{cheap.cost:.1f}", f"{best.cost:.1f}"])
    table.sort(key=lambda t: t[0])  # by model, buckets in order (a stable sort)
    return tabulate(table, headers=["model", "bucket", "best", f"cheapest within {FRONT_TOLERANCE:g}", metric,
                                    "iters/token", "best's iters/token"], tablefmt="github", disable_numparse=True)


def _failed(by_bucket: dict) -> dict | None:
    """The failure of a failed job (its buckets have no rows of their own)."""
    return next((r for r in by_bucket.values() if job_failed(r)), None)


def job_failed(row: dict) -> bool:
    """A row of a job that failed as a whole (its metric unknown), not of one score that failed."""
    return row["status"] == "failed" and row["metric"] is None


def best_budgets(summaries: list[dict], lower_is_better: bool = False) -> str:
    """Each model's best budget: the best mean over buckets (highest accuracy, lowest bits per byte), ties to the
    fewest iterations."""
    sign = -1 if lower_is_better else 1
    best: dict[str, dict] = {}
    for s in summaries:
        current = best.get(s["checkpoint"])
        if current is None or (round(sign * s["mean"], 4), -s["iters"]) > (round(sign * current["mean"], 4),
                                                                            -current["iters"]):
            best[s["checkpoint"]] = s
    rows = [[s["checkpoint"], s["budget"], f"{s['mean']:.3f}", "–" if s["hardest"] is None else f"{s['hardest']:.3f}",
             f"{s['iters']:.1f}"] for s in sorted(best.values(), key=lambda s: s["checkpoint"])]
    return tabulate(rows, headers=["model", "best budget", "mean over buckets", "longest bucket", "iters (mean)"],
                    tablefmt="github")


def render(rows: list[dict], runs: list[Run], sweep: dict, command: str, agreement: list[dict] | None = None) -> str:
    """Every task group with buckets, each in its headline metric (report.headline_metrics)."""
    parts = ["# Leaderboard\n", header(runs, sweep, command)]
    metrics = headline_metrics(rows)
    for group in sorted({r["group"] for r in rows if r["bucket"] is not None}):
        scored = [r for r in rows if r["group"] == group and (r["metric"] == metrics.get(group) or job_failed(r))]
        parts += _group_section(group, scored, metrics.get(group, "acc"))
    if agreement:
        parts += _agreement_section(agreement)
    failures = sorted({(r["checkpoint"], budget_label(r), r["error"] if job_failed(r) else f"{r['task']}: {r['error']}")
                       for r in rows if r["status"] == "failed"})
    if failures:
        parts += ["## Failed jobs", "", tabulate(failures, headers=["model", "budget", "error"], tablefmt="github"), ""]
    return "\n".join(parts)


def group_section_lines(group: str, rows: list[dict], metric: str) -> list[str]:
    """One task group's section (its tables), for the leaderboard and the model cards."""
    return _group_section(group, rows, metric)


def _group_section(group: str, rows: list[dict], metric: str) -> list[str]:
    order = bucket_order(group) or sorted({r["bucket"] for r in rows if r["bucket"]})
    present = {r["bucket"] for r in rows}
    lengths = [b for b in order if b in present and not _shifted(rows, b)]
    shifted = [b for b in order if b in present and _shifted(rows, b)]
    chance = next((r["chance"] for r in rows if r.get("chance") is not None), None)
    title = f"## {group}" + (f" (chance {chance:.3f})" if chance is not None and math.isfinite(chance) else "")
    parts = [title, ""]
    if lengths:
        table, summaries = group_table(rows, lengths, longest=metric not in LOWER_IS_BETTER)
        parts += [f"Length generalisation: {metric} per length bucket (adaptive budgets: with the bucket's mean "
                  "iterations per piece: per sequence in simultaneous mode, per token in sequential mode, per "
                  f"block in blockwise mode; {UNCONVERGED_MARK}: more than {UNCONVERGED_WARN:.0%} of pieces hit the "
                  "cap unconverged); iters = mean f evaluations per piece over the run:", "", table, "",
                  "Best budget per model:", "", best_budgets(summaries, metric in LOWER_IS_BETTER), ""]
        front = front_table(rows, lengths, metric)
        if front.count("\n") > 1:  # a header and at least one row
            parts += [f"Front: per model and bucket, the cheapest budget (mean f evaluations per token) within "
                      f"{FRONT_TOLERANCE:g} of the best {metric} over every budget, exit criterion and reading "
                      f"(fronts_{group}.png draws them all):", "", front, ""]
    if shifted:
        robust = [r for r in rows if one_pass(r) or r["tol"] or r["status"] == "failed"]
        table, _ = group_table(robust or rows, shifted)
        parts += [f"Robustness: {metric} under distribution shift (adaptive budgets and explicit models):", "",
                  table, ""]
    return parts


def _shifted(rows: list[dict], bucket: str) -> bool:
    return any(r["bucket"] == bucket and r["shift"] for r in rows)


def _agreement_section(agreement: list[dict]) -> list[str]:
    seeds = len({a.get("seed") for a in agreement}) > 1  # a row per data seed: say which
    table = [[a["checkpoint"], a["reading"], f"{a.get('exit', 'tol')}={a['tol']:g}" if a["tol"]
              else f"k={a['max_iter']}", *([a.get("seed")] if seeds else []), a["positions"],
              f"{a['agreement']:.4f}"] for a in agreement]
    if seeds:
        table.sort(key=lambda row: tuple(str(x) for x in row[:4]))
    headers = ["model", "reading", "budget", *(["data seed"] if seeds else []), "positions", "agreement"]
    return ["## Agreement with the sequential reading", "",
            "Fraction of positions where a reading chooses the same greedy token as the sequential (RNN) reading "
            "(the paper: 97.6% for simultaneous at 1.3B).", "", tabulate(table, headers=headers, tablefmt="github"), ""]


def timings(rows: list[dict]) -> str:
    """Wall time per run (machine-dependent, so kept out of the leaderboard)."""
    seen: dict[tuple[str, str], float | None] = {}
    for r in rows:
        if r["status"] == "ok":
            seen.setdefault((r["checkpoint"], budget_label(r)), r["wall_s"])
    table = [[c, b, "–" if w is None else f"{w:.1f}"] for (c, b), w in sorted(seen.items())]
    return ("# Timings\n\nEvaluation wall time per run (fixed simultaneous budgets share one anytime run, charged to "
            "the largest; 0.0 = read off that run).\n\n" + tabulate(table, headers=["model", "budget", "wall s"],
                                                                       tablefmt="github") + "\n")
