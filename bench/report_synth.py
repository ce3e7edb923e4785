"""Synthesized results for timing `implicit-eval report`: --tasks registry tasks (length and shift buckets of every
family, in the registry's order) x --runs budgets of one implicit checkpoint, one lm-eval results JSON per run, as a
sweep writes them (no greedy logs).

    python bench/report_synth.py /tmp/report_bench [--tasks 100 --runs 20]
    /usr/bin/time -v implicit-eval report /tmp/report_bench --out /tmp/report_bench_out

Default: 100 tasks x 20 runs (two readings x k = 1..256 and two tolerances).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

from implicit_ssm_eval.tasks.registry import families


def task_names(count: int) -> list[tuple[str, str, str, object]]:
    """(lm-eval task name, family task, bucket, family) of the first `count` bucket tasks of the registry."""
    found = []
    for family in families().values():
        for name in family.tasks:
            for bucket in family.buckets(name):
                found.append((f"{family.lm_eval_name(name)}_{bucket}", name, bucket, family))
    if len(found) < count:
        raise SystemExit(f"the registry has {len(found)} bucket tasks, asked for {count}")
    return found[:count]


def budgets(count: int) -> list[dict]:
    grid = []
    for mode in ("simultaneous", "sequential"):
        grid += [{"max_iter": 2 ** i, "tol": 0.0, "mode": mode} for i in range(8)]
        grid += [{"max_iter": 256, "tol": tol, "mode": mode} for tol in (0.01, 0.05)]
    return [{**b, "tau": 0.8, "solver": "fixed_point", "block_size": None, "exit": "residual"}
            for b in (grid * (count // len(grid) + 1))[:count]]


def run_json(tasks: list, budget: dict, rng: random.Random) -> dict:
    results, info = {}, {}
    for task, name, bucket, family in tasks:
        acc = rng.random()
        results[task] = {"alias": task, "acc,none": acc, "acc_stderr,none": 0.02, "scaled_acc,none": 2 * acc - 1,
                         "scaled_acc_stderr,none": 0.04}
        iters = min(budget["max_iter"], 1 + rng.random() * 20)
        info[task] = {"documents": 16, "family": family.name, "task": name, "bucket": bucket,
                      "data_hash": hashlib.sha256(task.encode()).hexdigest()[:16], "chance": 0.5,
                      "convergence": {"iterations_mean": iters, "iterations_per_token": iters,
                                      "iterations_p50": iters, "iterations_p90": iters, "iterations_max": iters,
                                      "fraction_converged": 1.0, "fraction_hit_max_iter_unconverged": 0.0}}
    ssm = {"checkpoint": "/ckpt/synth-implicit", "content_hash": "0" * 64, "kind": "implicit", "backend": "torch",
           "dtype": "float32", "device": "cpu", "budget": budget, "tasks": info, "request_seconds": 1.0,
           "convergence": {"scoring": {"iterations_mean": budget["max_iter"] if not budget["tol"] else 5.0}}}
    return {"results": results, "configs": {t[0]: {"metadata": {}} for t in tasks},
            "config": {"model": "ImplicitSSMLM", "ssm_model": ssm}, "date": 1.7e9, "git_hash": "synth"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    rng = random.Random(0)
    tasks = task_names(args.tasks)
    for i, budget in enumerate(budgets(args.runs)):
        target = args.out / "synth-implicit" / f"run{i:03d}" / "results.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(run_json(tasks, budget, rng)))
    print(f"{args.runs} runs x {len(tasks)} tasks -> {args.out}")


if __name__ == "__main__":
    main()
