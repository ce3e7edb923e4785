"""The recipes that produced the bundled checkpoints, and a driver that trains several at once.

    python checkpoints/recipes.py parity-implicit parity-explicit --device cpu --runs runs/
    python checkpoints/recipes.py a5-implicit a5-explicit --device cuda --time-limit 540
    python checkpoints/recipes.py text-implicit text-explicit text-explicit-deep text-transformer --device cuda \
        --time-limit 480          # again after each stop: finished runs are skipped, stopped ones resume

Each recipe is `implicit-eval train` with the arguments below (the model card shows the exact command). The
driver checks every named recipe's task and prints each model's parameter count first, then starts one process per
recipe (all on the one device; GPU runs share it), continues runs that a time limit interrupted (--resume), skips
finished ones, and exports finished ones to RUNS/<name>/model.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

# The text family's training task: the lead sets it when tasks/text registers training data (make_batches and
# make_tokenizer). Until then the text recipes stop with a message naming this constant.
TEXT_TASK = "ppl"  # the pydoc family (tasks/text/pydoc_family.py): packed 256-token rows of the training split

PARITY = dict(task="parity", min_len=1, max_len=40, steps=1500, batch_size=64, lr=3e-3, d_model=64, n_layer=1,
              d_state=16, headdim=16, log_every=50)
# The A5 pair trains on a mixture over identity shares and with identity runs, so that it meets the
# distribution-shift buckets (identity share 0.5, runs of identities) as well as uniform words.
WORD = dict(task="a5", min_len=1, max_len=32, steps=8000, batch_size=64, lr=1e-3, clip=0.25, warmup_steps=300,
            d_model=128, n_layer=1, d_state=32, headdim=32, expand=2, log_every=50, save_every=250,
            p_identity_mix=(0.0, 0.25, 0.5, 0.75), p_identity_run=0.25)
# The first bundled A5 pair (commit 3395cb0) trained on uniform words only; the bundled A5 checkpoints are these
# runs fine-tuned on the mixture (the *-ft recipes below).
UNIFORM = {k: v for k, v in WORD.items() if k not in ("p_identity_mix", "p_identity_run")} | dict(save_every=500)
FINE_TUNE = dict(steps=3000, lr=5e-4, warmup_steps=100)
RECIPES = {
    "parity-implicit": dict(PARITY, kind="implicit"),
    "parity-explicit": dict(PARITY, kind="explicit"),
    "a5-implicit": dict(WORD, kind="implicit", unroll_steps=1000, unroll_iters=4, train_max_iter=16),
    "a5-explicit": dict(WORD, kind="explicit"),
    "a5-implicit-v1": dict(UNIFORM, kind="implicit", unroll_steps=1000, unroll_iters=4, train_max_iter=16),
    "a5-explicit-v1": dict(UNIFORM, kind="explicit"),
    "a5-explicit-2l-v1": dict(UNIFORM, kind="explicit", n_layer=2),
    # Fine-tuning the uniform-word runs on the mixture keeps their skill on uniform words while learning the
    # shifts; training on the mixture from scratch (a5-implicit) did not get there in 8000 steps (see its card).
    "a5-implicit-ft": dict(WORD, kind="implicit", init_from="runs/a5-implicit-v1", **FINE_TUNE, train_max_iter=16),
    "a5-explicit-ft": dict(WORD, kind="explicit", init_from="runs/a5-explicit-v1", **FINE_TUNE),
    "a5-explicit-2l-ft": dict(WORD, kind="explicit", n_layer=2, init_from="runs/a5-explicit-2l-v1", **FINE_TUNE),
    # Parameter-matched twins: the injection gives the implicit models ~1.65x the parameters of a same-shape
    # explicit model; two explicit layers give 1.18x the implicit count, so these comparisons favour explicit.
    "parity-explicit-2l": dict(PARITY, kind="explicit", n_layer=2),
    "a5-explicit-2l": dict(WORD, kind="explicit", n_layer=2),
}
MAMBA_ONLY = ("d_state", "headdim", "expand", "chunk_size", "ngroups")


def transformer(recipe: dict, **sizes) -> dict:
    """A Mamba2 recipe's data, steps, batch and schedule for the transformer kind, with its own sizes."""
    return {k: v for k, v in recipe.items() if k not in MAMBA_ONLY} | dict(kind="transformer", **sizes)


