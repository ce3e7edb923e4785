"""Argument parsing for `implicit-eval sweep`, `report` and `leaderboard`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from implicit_ssm_eval.model_adapters.config import ConfigError

from . import leaderboard, plots, report
from .sweep import DEFAULT_MAX_ITERS, DEFAULT_MODES, DEFAULT_TOLS, SweepSpec, run_sweep

PROJECT = Path(__file__).resolve().parents[1]
BUNDLED = PROJECT / "checkpoints"


def bundled_checkpoints() -> list[Path]:
    found = sorted(p for p in BUNDLED.iterdir() if (p / "config.json").exists()) if BUNDLED.is_dir() else []
    if not found:
        raise ConfigError(f"no checkpoints given and none bundled in {BUNDLED}")
    return found


def sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="implicit-eval sweep", description="Evaluate checkpoints over budgets.")
    p.add_argument("checkpoints", nargs="*", type=Path, help="checkpoint directories (default: checkpoints/*)")
    p.add_argument("--tasks", default="auto", help="comma-separated lm-eval tasks; 'auto' = each checkpoint's "
                   "training task (st_<task>)")
    p.add_argument("--max-iter", type=int, nargs="+", default=list(DEFAULT_MAX_ITERS), help="fixed budgets (tol=0)")
    p.add_argument("--tol", type=float, nargs="+", default=list(DEFAULT_TOLS), help="tolerances; 0 = the fixed "
                   "budgets, > 0 = adaptive budgets capped at --adaptive-max-iter")
    p.add_argument("--adaptive-max-iter", type=int, default=256)
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=["simultaneous", "sequential"])
    p.add_argument("--solver", default="fixed_point", choices=["fixed_point", "anderson"])
    p.add_argument("--tau", type=float, default=None, help="damping (default: each checkpoint's)")
    p.add_argument("--num-docs", type=int, default=25, help="documents per length bucket (st_num_docs; default 25, "
                   "a quick look: the committed leaderboard uses 100)")
    p.add_argument("--metadata", type=json.loads, default={}, help="task parameters as JSON, e.g. '{\"st_seed\": 1}'")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", default="32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--no-anytime", action="store_true", help="run every budget separately (for timing comparisons)")
    p.add_argument("--out", type=Path, default=Path("results/sweep"))
    p.add_argument("--quiet", action="store_true")
    return p


def spec_from(args) -> SweepSpec:
    metadata = {"st_num_docs": args.num_docs, "babi_num_docs": args.num_docs, **args.metadata}
    batch = int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size
    return SweepSpec(checkpoints=tuple(args.checkpoints or bundled_checkpoints()),
                     tasks=tuple(t for t in args.tasks.split(",") if t), max_iters=tuple(args.max_iter),
                     tols=tuple(args.tol), modes=tuple(args.modes), solver=args.solver, tau=args.tau,
                     adaptive_max_iter=args.adaptive_max_iter, metadata=metadata, limit=args.limit,
                     batch_size=batch, device=args.device, dtype=args.dtype, backend=args.backend,
                     anytime=not args.no_anytime)


def sweep_main(argv: list[str]) -> int:
    args = sweep_parser().parse_args(argv)
    run_sweep(spec_from(args), args.out, progress=not args.quiet)
    text = write_report(args.out, args.out / "report", command=f"implicit-eval report {args.out}")
    print(text)
    return 0


def write_report(sweep_dir: Path, out: Path, command: str) -> str:
    """Table, plots and leaderboard.md of a sweep; returns the leaderboard markdown."""
    results = report.load_results(sweep_dir)
    rows = report.tidy_rows(results)
    report.write_table(rows, out)
    agreement = report.mode_agreement(results)
    plots.accuracy_vs_budget(rows, out)
    plots.accuracy_vs_length(rows, out)
    plots.iteration_distributions(results, out)
    plots.agreement(agreement, out)
    sweep_meta = json.loads((sweep_dir / "sweep.json").read_text()) if (sweep_dir / "sweep.json").exists() else {}
    text = leaderboard.render(rows, results, sweep_meta, command, agreement=agreement)
    (out / "leaderboard.md").write_text(text)
    return text


LEADERBOARD_COMMAND = "implicit-eval leaderboard"


def leaderboard_main(argv: list[str]) -> int:
    """Sweep the bundled checkpoints in both modes and regenerate leaderboards/ (markdown, plots, tables)."""
    p = argparse.ArgumentParser(prog=LEADERBOARD_COMMAND, description=leaderboard_main.__doc__)
    p.add_argument("--results", type=Path, default=PROJECT / "results" / "leaderboard")
    p.add_argument("--out", type=Path, default=PROJECT / "leaderboards")
    p.add_argument("--num-docs", type=int, default=100, help="documents per length bucket")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    sweep_args = sweep_parser().parse_args(["--modes", "simultaneous", "sequential", "--tol", "0", "0.05", "0.01",
                                            "--num-docs", str(args.num_docs), "--out", str(args.results),
                                            "--batch-size", "64"])
    run_sweep(spec_from(sweep_args), args.results, progress=not args.quiet)
    print(write_report(args.results, args.out, command=LEADERBOARD_COMMAND))
    return 0


def report_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="implicit-eval report", description="Tidy table, plots and leaderboard.")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: SWEEP_DIR/report")
    args = p.parse_args(argv)
    out = args.out or args.sweep_dir / "report"
    write_report(args.sweep_dir, out, command=" ".join(["implicit-eval", "report", *argv]))
    print(f"wrote {out}", file=sys.stderr)
    return 0
