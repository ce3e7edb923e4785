"""`implicit-eval report`: runs (results.py) -> one tidy table (CSV + JSON), plots and the leaderboard.

A row per (checkpoint, budget, task, metric). Task, bucket and lengths come from the fields the task's documents
carry (recorded by the adapter under config.ssm_model.tasks) and the task registry; nothing is parsed from names.
Agreement between readings and the iteration distributions come from the greedy logs, when the runs kept them.
"""

from __future__ import annotations

import csv
import json
import lzma
import math
from collections.abc import Iterable
from pathlib import Path

from ..model_adapters.readings import reading_label
from ..tasks.registry import UnknownTaskError, family_of
from .io import write_atomic, write_json_atomic
from .results import Run

MAIN_METRICS = ("acc", "token_acc", "bits_per_byte")  # a task group's headline metric: the first of these it has
LOWER_IS_BETTER = frozenset({"bits_per_byte", "byte_perplexity", "word_perplexity"})
METRICS = ("acc", "scaled_acc", "token_acc", "seq_acc", "scaled_token_acc", "acc_norm", "exact_match", "bits_per_byte",
           "byte_perplexity", "word_perplexity")  # token_acc, seq_acc, scaled_token_acc: the controls family
COLUMNS = ("checkpoint", "kind", "family", "group", "task", "bucket", "shift", "multiplier", "length_min",
           "length_max", "max_iter", "tol", "exit", "tau", "solver", "mode", "block_size", "metric", "value", "stderr",
           "chance", "iters_mean", "iters_per_token", "iters_p50", "iters_p90", "iters_max", "unit", "run_iters_mean",
           "fraction_converged", "fraction_unconverged", "unknown_tokens", "seed", "data_hash", "status", "error")
DEFAULT_EXIT = "residual"  # model_adapters.exits.DEFAULT_EXIT (not imported: the report needs no torch)
# Rows also carry wall_s and source (the results file): machine-dependent, so not in the written table (timings.md).


def tidy_rows(runs: Iterable[Run]) -> list[dict]:
    rows = []
    for run in runs:
        rows += _rows_of(run)
    return sorted(rows, key=lambda r: (r["checkpoint"], r["group"] or "", r["task"] or "", r["metric"] or "",
                                       r["mode"] or "", r["block_size"] or 0, r["tol"] or 0, r["max_iter"] or 0))


def _rows_of(run: Run) -> list[dict]:
    budget = run.budget or {}
    scoring = (run.info.get("convergence") or {}).get("scoring") or {}
    base = {"checkpoint": run.checkpoint, "kind": run.kind, "max_iter": budget.get("max_iter"),
            "tol": budget.get("tol"), "tau": budget.get("tau"), "solver": budget.get("solver"),
            "mode": budget.get("mode"), "block_size": budget.get("block_size"), "unit": run.info.get("unit"),
            "exit": budget.get("exit", DEFAULT_EXIT) if budget.get("tol") else None,
            "run_iters_mean": scoring.get("iterations_mean"), "wall_s": run.wall_s, "source": str(run.source),
            "status": "failed" if run.error else "ok", "error": run.error}
    if run.error:
        return [{**base, **_task_fields(run, task), "metric": None, "value": None}
                for task in (run.info.get("tasks") or {"(failed)": {}})]
    rows = []
    seeds = data_seeds(run)
    for task, metrics in run.results.items():
        fields = {**_task_fields(run, task), "seed": seeds(task)}
        for name, value in metrics.items():
            metric, _, flt = name.partition(",")
            if metric not in METRICS or flt != "none" or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,none")
            rows.append({**base, **fields, "metric": metric, "value": value,
                         "stderr": stderr if _finite(stderr) else None, **_non_finite(metric, value)})
    return rows


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _non_finite(metric: str, value: float) -> dict:
    """A NaN or infinite score is a failure with its reason, never a number: not shown, averaged or on a front."""
    return {} if math.isfinite(value) else {"value": None, "status": "failed", "error": f"non-finite {metric}"}


