"""Argument parsing for `implicit-eval sweep` and `leaderboard` (`report`: report_cli.py, which needs no torch)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..model_adapters.adapter.args import DTYPES, STATE_DTYPES
from ..model_adapters.backends import BACKENDS
from ..model_adapters.errors import ConfigError
from ..model_adapters.exits import EXITS, ExitPoint, point_name, threshold_problem
from ..model_adapters.fixed_point import SOLVERS
from ..model_adapters.readings import READINGS
from .executors import EXECUTORS, Executor, LocalExecutor, SlurmExecutor, Submission, cluster_settings, status_text
from .report_cli import write_report
from .sweep import DEFAULT_MAX_ITERS, DEFAULT_MODES, DEFAULT_TOLS, Outcome, SweepSpec, resolve_workers, run_sweep

PROJECT = Path(__file__).resolve().parents[1]
BUNDLED = PROJECT / "checkpoints"


def bundled_checkpoints(family: str | None = None) -> list[Path]:
    """The bundled checkpoints (our formats, and the transformer twins as Hugging Face directories, which the sweep
    scores through lm-eval's own `hf` model), optionally only those trained on a task of `family`."""
    found = sorted(p for p in BUNDLED.iterdir() if (p / "config.json").exists()) if BUNDLED.is_dir() else []
    if not found:
        raise ConfigError(f"no checkpoints given and none bundled in {BUNDLED}")
    return [p for p in found if family is None or training_family(p) == family]


def training_family(checkpoint: Path) -> str | None:
    """The task family a bundled checkpoint was trained on (from its training record), None if unrecorded."""
    from ..tasks.registry import UnknownTaskError, family_for_task
    from .transformer import TRAINING_FILE, is_transformer_dir

    if is_transformer_dir(checkpoint):
        training = json.loads((checkpoint / TRAINING_FILE).read_text())
    else:
        training = json.loads((checkpoint / "config.json").read_text()).get("training") or {}
    task = (training.get("config") or {}).get("task")
    try:
        return family_for_task(task).name if task else None
    except UnknownTaskError:
        return None


# The main job's language part (`implicit-eval sweep` with no checkpoints): the text trio on the pydoc family at two
# documents a bucket, the simultaneous reading's whole budget curve from one run each (up to 16 iterations: the
# trajectory to 32 took 145 of the main job's 378 s on 2 cores; tol 0.05 stops at 11-12 there), and the
# sequential (RNN) reading at an adaptive budget on the two shortest buckets (the sequential reading of 2,048 tokens
# takes minutes on 2 CPU cores). The committed language leaderboard (leaderboards/language/) has 16 documents a
# bucket and goes to 32.
LANGUAGE_DOCS = 2
LANGUAGE_GRIDS = (
    ("all", ["--tasks", "pydoc", "--modes", "simultaneous", "--max-iter", "1", "2", "4", "8", "16",
             "--tol", "0", "0.05"]),
    ("implicit", ["--tasks", "pydoc_ppl_id,pydoc_ppl_ood2x,pydoc_cloze_id", "--modes", "sequential", "--tol", "0.05",
                  "--adaptive-max-iter", "64"]),
)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def workers_arg(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 1, got {text}")
    return int(text)


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return int(text)


def seed_metadata(seed: int) -> dict:
    """The task parameters that put every data-generating family at `seed` (st_seed, babi_seed, ctl_seed, ...)."""
    from ..tasks.registry import families

    return {f.seed_option: seed for f in families().values() if f.seed_option}


def seeded(spec: SweepSpec, out: Path, seeds: list[int] | None) -> list[tuple[SweepSpec, Path]]:
    """(spec, results folder) per data seed: OUT/seed<N> with every family's seed option set; the spec in OUT
    itself without --seeds. A seed option given in --metadata as well is refused (which one would hold?)."""
    if not seeds:
        return [(spec, out)]
    clash = sorted(set(seed_metadata(0)) & set(spec.metadata))
    if clash:
        raise ConfigError(f"--seeds sets {', '.join(clash)}: leave them out of --metadata")
    return [(dataclasses.replace(spec, metadata={**spec.metadata, **seed_metadata(s)}), out / f"seed{s}")
            for s in dict.fromkeys(seeds)]


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def exit_arg(text: str) -> tuple[str, tuple[float, ...]]:
    """--exit: a criterion, alone (its thresholds from --exit-threshold) or with its own: kl:1e-2,1e-3."""
    name, _, values = text.partition(":")
    if name not in EXITS:
        raise argparse.ArgumentTypeError(f"unknown exit criterion {name!r}; known: {', '.join(sorted(EXITS))}")
    try:
        thresholds = tuple(float(v) for v in values.split(",")) if values else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"thresholds are numbers separated by commas (kl:1e-2,1e-3), got {text!r}"
                                         ) from None
    for tol in thresholds:
        problem = threshold_problem(name, tol)
        if problem:
            raise argparse.ArgumentTypeError(problem)
    return name, thresholds


def exit_points_from(exits: list[tuple[str, tuple[float, ...]]], thresholds: list[float] | None) -> tuple[str, ...]:
    """--exit and --exit-threshold as the spec's exit points ("kl=0.01"), each checked."""
    if thresholds and not exits:
        raise ConfigError("--exit-threshold needs --exit (the criterion it is a threshold of), e.g. --exit kl "
                          "--exit-threshold 1e-2 1e-3")
    points = []
    for name, own in exits:
        values = own or tuple(thresholds or ())
        if not values:
            raise ConfigError(f"--exit {name} needs thresholds: --exit {name}:T1,T2 or --exit-threshold T1 T2")
        for tol in values:
            problem = threshold_problem(name, tol)
            if problem:
                raise ConfigError(f"--exit {name}: {problem}")
            points.append(point_name(ExitPoint(name, tol)))
    return tuple(dict.fromkeys(points))


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each flag's default, except where its help already says it or there is none to say (None, a switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False):
            return text
        return super()._get_help_string(action)


def sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="implicit-eval sweep", description="Evaluate checkpoints over fixed-point "
                                "budgets (anytime, resumable) and print the leaderboard.",
                                formatter_class=_DefaultsHelp)
    p.add_argument("checkpoints", nargs="*", type=Path, help="checkpoint directories (default: checkpoints/*)")
    p.add_argument("--tasks", default="auto", help="comma-separated lm-eval tasks or groups; 'auto' = each "
                   "checkpoint's training task group")
    p.add_argument("--max-iter", type=positive_int, nargs="+", default=list(DEFAULT_MAX_ITERS),
                   help="fixed budgets (tol 0)")
    p.add_argument("--tol", type=non_negative_float, nargs="+", default=list(DEFAULT_TOLS),
                   help="tolerances; 0 = the fixed budgets, > 0 = adaptive budgets capped at --adaptive-max-iter")
    p.add_argument("--adaptive-max-iter", type=positive_int, default=256, help="the cap of the adaptive budgets")
    p.add_argument("--exit", type=exit_arg, nargs="+", default=[], metavar="CRITERION[:T1,T2]",
                   help=f"exit criteria ({', '.join(sorted(EXITS))}), each an adaptive budget per threshold in every "
                   "mode, capped at --adaptive-max-iter; in simultaneous mode read off the fixed budgets' trajectory "
                   "when that cap is the largest --max-iter. Thresholds after a colon or from --exit-threshold")
    p.add_argument("--exit-threshold", type=float, nargs="+", default=None, metavar="T",
                   help="thresholds of the --exit criteria that give none (kl, entropy: nats; argmax: evaluations)")
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=list(READINGS), help="readings")
    p.add_argument("--block-size", type=positive_int, nargs="+", default=[8], help="blockwise mode: block sizes")
    p.add_argument("--solver", default="fixed_point", choices=sorted(SOLVERS), help="the fixed-point solver of every "
                   "implicit job (fixed_point: the reference's damped iteration)")
    p.add_argument("--tau", type=float, default=None, help="damping in (0, 1] (default: each checkpoint's)")
    p.add_argument("--num-docs", type=positive_int, default=25, help="documents per bucket of every task family "
                   "(a quick look; the committed leaderboard uses 100)")
    p.add_argument("--metadata", type=json_object, default={}, help="task parameters as JSON, e.g. '{\"st_seed\": 1}'")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=None, metavar="SEED",
                   help="the grid at each seed of the task data (every family's seed option), into OUT/seed<SEED>/; "
                   "the report gives each score's mean and spread over the seeds")
    p.add_argument("--limit", type=positive_int, default=None, help="documents per task (lm-eval's --limit; "
                   "default: every document)")
    p.add_argument("--batch-size", default="32", help="an integer or 'auto'")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="the models' compute dtype")
    p.add_argument("--state-dtype", default="float32", choices=list(STATE_DTYPES), help="how the SSM models store "
                   "their recurrent state between tokens (bfloat16 halves it; see the adapters' state_dtype)")
    p.add_argument("--lanes", type=positive_int, default=1, help="the implicit models' sequential and blockwise "
                   "readings with their rows in this many groups, each on its own CUDA stream (the adapters' lanes: "
                   "speed only, the numbers do not depend on it; see BENCHMARKS.md)")
    p.add_argument("--backend", default="auto", choices=list(BACKENDS), help="kernels: auto = triton on CUDA where "
                   "mamba-ssm is installed, else torch")
    p.add_argument("--no-anytime", action="store_true", help="run every budget separately (for timing comparisons)")
    p.add_argument("--workers", type=workers_arg, default="auto", help="processes sharing the jobs, one per GPU "
                   "with --device cuda; each job runs whole on one of them, with the same numbers as on one GPU. "
                   "auto (the default): every visible GPU with --device cuda, else 1 (see BENCHMARKS.md)")
    p.add_argument("--worker-spec", type=Path, default=None, help=argparse.SUPPRESS)  # a worker of --workers N
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)  # which of the N workers
    p.add_argument("--out", type=Path, default=Path("results/sweep"), help="results folder (a rerun resumes it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no log lines; the leaderboard and "
                   "where it was written are still printed")
    p.add_argument("--executor", default="local", choices=list(EXECUTORS), help="local: this host (--workers); "
                   "slurm: one SLURM job array through submitit, one task per group of jobs (README: Running on a "
                   "cluster)")
    p.add_argument("--status", action="store_true", help="say which jobs of the sweep in --out are done, running, "
                   "queued, failed (with the task's log) and pending, and run nothing")
    cluster = p.add_argument_group("--executor slurm (flags over --cluster-config over the defaults)")
    cluster.add_argument("--cluster-config", type=Path, default=None, metavar="FILE", help="a YAML file of the "
                         "settings below (keys: partition, account, time, gpus_per_task, cpus_per_task, mem, "
                         "array_parallelism, sbatch: {option: value}, setup: [shell lines])")
    cluster.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    cluster.add_argument("--account", default=None, help="SLURM account to charge")
    cluster.add_argument("--time", default=None, help="each task's time limit: minutes or HH:MM:SS (default 60); "
                         "a task that reaches it is requeued and goes on from the jobs it had not written")
    cluster.add_argument("--gpus-per-task", default=None, help="GPUs of each task (default 0; >= 1 with --device "
                         "cuda)")
    cluster.add_argument("--cpus-per-task", default=None, help="CPUs of each task (default: the cluster's)")
    cluster.add_argument("--mem", default=None, help="memory of each task, e.g. 16G (default: the cluster's)")
    cluster.add_argument("--array-parallelism", default=None, help="tasks running at once (default 256)")
    cluster.add_argument("--sbatch", action="append", default=[], metavar="OPTION[=VALUE]",
                         help="any other sbatch option, repeatable: --sbatch qos=high --sbatch constraint=a100 "
                         "(default: none)")
    cluster.add_argument("--wait", action="store_true", help="wait for the tasks, then write the report as a local "
                         "run does (default: submit and return)")
    return p


