"""Figures of a set of runs (matplotlib, Agg backend, PNG): accuracy vs budget, accuracy vs length bucket,
robustness under distribution shift, iterations used under adaptive stopping, and agreement between readings.

Readable at a glance: every model has its own colour and every reading its own line style and marker; explicit
baselines are drawn in their model's colour; legends sit outside the data; length buckets are labelled the way
people think of them (id, 2x, 4x, 8x); series that coincide are spread by a small offset so none hides another.
Each figure is drawn from *series* (label, x, y, style) computed by a function of its own, which the tests check.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..model_adapters.readings import reading_label, reading_unit
from .fronts import points
from .io import inside, save_figure_atomic
from .leaderboard import bucket_heading, budget_label
from .report import LOWER_IS_BETTER, bucket_order, iteration_samples, one_pass
from .results import Run

READING_STYLE = {"simultaneous": ("-", "o"), "sequential": ("--", "s"), "blockwise": ("-.", "^"), None: (":", "D")}
OTHER_READING = ("-", "v")  # a reading registered elsewhere (readings.py)
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
          "tab:cyan", "tab:gray")


@dataclass
class Series:
    label: str
    x: list
    y: list
    color: str
    linestyle: str
    marker: str
    hollow: bool = False  # adaptive budgets: hollow markers, beside their reading's filled fixed budgets


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colors_of(rows: list[dict]) -> dict[str, str]:
    """One colour per checkpoint, stable across every figure of a report."""
    return {c: COLORS[i % len(COLORS)] for i, c in enumerate(sorted({r["checkpoint"] for r in rows}))}


def _style(row: dict, colors: dict[str, str]) -> tuple[str, str, str]:
    linestyle, marker = READING_STYLE.get(row["mode"] if row["kind"] == "implicit" else None, OTHER_READING)
    return colors[row["checkpoint"]], linestyle, marker


def _ok(rows: list[dict], metric: str) -> list[dict]:
    return [r for r in rows if r["status"] == "ok" and r["metric"] == metric]


# -- accuracy vs budget ----------------------------------------------------------------------------------------------
def budget_series(rows: list[dict], colors: dict[str, str]) -> tuple[list[Series], list[Series], list[Series]]:
    """For one bucket: fixed budgets (a line per model and reading), adaptive budgets (a point at their mean
    iterations) and explicit models (a level)."""
    fixed, adaptive, explicit = [], [], []
    groups = _by(rows, "checkpoint", "_reading")
    for (checkpoint, reading), series in groups.items():
        color, ls, marker = _style(series[0], colors)
        points = sorted((r["max_iter"], r["value"]) for r in series if r["kind"] == "implicit" and not r["tol"])
        if points:
            xs, ys = map(list, zip(*points))
            fixed.append(Series(f"{checkpoint}, {reading}", xs, ys, color, ls, marker))
        for r in series:
            if r["kind"] == "implicit" and r["tol"] and r["iters_mean"]:
                adaptive.append(Series(f"{checkpoint}, {budget_label(r)}", [r["iters_mean"]], [r["value"]], color,
                                       "none", marker))
            if one_pass(r):
                explicit.append(Series(f"{checkpoint} ({r['kind']})", [], [r["value"]], color, ls, marker))
    return fixed, adaptive, explicit


def accuracy_vs_budget(rows: list[dict], out: Path, metric: str = "acc") -> list[Path]:
    """Per task group, a panel per length bucket: accuracy against max_iter (tol = 0) per model and reading."""
    plt, colors, paths = _pyplot(), colors_of(rows), []
    for group, group_rows in _by(_ok(rows, metric), "group").items():
        buckets = _length_buckets(group, group_rows)
        if not buckets:
            continue
        fig, axes = plt.subplots(1, len(buckets), figsize=(3.6 * len(buckets) + 3.2, 3.4), sharey=True,
                                 squeeze=False)
        for ax, bucket in zip(axes[0], buckets):
            fixed, adaptive, explicit = budget_series([r for r in group_rows if r["bucket"] == bucket], colors)
            for s in fixed:
                ax.plot(s.x, s.y, color=s.color, ls=s.linestyle, marker=s.marker, ms=4, label=s.label)
            for s in adaptive:  # hollow, larger: an adaptive budget at its mean iterations
                ax.scatter(s.x, s.y, facecolors="white", edgecolors=s.color, marker=s.marker, s=110, lw=2, zorder=3,
                           label=s.label)
            for s in explicit:
                ax.axhline(s.y[0], color=s.color, ls=":", lw=1.4, label=s.label)
            _chance(ax, group_rows)
            ax.set_title(bucket_heading(group_rows, bucket), fontsize=9)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(_plain_numbers())
            ax.set_xlabel("fixed-point iterations (max_iter)")
        axes[0][0].set_ylabel(f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric)
        fig.suptitle(group, fontsize=10)
        _legend_outside(fig, axes[0][-1])
        paths.append(_save(fig, inside(out, f"acc_vs_budget_{group}.png")))
    return paths


# -- fronts: accuracy against compute ---------------------------------------------------------------------------------
FAMILY_MARKERS = {"fixed": "o", "residual": "s", "residual_abs": "P", "kl": "^", "entropy": "v", "argmax": "D"}


def front_series(rows: list[dict], metric: str, colors: dict[str, str]) -> list[Series]:
    """For one bucket: per model and budget family (fixed k, each exit criterion), its points (mean f evaluations
    per token, score) in order of cost; then per model its Pareto front as a line (label ending "front")."""
    out = []
    for checkpoint, pts in points(rows, metric).items():
        color = colors[checkpoint]
        for name in sorted({p.family for p in pts}, key=lambda f: (f != "fixed", f)):
            mine = [p for p in pts if p.family == name]
            out.append(Series(f"{checkpoint}, {name}", [p.cost for p in mine], [p.value for p in mine], color, "none",
                              FAMILY_MARKERS.get(name, "X"), hollow=name != "fixed"))
        front = [p for p in pts if p.on_front]
        out.append(Series(f"{checkpoint} front", [p.cost for p in front], [p.value for p in front], color, "-", ""))
    return out


def fronts(rows: list[dict], out: Path, metric: str = "acc") -> list[Path]:
    """Per task group, a panel per length bucket: every implicit budget (fixed k, each exit criterion at each
    threshold, each reading) at its mean f evaluations per token against its score with standard error bars (over
    documents; with several data seeds, of their mean); each model's Pareto front joined by a line."""
    plt, colors, paths = _pyplot(), colors_of(rows), []
    for group, group_rows in _by(_ok(rows, metric), "group").items():
        buckets = [b for b in _length_buckets(group, group_rows)
                   if any(r["bucket"] == b and r["kind"] == "implicit" for r in group_rows)]
        if not buckets:
            continue
        fig, axes = plt.subplots(1, len(buckets), figsize=(3.6 * len(buckets) + 3.2, 3.4), sharey=True,
                                 squeeze=False)
        for ax, bucket in zip(axes[0], buckets):
            bucket_rows = [r for r in group_rows if r["bucket"] == bucket]
            for s in front_series(bucket_rows, metric, colors):
                if s.label.endswith(" front"):
                    ax.plot(s.x, s.y, color=s.color, lw=1.0, alpha=0.6, zorder=1)
                    continue
                ax.scatter(s.x, s.y, marker=s.marker, s=28, zorder=3, label=s.label, edgecolors=s.color,
                           facecolors="white" if s.hollow else s.color)
            for checkpoint, pts in points(bucket_rows, metric).items():  # one artist per model, not per point
                bars = [p for p in pts if p.stderr]
                if bars:
                    ax.errorbar([p.cost for p in bars], [p.value for p in bars], yerr=[p.stderr for p in bars],
                                fmt="none", color=colors[checkpoint], lw=0.8, zorder=2)
            _chance(ax, group_rows)
            ax.set_title(bucket_heading(group_rows, bucket), fontsize=9)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(_plain_numbers())
            ax.set_xlabel("mean f evaluations per token")
        axes[0][0].set_ylabel(f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric)
        fig.suptitle(f"{group}: {metric} against compute (line: Pareto front)", fontsize=10)
        _legend_outside(fig, axes[0][-1])
        paths.append(_save(fig, inside(out, f"fronts_{group}.png")))
    return paths


