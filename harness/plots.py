"""Figures of a sweep (matplotlib, Agg backend, PNG): accuracy vs budget, accuracy vs length, iterations used
under adaptive stopping, and simultaneous/sequential agreement."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .report import BUCKETS, iteration_samples


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def budget_label(row: dict) -> str:
    if row["kind"] == "explicit":
        return "explicit"
    if row["tol"]:
        return f"tol={row['tol']:g} (≤{row['max_iter']}), {row['mode']}"
    return f"k={row['max_iter']}, {row['mode']}"


def accuracy_vs_budget(rows: list[dict], out: Path, metric: str = "acc") -> list[Path]:
    """Per task group, a panel per length bucket: accuracy against max_iter (tol = 0) for each implicit model
    and mode, adaptive budgets at their mean iterations, explicit models as flat lines."""
    plt = _pyplot()
    paths = []
    for group, group_rows in _by(rows, "group").items():
        buckets = [b for b in BUCKETS if any(r["bucket"] == b for r in group_rows)] or ["all"]
        fig, axes = plt.subplots(1, len(buckets), figsize=(4 * len(buckets), 3.4), sharey=True, squeeze=False)
        for ax, bucket in zip(axes[0], buckets):
            _budget_panel(ax, [r for r in group_rows if r["bucket"] == bucket and r["metric"] == metric])
            ax.set_title(f"{group} {bucket}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("fixed-point iterations")
        axes[0][0].set_ylabel(metric)
        chance = next((r["chance"] for r in group_rows if r.get("chance") is not None), None)
        for ax in axes[0]:
            if chance is not None:
                ax.axhline(chance, color="grey", lw=0.8, ls=":", label="chance")
        axes[0][-1].legend(fontsize=7, loc="lower right")
        paths.append(_save(fig, out / f"acc_vs_budget_{group}.png"))
    return paths


def _budget_panel(ax, rows: list[dict]) -> None:
    for (checkpoint, mode), series in _by(rows, "checkpoint", "mode").items():
        fixed = sorted((r["max_iter"], r["value"]) for r in series if r["kind"] == "implicit" and not r["tol"])
        if fixed:
            ax.plot(*zip(*fixed), marker="o", ms=3, label=f"{checkpoint} ({mode})")
        for r in series:
            if r["kind"] == "implicit" and r["tol"] and r["iters_mean"]:
                ax.scatter([r["iters_mean"]], [r["value"]], marker="*", s=60, zorder=3,
                           label=f"{checkpoint} tol={r['tol']:g} ({mode})")
            if r["kind"] == "explicit":
                ax.axhline(r["value"], ls="--", lw=1, color="black", label=f"{checkpoint} (explicit)")


def accuracy_vs_length(rows: list[dict], out: Path, metric: str = "acc", max_iters=(4, 16, 64)) -> list[Path]:
    """Accuracy against the bucket's sequence length, at a few fixed budgets, the adaptive ones and explicit."""
    plt = _pyplot()
    paths = []
    for group, group_rows in _by([r for r in rows if r["length"] and r["metric"] == metric], "group").items():
        fig, ax = plt.subplots(figsize=(8.5, 3.8))
        for (checkpoint, label), series in _by(group_rows, "checkpoint", "_label").items():
            r0 = series[0]
            if r0["kind"] == "implicit" and not r0["tol"] and r0["max_iter"] not in max_iters:
                continue
            points = sorted((r["length"], r["value"]) for r in series)
            ax.plot(*zip(*points), marker="o", ms=3, ls="--" if r0["kind"] == "explicit" else "-",
                    color="black" if r0["kind"] == "explicit" else None, label=f"{checkpoint}: {label}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel(metric)
        ax.set_title(group)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: lines fill the panel
        paths.append(_save(fig, out / f"acc_vs_length_{group}.png"))
    return paths


def iteration_distributions(results: list[dict], out: Path) -> list[Path]:
    """Histograms of iterations used under adaptive stopping: a panel per mode, since simultaneous mode counts
    per sequence and sequential mode per token (counts on different scales; each histogram sums to 1)."""
    plt = _pyplot()
    adaptive = [r for r in results if (r["sweep"].get("budget") or {}).get("tol")]
    by_mode = {mode: [r for r in adaptive if r["sweep"]["budget"]["mode"] == mode]
               for mode in ("simultaneous", "sequential")}
    by_mode = {mode: rs for mode, rs in by_mode.items() if rs}
    if not by_mode:
        return []
    fig, axes = plt.subplots(1, len(by_mode), figsize=(5.0 * len(by_mode), 3.6), squeeze=False)
    for ax, (mode, mode_results) in zip(axes[0], by_mode.items(), strict=True):
        _iteration_panel(ax, mode_results)
        ax.set_title(f"{mode}: iterations per {'sequence' if mode == 'simultaneous' else 'token'}")
    return [_save(fig, out / "iterations_adaptive.png")]


def _iteration_panel(ax, results: list[dict]) -> None:
    samples = {id(r): iteration_samples(r) for r in results}
    top = max((max(s) for s in samples.values() if s), default=1)
    # Log-spaced integer bins: most counts are small, a few runs reach the cap.
    edges = sorted({round((top + 1) ** (i / 40)) for i in range(41)} | {1, top + 1})
    bins = [e - 0.5 for e in edges]
    for result in results:
        values = samples[id(result)]
        if values:
            b = result["sweep"]["budget"]
            ax.hist(values, bins=bins, histtype="step", weights=[1 / len(values)] * len(values),
                    label=f"{result['sweep']['checkpoint']} tol={b['tol']:g}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("iterations used")
    ax.set_ylabel("fraction per bin")
    ax.legend(fontsize=6)


def agreement(rows: list[dict], out: Path) -> list[Path]:
    """Fraction of positions with the same greedy token in simultaneous and sequential mode, per budget."""
    if not rows:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for checkpoint, series in _by(rows, "checkpoint").items():
        series = sorted(series, key=lambda r: (r["tol"], r["max_iter"]))
        labels = [f"k={r['max_iter']}" if not r["tol"] else f"tol={r['tol']:g}" for r in series]
        ax.plot(labels, [r["agreement"] for r in series], marker="o", label=checkpoint)
    ax.axhline(0.976, color="grey", ls=":", lw=0.8, label="paper, 1.3B (97.6%)")
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_ylabel("same greedy token")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    return [_save(fig, out / "mode_agreement.png")]


def _by(rows: list[dict], *keys: str) -> dict:
    groups = defaultdict(list)
    for r in rows:
        r = {**r, "_label": budget_label(r)} if "_label" in keys else r
        groups[r[keys[0]] if len(keys) == 1 else tuple(r[k] for k in keys)].append(r)
    return dict(groups)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