CLUSTER_FLAGS = ("partition", "account", "time", "gpus_per_task", "cpus_per_task", "mem", "array_parallelism",
                 "sbatch")


def executor_from(args) -> Executor:
    """--executor and its settings; settings of SLURM given with --executor local are refused, not ignored."""
    given = [f"--{k.replace('_', '-')}" for k in CLUSTER_FLAGS if getattr(args, k) not in (None, [])]
    given += ["--cluster-config"] * (args.cluster_config is not None) + ["--wait"] * args.wait
    if args.executor == "local":
        if given:
            raise ConfigError(f"{', '.join(given)}: settings of --executor slurm, given with --executor local")
        return LocalExecutor()
    if args.workers not in ("auto", 1):
        raise ConfigError(f"--workers {args.workers} is the local executor's; with --executor slurm each group of "
                          "jobs is its own task (--gpus-per-task GPUs each)")
    args.workers = 1
    settings = cluster_settings(args.cluster_config, **{k: getattr(args, k) for k in CLUSTER_FLAGS})
    return SlurmExecutor(settings, wait=args.wait)


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text}")
    return value


def spec_from(args, checkpoints: list[Path] | None = None) -> SweepSpec:
    from ..tasks.registry import families

    num_docs = {f.num_docs_option: args.num_docs for f in families().values() if f.num_docs_option}
    batch = args.batch_size
    if not (batch == "auto" or (batch.isdigit() and int(batch) > 0)):
        raise ConfigError(f"--batch-size must be a positive integer or 'auto', got {batch!r}")
    if args.tau is not None and not 0 < args.tau <= 1:
        raise ConfigError(f"--tau must be a number in (0, 1], got {args.tau:g}")
    return SweepSpec(checkpoints=tuple(checkpoints or args.checkpoints or bundled_checkpoints()),
                     tasks=tuple(t for t in args.tasks.split(",") if t), max_iters=tuple(args.max_iter),
                     tols=tuple(args.tol), modes=tuple(args.modes), block_sizes=tuple(args.block_size),
                     solver=args.solver, tau=args.tau, adaptive_max_iter=args.adaptive_max_iter,
                     exits=exit_points_from(args.exit, args.exit_threshold),
                     metadata={**num_docs, **args.metadata}, limit=args.limit,
                     batch_size=int(batch) if batch.isdigit() else batch, device=args.device, dtype=args.dtype,
                     state_dtype=args.state_dtype, lanes=args.lanes, backend=args.backend,
                     anytime=not args.no_anytime,
                     workers=resolve_workers(args.workers, args.device))