def _task_fields(run: Run, task: str) -> dict:
    """What is known of an lm-eval task: the documents' fields recorded by the adapter, the registry's buckets."""
    rec = (run.info.get("tasks") or {}).get(task, {})
    conv = rec.get("convergence") or {}
    lengths = rec.get("length") or [None, None]
    fields = {"task": task, "group": task, "family": rec.get("family"), "bucket": rec.get("bucket"),
              "chance": rec.get("chance"), "data_hash": rec.get("data_hash"), "length_min": lengths[0],
              "length_max": lengths[1], "iters_mean": conv.get("iterations_mean"),
              "iters_per_token": conv.get("iterations_per_token"), "fraction_converged": conv.get("fraction_converged"),
              "iters_p50": conv.get("iterations_p50"), "iters_p90": conv.get("iterations_p90"),
              "iters_max": conv.get("iterations_max"),
              "fraction_unconverged": conv.get("fraction_hit_max_iter_unconverged"),
              "unknown_tokens": rec.get("unknown_tokens"), "shift": None, "multiplier": None}
    found = family_of(task)
    if found is None:
        return fields
    family, name, bucket = found
    fields.update(family=family.name, group=family.lm_eval_name(name), bucket=bucket)
    if bucket is not None:
        try:
            info = family.bucket_info(name, bucket)
        except UnknownTaskError:
            return fields
        fields.update(shift=info.shift, multiplier=info.multiplier)
        if fields["length_min"] is None:
            fields["length_min"], fields["length_max"] = info.lengths
        if fields["chance"] is None:
            fields["chance"] = family.chance(name)
    return fields


def data_seeds(run: Run):
    """The seed of each task's generated data: task -> the family's seed option in the task's metadata (a group's:
    any of its tasks'; 0 when not given), None for a task that generates none (text, a task outside the registry).
    The run's configs are read once, not once per task."""
    first: dict = {}  # each option's value in the first config that sets it
    for config in run.configs.values():
        for key, value in ((config or {}).get("metadata") or {}).items():
            first.setdefault(key, value)

    def seed(task: str) -> int | None:
        found = family_of(task)
        option = found[0].seed_option if found else None
        if option is None:
            return None
        own = (run.configs.get(task) or {}).get("metadata") or {}
        return int(own.get(option, first.get(option, 0)))

    return seed


AVERAGED = ("iters_mean", "iters_per_token", "iters_p50", "iters_p90", "iters_max", "run_iters_mean",
            "fraction_converged", "fraction_unconverged")  # over seeds
# What may differ between seeds of one row (the data's own lengths too: the bucket is the same).
SEED_FREE = ("seed", "value", "stderr", "data_hash", "source", "wall_s", "length_min", "length_max", "unknown_tokens",
             *AVERAGED)