# Transformer twins of the state-tracking models, parameter-matched to the implicit ones (harness/sizes.py; the test
# test_transformer_recipes_match_their_implicit_twins holds them within 10%). Four layers rather than the implicit
# model's one: depth is what a transformer has for composing states; the widths follow from the match.
RECIPES |= {
    "parity-transformer": transformer(PARITY, d_model=32, n_layer=4, n_head=2, intermediate_size=80),
    "a5-transformer-v1": transformer(UNIFORM, d_model=64, n_layer=4, n_head=4, intermediate_size=160),
    "a5-transformer-ft": transformer(WORD, d_model=64, n_layer=4, n_head=4, intermediate_size=160,
                                     init_from="runs/a5-transformer-v1", **FINE_TUNE),
    "a5-transformer": transformer(WORD, d_model=64, n_layer=4, n_head=4, intermediate_size=160),
}
# The text trio: the same tokens, tokenizer, context, steps, batch and schedule for every model. The implicit model
# follows the paper's LM recipe: a warm-up of a fixed 4-iteration unroll, then the fixed point without gradients
# (16 iterations at tau 0.8) and 4 phantom-gradient steps.
# Steps and batch (1000 x 64 x 256 = 16.4M tokens a run: 12 passes over the 1.38M training tokens), estimated
# for one H200 shared by the four runs. Forward
# FLOPs a token: 4.25M an f evaluation of the 4-layer stack (in_proj and out_proj 0.86M a layer, the SSD scan about
# 0.2M), 4.2M for the head (a vocabulary of 8192 assumed). A phantom step costs 28 f evaluations (16 without
# gradients, 4 with, their backward 8): 133M FLOPs a token, the unroll 65M; an explicit step 25M (29M with 5 layers),
# the transformer's 27M. One step of all four at batch 64 is 3.5 TFLOPs; eager PyTorch at this width reaches about
# 20 TFLOP/s of the H200's bf16 (2%: small matrices, memory-bound scan; the CPU here reaches 16-28 GFLOP/s a thread
# on the same code), so the four runs take about 4.2 min of GPU time together, the implicit one 2.6 min of it. Check
# with `python bench/train_costs.py --device cuda` before a long run; the time limit and --resume cover a miss.
TEXT_CONTEXT = 256
TEXT = dict(task=TEXT_TASK, min_len=TEXT_CONTEXT, max_len=TEXT_CONTEXT, steps=1000, batch_size=64, lr=1e-3,
            warmup_steps=150, clip=1.0, weight_decay=0.1, log_every=25, save_every=250)
TEXT_MAMBA = dict(d_model=256, n_layer=4, d_state=64, headdim=64, expand=2)
RECIPES |= {
    # The stored evaluation budget (tol 0.05, at most 64 iterations) is what the LM-scale measurements support
    # (bench/lm_convergence.py, the model card): tol 0.05 reaches the best held-out bits per byte in ~10 iterations,
    # tighter tolerances cost 2-3x more for none, and no sequence needs more than ~45 even at tol 0.005.
    "text-implicit": dict(TEXT, **TEXT_MAMBA, kind="implicit", unroll_steps=150, unroll_iters=4, train_max_iter=16,
                          tau=0.8, grad_steps=4, eval_max_iter=64, eval_tol=0.05),
    "text-explicit": dict(TEXT, **TEXT_MAMBA, kind="explicit"),
    # 4 explicit layers have 15% fewer parameters than the implicit model (its injection is an extra in_proj); 5
    # have 7% more, the closest depth (harness/sizes.explicit_layers_for).
    "text-explicit-deep": dict(TEXT, **TEXT_MAMBA | dict(n_layer=5), kind="explicit"),
    # The same width and depth as the implicit model; the SwiGLU width matches the non-embedding count (0.4% over).
    "text-transformer": transformer(TEXT, d_model=256, n_layer=4, n_head=4, intermediate_size=320),
}