def sweep_main(argv: list[str]) -> int:
    args = sweep_parser().parse_args(argv)
    if args.worker_spec:  # one of --workers N: run the groups it claims, no report
        spec = SweepSpec.from_dict({**json.loads(args.worker_spec.read_text()), "workers": 1})
        outcome = run_sweep(spec, args.out, progress=False, worker=args.worker_index)
        return 1 if outcome.failed else 0
    if args.status:
        print(status_text(args.out))
        return 0
    executor = executor_from(args)
    if not args.checkpoints:  # the bundled job: state tracking as asked, then the language part
        return bundled_job(args, executor, argv)
    failed = 0
    for spec, out in seeded(spec_from(args), args.out, args.seeds):
        outcome = executor.run(spec, out, progress=not args.quiet)
        if isinstance(outcome, Submission) and not outcome.waited:
            print(submission_line(outcome, out), file=sys.stderr)
            continue
        print(summary_line(outcome, out, args.out / "report"), file=sys.stderr)
        failed += len(outcome.failed)
    if isinstance(outcome, Submission) and not outcome.waited:
        return 0
    print(write_report([args.out], args.out / "report", command=f"implicit-eval report {args.out}"))
    return 1 if failed else 0


def bundled_job(args, executor: Executor, argv: list[str]) -> int:
    """The bundled checkpoints: the state-tracking ones (and their transformer twins) with the flags given, then the
    text trio over LANGUAGE_GRIDS; one report of both."""
    text = set(bundled_checkpoints("pydoc"))
    specs = seeded(spec_from(args, [p for p in bundled_checkpoints() if p not in text]), args.out, args.seeds)
    for which, grid in LANGUAGE_GRIDS:  # the text corpus has no data seed
        models = [p for p in sorted(text) if which == "all" or implicit_checkpoint(p)]
        extra = ["--num-docs", str(LANGUAGE_DOCS), "--out", str(args.out), "--device", args.device,
                 "--batch-size", args.batch_size, "--dtype", args.dtype, "--state-dtype", args.state_dtype,
                 "--lanes", str(args.lanes), "--backend", args.backend]
        specs.append((spec_from(sweep_parser().parse_args([*map(str, models), *grid, *extra])), args.out))
    failed, outcome = 0, None
    assert specs  # the state-tracking part is always there
    for spec, out in specs:
        outcome = executor.run(spec, out, progress=not args.quiet)
        if isinstance(outcome, Submission):
            print(submission_line(outcome, out), file=sys.stderr)
        failed += len(outcome.failed)
    if outcome is None or isinstance(outcome, Submission) and not outcome.waited:
        return 0
    print(write_report([args.out], args.out / "report", command=f"implicit-eval report {args.out}"))
    print(summary_line(outcome, args.out, args.out / "report"), file=sys.stderr)
    return 1 if failed else 0