# -- accuracy vs length ----------------------------------------------------------------------------------------------
def length_series(rows: list[dict], buckets: list[str], colors: dict[str, str], max_iters=(4, 16, 64)
                  ) -> list[Series]:
    """A line per (model, budget) over the length buckets (x = bucket index); fixed budgets only at max_iters.
    Series with identical values are spread by a small horizontal offset so that none hides another."""
    out: list[Series] = []
    seen: defaultdict[tuple, int] = defaultdict(int)
    for (checkpoint, label), series in _by(rows, "checkpoint", "_label").items():
        r0 = series[0]
        if r0["kind"] == "implicit" and not r0["tol"] and r0["max_iter"] not in max_iters:
            continue
        values = {r["bucket"]: r["value"] for r in series}
        ys = [values.get(b) for b in buckets]
        offset = 0.06 * seen[tuple(ys)]
        seen[tuple(ys)] += 1
        color, ls, marker = _style(r0, colors)
        xs = [i + offset for i, y in enumerate(ys) if y is not None]
        out.append(Series(f"{checkpoint}: {label}", xs, [y for y in ys if y is not None], color, ls, marker,
                          hollow=bool(r0["kind"] == "implicit" and r0["tol"])))
    return out


def accuracy_vs_length(rows: list[dict], out: Path, metric: str = "acc") -> list[Path]:
    plt, colors, paths = _pyplot(), colors_of(rows), []
    for group, group_rows in _by(_ok(rows, metric), "group").items():
        buckets = _length_buckets(group, group_rows)
        if len(buckets) < 2:
            continue
        fig, ax = plt.subplots(figsize=(9.5, 4.0))
        for s in length_series([r for r in group_rows if r["bucket"] in buckets], buckets, colors):
            ax.plot(s.x, s.y, color=s.color, ls=s.linestyle, marker=s.marker, ms=7 if s.hollow else 4,
                    markerfacecolor="white" if s.hollow else s.color, label=s.label)
        _chance(ax, group_rows)
        ax.set_xticks(range(len(buckets)), [bucket_heading(group_rows, b).replace(" (", "\n(") for b in buckets])
        ax.set_xlabel("length bucket (multiple of the training length)")
        ax.set_ylabel(metric)
        _metric_axis(ax, metric)
        ax.set_title(group)
        _legend_outside(fig, ax)
        paths.append(_save(fig, inside(out, f"acc_vs_length_{group}.png")))
    return paths


