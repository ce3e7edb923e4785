"""Compute against accuracy: per task group and length bucket, every budget of a model as a point (cost, score) and
its Pareto front; the leaderboard's "front" table and "longest length at >= 90%" column. Pure functions of tidy
rows (report.py), no torch.

The cost of a budget is the mean number of f evaluations each token of the bucket received (`iters_per_token`: a
fixed budget k costs k; an adaptive one, of any exit criterion, what its pieces used, weighted by their tokens), so
the readings compare: simultaneous evaluates every token of the sequence once per iteration, sequential one token
per step. A point dominates another when it costs no more and scores no worse (lower is better for bits per byte),
and is strictly better in one of the two.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .report import LOWER_IS_BETTER

FRONT_TOLERANCE = 0.01  # the front table: the cheapest budget within this of the best score
LENGTH_ACCURACY = 0.9  # the "longest length at >= 90%" column


@dataclass(frozen=True)
class Point:
    checkpoint: str
    row: dict  # the tidy row (budget fields, value, stderr)
    cost: float  # mean f evaluations per token
    value: float
    stderr: float | None
    family: str  # "fixed" (tol 0) or the exit criterion of an adaptive budget ("residual", "kl", ...)
    on_front: bool = False


def cost(row: dict) -> float | None:
    """Mean f evaluations per token of an implicit row (None for a one-pass model, or without statistics)."""
    if row["kind"] != "implicit":
        return None
    for key in ("iters_per_token", "iters_mean"):
        if isinstance(row.get(key), (int, float)):
            return float(row[key])
    return None if row["tol"] else float(row["max_iter"])


def family(row: dict) -> str:
    return "fixed" if not row["tol"] else (row.get("exit") or "residual")


def better(a: float, b: float, lower: bool) -> bool:
    """a scores strictly better than b."""
    return a < b if lower else a > b


def points(rows: list[dict], metric: str) -> dict[str, list[Point]]:
    """Per checkpoint, its implicit budgets of one bucket as points, those on its Pareto front marked."""
    lower = metric in LOWER_IS_BETTER
    found: dict[str, list[Point]] = defaultdict(list)
    for r in rows:
        c = cost(r)
        if r["status"] == "ok" and r["metric"] == metric and c is not None and isinstance(r["value"], (int, float)):
            found[r["checkpoint"]].append(Point(r["checkpoint"], r, c, float(r["value"]), r.get("stderr"), family(r)))
    return {k: mark_front(v, lower) for k, v in sorted(found.items())}


def mark_front(pts: list[Point], lower: bool) -> list[Point]:
    """The points, sorted by cost, with on_front set where no other point dominates them."""
    def dominates(a: Point, b: Point) -> bool:
        no_worse = a.cost <= b.cost and not better(b.value, a.value, lower)
        return no_worse and (a.cost < b.cost or better(a.value, b.value, lower))

    out = [Point(**{**p.__dict__, "on_front": not any(dominates(q, p) for q in pts)}) for p in pts]
    return sorted(out, key=lambda p: (p.cost, -p.value if not lower else p.value))


def cheapest_within(pts: list[Point], lower: bool, tolerance: float = FRONT_TOLERANCE) -> tuple[Point, Point] | None:
    """(the best point, the cheapest point within `tolerance` of its score); None without points."""
    if not pts:
        return None
    best = min(pts, key=lambda p: (p.value if lower else -p.value, p.cost))
    close = [p for p in pts if abs(p.value - best.value) <= tolerance + 1e-12]
    return best, min(close, key=lambda p: (p.cost, p.value if lower else -p.value))


def longest_at(by_bucket: dict[str, dict], buckets: list[str], threshold: float = LENGTH_ACCURACY) -> int | None:
    """The longest length (the bucket's length_max) whose score reaches `threshold`; None if none does."""
    lengths = [by_bucket[b]["length_max"] for b in buckets
               if b in by_bucket and by_bucket[b]["status"] == "ok" and isinstance(by_bucket[b]["value"], (int, float))
               and by_bucket[b]["value"] >= threshold and by_bucket[b]["length_max"] is not None]
    return max(lengths, default=None)
