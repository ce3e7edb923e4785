"""`implicit-eval report`: tidy table, plots and leaderboard from any lm-eval results; no torch, no lm-eval.

Also the report that `implicit-eval sweep` and `leaderboard` write at their end (write_report).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import leaderboard, plots, report
from .io import write_text_atomic
from .results import Loaded, load_runs


def write_report(paths: list[Path], out: Path, command: str, sweep_meta: dict | None = None,
                 timings_dir: Path | None = None) -> str:
    """Table, plots, leaderboard.md and timings.md of the runs found in `paths`; returns the leaderboard."""
    loaded = load_runs(paths)
    meta = sweep_meta if sweep_meta is not None else _sweep_meta(paths)
    return render_report(loaded, out, command, meta, timings_dir)


def render_report(loaded: Loaded, out: Path, command: str, sweep_meta: dict, timings_dir: Path | None = None,
                  draw: bool = True) -> str:
    """Everything a report writes (draw=False: no figures); wall times go to timings_dir (default: out), so that a
    committed leaderboard folder holds only what the results determine."""
    rows = report.tidy_rows(loaded.runs)
    report.write_table(rows, out)  # a row per data seed; the figures and the leaderboard: mean and spread over seeds
    rows = report.merge_seeds(rows)
    agreement = report.mode_agreement(loaded.runs)
    if draw:
        draw_figures(rows, loaded, agreement, out)
    text = leaderboard.render(rows, loaded.runs, sweep_meta, command, agreement=agreement)
    write_text_atomic(out / "leaderboard.md", text)
    write_text_atomic((timings_dir or out) / "timings.md", leaderboard.timings(rows))
    return text


def draw_figures(rows: list[dict], loaded: Loaded, agreement: list[dict], out: Path) -> None:
    """Every figure of a report: each task group in its headline metric, the iterations and the agreement."""
    metrics = report.headline_metrics(rows)
    for metric in sorted(set(metrics.values())):
        part = [r for r in rows if metrics.get(r["group"]) == metric]
        plots.accuracy_vs_budget(part, out, metric)
        plots.accuracy_vs_length(part, out, metric)
        plots.robustness(part, out, metric)
        plots.fronts(part, out, metric)
    plots.iteration_distributions(loaded.runs, out)
    plots.agreement(agreement, out)


def _sweep_meta(paths: list[Path]) -> dict:
    """The sweep's plan (sweep.json) of the first folder that has one: its own, or its first seed's (--seeds)."""
    for path in paths:
        found = [Path(path) / "sweep.json", *sorted(Path(path).glob("seed*/sweep.json"))]
        meta = next((m for m in found if m.is_file()), found[0])
        if meta.is_file():
            try:
                return json.loads(meta.read_text())
            except json.JSONDecodeError:
                return {}
    return {}


def report_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="implicit-eval report", description="Tidy table, plots and leaderboard from any "
                                "lm-eval results of implicit_ssm/explicit_ssm: a sweep folder, `lm_eval "
                                "--output_path` folders, or results JSON files.")
    p.add_argument("paths", nargs="+", type=Path, help="results files or folders (searched recursively)")
    p.add_argument("--out", type=Path, default=None, help="default: PATH/report for one folder, else ./report")
    p.add_argument("--no-plots", action="store_true", help="tables and leaderboard only (figures take most of the "
                   "time: about a second each on a 2-core CPU)")
    args = p.parse_args(argv)
    out = args.out or (args.paths[0] / "report" if len(args.paths) == 1 and args.paths[0].is_dir() else Path("report"))
    loaded = load_runs(args.paths)
    for path, why in loaded.skipped:
        print(f"implicit-eval report: skipped {path}: {why}", file=sys.stderr)
    render_report(loaded, out, " ".join(["implicit-eval", "report", *argv]), _sweep_meta(args.paths),
                  draw=not args.no_plots)
    print(f"implicit-eval report: {len(loaded.runs)} runs -> {out} (leaderboard.md, results.csv"
          f"{'' if args.no_plots else ', plots'})", file=sys.stderr)
    return 0