# -- robustness ------------------------------------------------------------------------------------------------------
def robustness_series(rows: list[dict], buckets: list[str], colors: dict[str, str]) -> list[Series]:
    """A row of points per (model, adaptive budget or explicit) over the distribution-shift buckets."""
    keep = [r for r in rows if one_pass(r) or r["tol"]]
    out = []
    for (checkpoint, label), series in _by(keep, "checkpoint", "_label").items():
        values = {r["bucket"]: r["value"] for r in series}
        color, _, marker = _style(series[0], colors)
        out.append(Series(f"{checkpoint}: {label}", [i for i, b in enumerate(buckets) if b in values],
                          [values[b] for b in buckets if b in values], color, "none", marker))
    return out


def robustness(rows: list[dict], out: Path, metric: str = "acc") -> list[Path]:
    """Per group with distribution-shift buckets: accuracy per shifted bucket, beside the in-distribution one."""
    plt, colors, paths = _pyplot(), colors_of(rows), []
    for group, group_rows in _by(_ok(rows, metric), "group").items():
        shifted = [b for b in bucket_order(group) if any(r["bucket"] == b and r["shift"] for r in group_rows)]
        if not shifted:
            continue
        buckets = [b for b in _length_buckets(group, group_rows)[:1] + shifted]
        series = robustness_series([r for r in group_rows if r["bucket"] in buckets], buckets, colors)
        fig, ax = plt.subplots(figsize=(2.0 * len(buckets) + 4.5, 4.0))
        width = 0.7 / max(1, len(series))
        for i, s in enumerate(series):
            ax.scatter([x - 0.35 + width * (i + 0.5) for x in s.x], s.y, color=s.color, marker=s.marker, s=36,
                       label=s.label, zorder=3)
        _chance(ax, group_rows)
        ax.set_xticks(range(len(buckets)), [bucket_heading(group_rows, b).replace(" (", "\n(") for b in buckets],
                      fontsize=8)
        ax.set_ylabel(metric)
        _metric_axis(ax, metric)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{group}: robustness under distribution shift (adaptive budgets)")
        _legend_outside(fig, ax)
        paths.append(_save(fig, inside(out, f"robustness_{group}.png")))
    return paths


