"""`implicit-eval report`: sweep results -> one tidy table (CSV + JSON), plots and the leaderboard.

A row per (checkpoint, budget, task, metric): checkpoint, kind, task, group, bucket, length, max_iter, tol,
tau, solver, mode, metric, value, stderr, chance, iterations mean and p90 on that task (from the greedy log)
and over the whole run, fraction converged, wall time, data hash. Agreement between simultaneous and
sequential greedy tokens and the iteration distributions come from the sweep's greedy logs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .sweep import RESULTS, write_json_atomic

BUCKETS = ("id", "ood2x", "ood4x", "ood8x")
METRICS = ("acc", "scaled_acc", "acc_norm", "exact_match", "bits_per_byte", "byte_perplexity", "word_perplexity")
COLUMNS = ("checkpoint", "kind", "task", "group", "bucket", "length", "max_iter", "tol", "tau", "solver", "mode",
           "metric", "value", "stderr", "chance", "iters_mean", "iters_p90", "run_iters_mean", "fraction_converged",
           "wall_s", "data_hash")


def load_results(sweep_dir: Path) -> list[dict]:
    """Every results.json under a sweep directory, in a stable order."""
    files = sorted(Path(sweep_dir).glob(f"*/*/{RESULTS}"))
    if not files:
        raise FileNotFoundError(f"{sweep_dir}: no sweep results (*/*/{RESULTS}); run implicit-eval sweep first")
    out = []
    for path in files:
        result = json.loads(path.read_text())
        result["_dir"] = str(path.parent)
        out.append(result)
    return out


def tidy_rows(results: list[dict]) -> list[dict]:
    rows = []
    for result in results:
        rows += _rows_of(result)
    return sorted(rows, key=lambda r: (r["checkpoint"], r["task"], r["metric"], r["mode"] or "", r["tol"] or 0,
                                       r["max_iter"] or 0))


def _rows_of(result: dict) -> list[dict]:
    per_task = task_iterations(result)
    sweep = result["sweep"]
    budget = sweep.get("budget") or {}
    info = result.get("config", {}).get("ssm_model", {})
    scoring = (info.get("convergence") or {}).get("scoring") or {}
    base = {"checkpoint": sweep["checkpoint"], "kind": sweep["kind"], "max_iter": budget.get("max_iter"),
            "tol": budget.get("tol"), "tau": budget.get("tau"), "solver": budget.get("solver"),
            "mode": budget.get("mode"), "iters_mean": scoring.get("iterations_mean"),
            "run_iters_mean": scoring.get("iterations_mean"),
            "iters_p90": scoring.get("iterations_p90"), "fraction_converged": scoring.get("fraction_converged"),
            "wall_s": sweep.get("wall_s")}
    rows = []
    for task, metrics in result.get("results", {}).items():
        bucket = task.rsplit("_", 1)[-1] if task.rsplit("_", 1)[-1] in BUCKETS else "all"
        group = task[: -len(bucket) - 1] if bucket != "all" else task
        for name, value in metrics.items():
            metric, _, flt = name.partition(",")
            if metric not in METRICS or flt != "none" or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,none")
            its = per_task.get(task, {})
            rows.append({**base, **its, "task": task, "group": group, "bucket": bucket,
                         "length": bucket_length(group, bucket), "metric": metric, "value": value,
                         "stderr": stderr if isinstance(stderr, (int, float)) else None,
                         "chance": metrics.get("chance,none"), "data_hash": metrics.get("data_hash,none")})
    return rows


def bucket_length(group: str, bucket: str) -> int | None:
    """The longest sequence of a state-tracking bucket (default lengths), for accuracy-vs-length plots."""
    if not group.startswith("st_") or bucket not in BUCKETS:
        return None
    from implicit_ssm_eval.tasks.state_tracking import TASKS, bucket_lengths

    task = group[3:]
    return bucket_lengths(task)[bucket][1] if task in TASKS else None


def write_table(rows: list[dict], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "results.csv", out / "results.json"
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        writer.writerows([{k: r.get(k) for k in COLUMNS} for r in rows])
    tmp.replace(csv_path)
    write_json_atomic(json_path, rows)
    return csv_path, json_path


def greedy_records(result: dict) -> dict[tuple, dict]:
    """The sweep's greedy log of this result, keyed by the scored token sequence."""
    path = Path(result["_dir"]) / result["sweep"].get("greedy_log", "greedy.jsonl")
    if not path.exists():
        return {}
    records = {}
    with path.open() as fh:
        for line in fh:
            record = json.loads(line)
            records[tuple(record["input"])] = record
    return records


def mode_agreement(results: list[dict]) -> list[dict]:
    """For each implicit checkpoint and (max_iter, tol): the fraction of positions where simultaneous and
    sequential evaluation pick the same greedy token (the paper reports 97.6% over 3M tokens at 1.3B)."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for result in results:
        budget = result["sweep"].get("budget")
        if budget:
            key = (result["sweep"]["checkpoint"], budget["max_iter"], budget["tol"], budget["tau"], budget["solver"])
            by_key.setdefault(key, {})[budget["mode"]] = result
    rows = []
    for (checkpoint, max_iter, tol, tau, solver), modes in sorted(by_key.items()):
        if {"simultaneous", "sequential"} <= modes.keys():
            same, total = _agree(modes["simultaneous"], modes["sequential"], max_iter)
            if total:
                rows.append({"checkpoint": checkpoint, "max_iter": max_iter, "tol": tol, "tau": tau,
                             "solver": solver, "positions": total, "agreement": same / total})
    return rows


def _agree(sim: dict, seq: dict, k: int) -> tuple[int, int]:
    a, b = greedy_records(sim), greedy_records(seq)
    same = total = 0
    for tokens, record in a.items():
        other = b.get(tokens)
        if other is None:
            continue
        x, y = record["greedy"][str(k)], other["greedy"][str(k)]
        same += sum(int(p == q) for p, q in zip(x, y))
        total += len(x)
    return same, total


def task_iterations(result: dict) -> dict[str, dict]:
    """Mean and p90 of the iterations used per task (length bucket), from the greedy log's request names."""
    budget = result["sweep"].get("budget")
    if not budget:
        return {}
    k, by_task = str(budget["max_iter"]), {}
    for record in greedy_records(result).values():
        its = record.get("iterations", {}).get(k)
        task = record.get("request", "").split(" ")[1] if record.get("request", "").startswith("task ") else None
        if task is not None and its is not None:
            by_task.setdefault(task, []).extend(its if isinstance(its, list) else [its])
    out = {}
    for task, values in by_task.items():
        values = sorted(values)
        out[task] = {"iters_mean": sum(values) / len(values), "iters_p90": values[int(0.9 * (len(values) - 1))]}
    return out


def iteration_samples(result: dict) -> list[int]:
    """Iterations used per scored sequence (per token in sequential mode) at this result's budget."""
    k = str(result["sweep"]["budget"]["max_iter"])
    values = []
    for record in greedy_records(result).values():
        its = record.get("iterations", {}).get(k)
        values += its if isinstance(its, list) else [] if its is None else [its]
    return values