def implicit_checkpoint(path: Path) -> bool:
    config = json.loads((path / "config.json").read_text())
    return (config.get("model") or {}).get("kind") == "implicit"


def submission_line(outcome: Submission, out: Path) -> str:
    n = len(outcome.jobs)
    held = f", {len(outcome.held)} in tasks of an earlier submission" if outcome.held else ""
    if not outcome.tasks:
        return f"sweep: nothing to submit: {len(outcome.skipped)} of {n} jobs done{held}"
    first = outcome.tasks[0].split("_")[0]
    return (f"sweep: {len(outcome.submitted)} of {n} jobs submitted as {len(outcome.tasks)} SLURM tasks (job "
            f"{first}), {len(outcome.skipped)} already done{held}. Follow them with `implicit-eval sweep --status "
            f"--out {out}`; the report of what is done: `implicit-eval report {out}`")


def summary_line(outcome: Outcome, out: Path, report_dir: Path) -> str:
    n = len(outcome.jobs)
    if not outcome.ran and not outcome.failed:
        done = f"all {n} jobs were already done in {out} (same settings): nothing to run"
    else:
        done = f"{len(outcome.ran)} of {n} jobs run, {len(outcome.skipped)} already done"
    failed = f"; {len(outcome.failed)} FAILED (see failed.json in {', '.join(sorted(outcome.failed))[:300]})" \
        if outcome.failed else ""
    return (f"sweep: {done}{failed}. Results: {out}/<checkpoint>/<budget>/results.json; table, plots and "
            f"leaderboard: {report_dir}")


