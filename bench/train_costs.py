"""What a training step of each recipe costs on this device, on synthetic packed text (random tokens), and the run
time its steps add up to.

    OMP_NUM_THREADS=1 python bench/train_costs.py --batch-size 2            # the CPU reading (small batch)
    python bench/train_costs.py --device cuda                                # the recipes' own batch, on a GPU

Each recipe of checkpoints/recipes.py runs through the training command's own Trainer (same model, optimiser,
autocast, phantom gradient), on a synthetic family registered here (a vocabulary of --vocab tokens, every position
labelled, rows of the recipe's context), so it needs no corpus. An implicit recipe is timed in both of its phases
(the warm-up unroll and the phantom-gradient steps). Prints ms per step, labelled tokens per second and the
estimated time of the recipe's steps at the timed batch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# Not this folder: its kernels.py would shadow the `kernels` package that transformers looks for.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
TASK = "bench_random_text"


def register_synthetic_family(vocab: int) -> None:
    """A family of one task whose tokenizer has `vocab` tokens (<pad>, <unk>, <eos>, then words) and whose batches
    are random tokens, labels the next token (packed text has no padding)."""
    from implicit_ssm_eval.tasks.common import word_level_tokenizer
    from implicit_ssm_eval.tasks.registry import BucketInfo, Family, no_chance, register_family

    def batches(task, *, min_len, max_len, batch_size, seed, start=0):
        step = start
        while True:
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            tokens = torch.randint(3, vocab, (batch_size, max_len + 1), generator=g)
            yield {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
            step += 1

    info = BucketInfo("id", (1, 1), 1.0, None, "synthetic")
    register_family(Family("bench_random", "benchrandom", "benchrandom_all", (TASK,), "benchrandom_", None,
                           lambda task: (info,), no_chance, lambda task: 1,
                           lambda task: word_level_tokenizer(f"w{i}" for i in range(vocab - 3)), batches))


def step_time(cfg, steps: int, warm: int) -> tuple[float, int]:
    """Seconds per step after `warm` untimed steps, and labelled tokens per step."""
    from implicit_ssm_eval.harness.train import Trainer

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, Path(out))
        batches = trainer.family.training_batches(cfg.task, min_len=cfg.min_len, max_len=cfg.max_len,
                                                  batch_size=cfg.batch_size, seed=0)
        for _ in range(warm):
            trainer.train_step(next(batches))
        start, tokens = time.perf_counter(), 0
        for _ in range(steps):
            tokens = trainer.train_step(next(batches))["tokens"]
        return (time.perf_counter() - start) / steps, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="*", default=["text-implicit", "text-explicit", "text-explicit-deep",
                                                  "text-transformer"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, help="default: each recipe's own")
    p.add_argument("--vocab", type=int, default=8192, help="tokens of the synthetic vocabulary")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warm", type=int, default=1)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "checkpoints"))
    import dataclasses

    from recipes import training_config

    register_synthetic_family(args.vocab)
    for name in args.recipes:
        cfg = training_config(name)
        cfg = dataclasses.replace(cfg, task=TASK, device=args.device, batch_size=args.batch_size or cfg.batch_size)
        phases = {"": cfg.steps}
        if cfg.kind == "implicit" and cfg.unroll_steps:
            phases = {"unroll": min(cfg.unroll_steps, cfg.steps), "phantom": max(0, cfg.steps - cfg.unroll_steps)}
        total = 0.0
        for phase, count in phases.items():
            timed = dataclasses.replace(cfg, unroll_steps=cfg.steps if phase == "unroll" else 0)
            seconds, tokens = step_time(timed, args.steps, args.warm)
            total += seconds * count
            print(f"{name:20s} {phase or cfg.kind:9s} batch {cfg.batch_size:3d} x {cfg.max_len}: "
                  f"{seconds * 1e3:8.1f} ms/step, {tokens / seconds:9.0f} tokens/s", flush=True)
        print(f"{name:20s} {cfg.steps} steps at batch {cfg.batch_size}: {total / 60:.1f} min on {args.device}",
              flush=True)


if __name__ == "__main__":
    main()