def merge_seeds(rows: list[dict]) -> list[dict]:
    """Rows that differ only in the data's seed, as one: the mean value over seeds, `seeds` (how many), `spread`
    (the standard deviation over seeds, None for one seed), stderr the mean's (sqrt(sum stderr^2) / n), the
    iteration statistics averaged. Rows of one seed come back unchanged, with seeds 1 and spread None."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = tuple((k, repr(v)) for k, v in sorted(r.items()) if k not in SEED_FREE)
        groups.setdefault(key, []).append(r)
    out = []
    for group in groups.values():
        ok = [r for r in group if r["status"] == "ok" and isinstance(r["value"], (int, float))]
        if len(ok) < 2:
            out += [{**r, "seeds": 1, "spread": None} for r in group]
            continue
        n, values = len(ok), [r["value"] for r in ok]
        mean = sum(values) / n
        merged = {**ok[0], "value": mean, "seeds": n, "seed": None, "data_hash": None,
                  "spread": (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5}
        errors = [r["stderr"] for r in ok]
        merged["stderr"] = (sum(e * e for e in errors) ** 0.5) / n if all(e is not None for e in errors) else None
        for k in AVERAGED:
            xs = [r[k] for r in ok if isinstance(r.get(k), (int, float))]
            merged[k] = sum(xs) / len(xs) if len(xs) == n else None
        out.append(merged)
    return out


def bucket_order(group: str) -> list[str]:
    """The group's buckets in the registry's order (length buckets first), or [] for a task outside it."""
    found = family_of(group)
    if found is None:
        return []
    family, task, _ = found
    return list(family.buckets(task))


def write_table(rows: list[dict], out: Path) -> tuple[Path, Path]:
    csv_path, json_path = out / "results.csv", out / "results.json"
    table = [{k: r.get(k) for k in COLUMNS} for r in rows]
    write_atomic(csv_path, lambda tmp: _write_csv(tmp, table))
    write_json_atomic(json_path, table)
    return csv_path, json_path


def _write_csv(path: Path, table: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        writer.writerows(table)


def greedy_records(run: Run) -> dict[tuple, dict]:
    """The greedy log of a run, keyed by the scored token sequence (greedy.jsonl, or greedy.jsonl.xz where a
    committed leaderboard keeps it compressed)."""
    path = run.greedy_log
    if path is not None and not path.exists() and path.with_name(path.name + ".xz").exists():
        path = path.with_name(path.name + ".xz")
    if path is None or not path.exists():
        return {}
    records = {}
    with (lzma.open(path, "rt") if path.suffix == ".xz" else path.open()) as fh:
        for line in fh:
            record = json.loads(line)
            records[tuple(record["input"])] = record
    return records


def mode_agreement(runs: list[Run]) -> list[dict]:
    """For each implicit checkpoint and (max_iter, tol): the fraction of positions where a reading picks the same
    greedy token as the sequential (RNN) reading (the paper reports 97.6% over 3M tokens at 1.3B for simultaneous)."""
    by_key: dict[tuple, dict[str, Run]] = {}
    for run in runs:  # adaptive budgets pair by tolerance: their caps only bound what converges anyway
        if run.budget and not run.error:
            b = run.budget
            key = (run.checkpoint, 0 if b["tol"] else b["max_iter"], b["tol"], b.get("exit", DEFAULT_EXIT), b["tau"],
                   b["solver"], _data_key(run))  # 0: any cap
            by_key.setdefault(key, {})[reading_label(b)] = run
    rows = []
    for (checkpoint, max_iter, tol, exit, tau, solver, _), readings in sorted(by_key.items()):
        reference = readings.get("sequential")
        for label, run in sorted(readings.items()):
            if reference is None or label == "sequential":
                continue
            same, total = _agree(run, reference)
            if total:
                rows.append({"checkpoint": checkpoint, "reading": label, "max_iter": max_iter, "tol": tol, "tau": tau,
                             "solver": solver, "positions": total, "agreement": same / total,
                             "seed": run_seed(reference), **({"exit": exit} if exit != DEFAULT_EXIT else {})})
    return rows


def run_seed(run: Run) -> int | None:
    """The data seed of a run's first task that generates data (None: none does)."""
    seed = data_seeds(run)
    return next((value for task in sorted(run.results) if (value := seed(task)) is not None), None)


def _data_key(run: Run) -> str:
    """The data a run scored (its tasks' data hashes): runs at other data seeds are not paired."""
    return json.dumps(sorted((t, r.get("data_hash")) for t, r in (run.info.get("tasks") or {}).items()))


def greedy_key(run: Run) -> str:
    """A run's entries in its greedy log: its max_iter, or an exit point's name ("kl=0.001") for a run read off
    a trajectory."""
    return str(run.info.get("anytime_point") or (run.budget or {}).get("max_iter"))


def _agree(run: Run, reference: Run) -> tuple[int, int]:
    """Positions where the two runs (each at its own budget) pick the same greedy token, over the sequences both
    scored."""
    a, b = greedy_records(run), greedy_records(reference)
    assert run.budget is not None and reference.budget is not None  # only implicit runs are paired
    ka, kb = greedy_key(run), greedy_key(reference)
    same = total = 0
    for tokens, record in a.items():
        other = b.get(tokens)
        if other is None or ka not in record["greedy"] or kb not in other["greedy"]:
            continue
        x, y = record["greedy"][ka], other["greedy"][kb]
        same += sum(int(p == q) for p, q in zip(x, y))
        total += len(x)
    return same, total


def iteration_samples(run: Run) -> list[int]:
    """Iterations used per solved piece (sequence, token or block) at this run's budget, from its greedy log."""
    k = greedy_key(run)
    values = []
    for record in greedy_records(run).values():
        values += record.get("iterations", {}).get(k, [])
    return values


def headline_metrics(rows: list[dict]) -> dict[str, str]:
    """Each task group's headline metric (accuracy where the group has one, else bits per byte)."""
    found: dict[str, set[str]] = {}
    for r in rows:
        if r["metric"] is not None:
            found.setdefault(r["group"], set()).add(r["metric"])
    return {g: next((m for m in MAIN_METRICS if m in ms), sorted(ms)[0]) for g, ms in found.items()}


def one_pass(row: dict) -> bool:
    """A model read in one pass, with no fixed-point budget: explicit Mamba2, or another lm-eval model (hf, ...)."""
    return row["kind"] != "implicit"