# -- iterations and agreement ----------------------------------------------------------------------------------------
def iteration_distributions(runs: list[Run], out: Path) -> list[Path]:
    """Histograms of iterations used under adaptive stopping: a panel per reading, since each counts per its own
    piece (sequence, token or block); each histogram sums to 1."""
    plt = _pyplot()
    adaptive = [r for r in runs if not r.error and (r.budget or {}).get("tol")]
    by_reading: dict[str, list[Run]] = defaultdict(list)
    for run in adaptive:
        by_reading[reading_label(run.budget)].append(run)
    samples = {id(r): iteration_samples(r) for r in adaptive}
    by_reading = {k: v for k, v in sorted(by_reading.items()) if any(samples[id(r)] for r in v)}
    if not by_reading:
        return []
    fig, axes = plt.subplots(1, len(by_reading), figsize=(4.6 * len(by_reading) + 2.5, 3.6), squeeze=False)
    colors = colors_of([{"checkpoint": r.checkpoint} for r in adaptive])
    for ax, (reading, reading_runs) in zip(axes[0], by_reading.items()):
        top = max(max(samples[id(r)], default=1) for r in reading_runs)
        edges = sorted({round((top + 1) ** (i / 40)) for i in range(41)} | {1, top + 1})  # log-spaced integer bins
        for run in reading_runs:
            values = samples[id(run)]
            if values:
                ax.hist(values, bins=[e - 0.5 for e in edges], histtype="step", color=colors[run.checkpoint],
                        weights=[1 / len(values)] * len(values),
                        label=f"{run.checkpoint} {run.implicit_budget.get('exit', 'tol')}="
                              f"{run.implicit_budget['tol']:g}")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(_plain_numbers())
        ax.set_xlabel("iterations used")
        ax.set_title(f"{reading}: per {reading_unit(reading_runs[0].implicit_budget['mode'])}", fontsize=9)
    axes[0][0].set_ylabel("fraction per bin")
    _legend_outside(fig, axes[0][-1])
    return [_save(fig, out / "iterations_adaptive.png")]


def agreement(rows: list[dict], out: Path) -> list[Path]:
    """Fraction of positions with the same greedy token as the sequential reading, per reading and budget."""
    if not rows:
        return []
    plt = _pyplot()
    colors = colors_of(rows)
    fig, ax = plt.subplots(figsize=(8.0, 3.6))
    labels = sorted({_budget_tick(r) for r in rows}, key=lambda t: (t.startswith("tol"), len(t), t))
    for (checkpoint, reading), series in _by(rows, "checkpoint", "reading").items():
        points = sorted((labels.index(_budget_tick(r)), r["agreement"]) for r in series)
        ls, marker = READING_STYLE[reading.split()[0]]
        ax.plot(*zip(*points), color=colors[checkpoint], ls=ls, marker=marker, label=f"{checkpoint}: {reading}")
    ax.axhline(0.976, color="grey", ls=":", lw=0.8, label="paper, 1.3B simultaneous (97.6%)")
    ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=8)
    ax.set_ylabel("same greedy token as sequential")
    ax.set_ylim(0, 1.02)
    _legend_outside(fig, ax)
    return [_save(fig, out / "mode_agreement.png")]


def _budget_tick(row: dict) -> str:
    return f"k={row['max_iter']}" if not row["tol"] else f"{row.get('exit', 'tol')}={row['tol']:g}"


# -- helpers ---------------------------------------------------------------------------------------------------------
def _length_buckets(group: str, rows: list[dict]) -> list[str]:
    present = {r["bucket"] for r in rows if r["bucket"] and not r["shift"]}
    return [b for b in bucket_order(group) if b in present] or sorted(present)


def _plain_numbers():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x:g}")


def _chance(ax, rows: list[dict]) -> None:
    chance = next((r["chance"] for r in rows if r.get("chance") is not None), None)
    if chance is not None and chance == chance:  # not NaN
        ax.axhline(chance, color="grey", lw=0.8, ls=(0, (1, 3)), label="chance")


def _legend_outside(fig, ax) -> None:
    """One legend for the figure, right of the last panel: never over the data."""
    handles, labels = [], []
    for a in fig.axes:
        for h, lab in zip(*a.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _metric_axis(ax, metric: str) -> None:
    """Accuracies on [0, 1]; bits per byte and perplexities on their own scale, lower marked as better."""
    if metric in LOWER_IS_BETTER:
        ax.set_ylabel(f"{metric} (lower is better)")
    else:
        ax.set_ylim(-0.03, 1.05)


def _by(rows: list[dict], *keys: str) -> dict:
    groups = defaultdict(list)
    for r in rows:
        if "_label" in keys or "_reading" in keys:
            r = {**r, "_label": budget_label(r), "_reading": r["mode"] or "explicit"}
        groups[r[keys[0]] if len(keys) == 1 else tuple(r[k] for k in keys)].append(r)
    return dict(groups)


def save_figure(fig, path: Path) -> Path:
    """Write a figure as PNG (parents created; atomically: an earlier plot is replaced whole or kept) and release
    it."""
    fig.tight_layout()
    try:
        save_figure_atomic(fig, path, dpi=120, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


_save = save_figure


def pyplot():
    """matplotlib.pyplot on the Agg backend (for the model cards' figures)."""
    return _pyplot()