LEADERBOARD_COMMAND = "implicit-eval leaderboard"
LEADERBOARD_SEEDS = (0, 1, 2)  # the data seeds of the committed leaderboard (docs/COMPUTE.md: and the hidden one)
LEADERBOARD_EXITS = ("kl:0.001", "argmax:2")  # exit criteria beside the residual's tolerances


def leaderboard_main(argv: list[str]) -> int:
    """Sweep the bundled checkpoints in all readings, fixed budgets, residual tolerances and two other exit
    criteria (LEADERBOARD_EXITS), at three seeds of the task data, and regenerate leaderboards/ (markdown, plots,
    tables: each score the mean over the seeds, with its spread). From scratch this evaluates 100 documents per
    bucket at every budget and seed: about 40 minutes on 2 CPU cores."""
    p = argparse.ArgumentParser(prog=LEADERBOARD_COMMAND, description=leaderboard_main.__doc__)
    p.add_argument("--results", type=Path, default=PROJECT / "results" / "leaderboard",
                   help="the sweep's results folder (a rerun resumes it; default: results/leaderboard)")
    p.add_argument("--out", type=Path, default=PROJECT / "leaderboards",
                   help="where the leaderboard, plots and tables go (default: leaderboards/)")
    p.add_argument("--num-docs", type=positive_int, default=100, help="documents per bucket (default: 100)")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=list(LEADERBOARD_SEEDS),
                   help=f"data seeds, into RESULTS/seed<N> (default: {' '.join(map(str, LEADERBOARD_SEEDS))})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    print(f"{LEADERBOARD_COMMAND}: sweeping the bundled checkpoints into {args.results} (resumable; from scratch "
          "about 40 minutes on 2 CPU cores)", file=sys.stderr)
    common = ["--num-docs", str(args.num_docs), "--batch-size", "64"]
    exits = ["--exit", *LEADERBOARD_EXITS]
    grids = (["--modes", "simultaneous", "sequential", "--tol", "0", "0.05", "0.01", *exits],  # every budget
             ["--modes", "blockwise", "--block-size", "8", "--tol", "0.05", "0.01", *exits])  # the adaptive ones
    failed = 0
    text = set(bundled_checkpoints("pydoc"))  # the language leaderboard is its own (leaderboards/language/)
    others = [p for p in bundled_checkpoints() if p not in text]
    for grid in grids:
        for spec, out in seeded(spec_from(sweep_parser().parse_args(grid + common), others), args.results,
                                args.seeds):
            outcome = run_sweep(spec, out, progress=not args.quiet)
            print(summary_line(outcome, out, args.out), file=sys.stderr)
            failed += len(outcome.failed)
    print(write_report([args.results], args.out, command=LEADERBOARD_COMMAND, timings_dir=args.results))
    return 1 if failed else 0