ROOT = Path(__file__).resolve().parents[1]


def training_config(name: str):
    """The TrainConfig the recipe's command line gives (the CLI's own parsing)."""
    if str(ROOT) not in sys.path:  # this checkout's package, as the training processes started from ROOT import it
        sys.path.insert(0, str(ROOT))
    from implicit_ssm_eval.harness.train_cli import build_parser, config_from

    args = vars(build_parser().parse_args(command(name, Path("runs"), "cpu", 0, False)[4:]))
    for key in ("out", "resume", "no_progress", "export"):
        args.pop(key)
    return config_from(args)


def describe(name: str) -> str:
    """The recipe's model in one line: kind, parameter count (and without the embedding), or a clear error when its
    task belongs to no registered family (the text recipes before TEXT_TASK is set)."""
    from implicit_ssm_eval.harness.sizes import counts_of
    from implicit_ssm_eval.tasks.registry import UnknownTaskError, family_for_task

    cfg = training_config(name)
    try:
        family = family_for_task(cfg.task)
    except UnknownTaskError as exc:
        hint = " (set TEXT_TASK in checkpoints/recipes.py once the text family registers its training data)" \
            if cfg.task == TEXT_TASK else ""
        raise SystemExit(f"recipe {name}: {exc}{hint}") from None
    if family.make_batches is None or family.make_tokenizer is None:
        raise SystemExit(f"recipe {name}: the {family.name} family registers no training data or tokenizer for task "
                         f"{cfg.task!r} (make_batches, make_tokenizer)")
    counts = counts_of(cfg.kind, cfg.arch, family.tokenizer_for(cfg.task).get_vocab_size())
    return (f"{name}: {cfg.kind}, {counts.total:,} parameters ({counts.non_embedding:,} without the embedding), "
            f"task {cfg.task}, {cfg.steps} steps of {cfg.batch_size}")


def command(name: str, runs: Path, device: str, time_limit: float, resume: bool) -> list[str]:
    args = [sys.executable, "-m", "implicit_ssm_eval.harness", "train", "--out", str(runs / name), "--device", device,
            "--no-progress"]
    for key, value in RECIPES[name].items():
        values = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        args += [f"--{key.replace('_', '-')}", *values]
    if time_limit:
        args += ["--time-limit", str(time_limit)]
    return args + (["--resume"] if resume else [])


def finished(run: Path, steps: int) -> bool:
    """Whether the run exported its model after all its steps (an --export mid-run records fewer)."""
    import json

    record = run / "training.json"
    return (run / "model").is_dir() and record.is_file() and json.loads(record.read_text())["steps"] >= steps


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", choices=sorted(RECIPES))
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--time-limit", type=float, default=0.0, help="seconds per call; continue later with the same "
                   "command (it resumes)")
    args = p.parse_args(argv)
    for name in args.names:  # every task checked before anything starts
        print(describe(name), flush=True)
    procs = {}
    for name in args.names:
        if finished(args.runs / name, training_config(name).steps):
            print(f"{name}: finished ({args.runs / name / 'model'}), skipped", flush=True)
            continue
        resume = (args.runs / name / "train_state.pt").exists()
        cmd = command(name, args.runs, args.device, args.time_limit, resume)
        print(" ".join(cmd), flush=True)
        (args.runs / name).mkdir(parents=True, exist_ok=True)
        log = open(args.runs / name / "stdout.log", "a")  # noqa: SIM115 - held open while the process runs
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    failed = 0
    for name, (proc, log) in procs.items():
        failed += proc.wait() != 0
        log.close()
        print(f"{name}: exit {proc.returncode}", flush=True)
    return int(failed > 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
