"""What one f evaluation costs, with and without the commit of its recurrent state.

    OMP_NUM_THREADS=1 python bench/f_cost.py --checkpoint checkpoints/a5-implicit --rows 40 --lengths 1 8 32
    OMP_NUM_THREADS=2 python bench/f_cost.py --lengths 1 8 --compile      # eager and torch.compile side by side

A fixed-point solve evaluates f many times against a frozen state and commits the state once, at its final
evaluation (fixed_point.solve's contract). This times f over a piece of each length (1 = the step form) for
`--rows` sequences from a non-zero state, committing and not, in interleaved rounds; prints the best round of each
in microseconds per evaluation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from implicit_ssm_eval.model_adapters.formats import load_checkpoint


def cost(fn, calls: int, rounds: int) -> dict[bool, float]:
    best = {True: float("inf"), False: float("inf")}
    for _ in range(rounds):
        for commit in (True, False):
            fn(commit)  # warm
            start = time.perf_counter()
            for _ in range(calls):
                fn(commit)
            best[commit] = min(best[commit], (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/a5-implicit"))
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--lengths", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also each f under torch.compile (inductor; needs a C++ "
                   "compiler), timed beside the eager one")
    p.add_argument("--profile", action="store_true", help="also the torch profiler's op table of 50 evaluations "
                   "without commit, per length")
    args = p.parse_args()
    model = load_checkpoint(args.checkpoint, dtype=torch.float32, device=torch.device("cpu")).model
    gen = torch.Generator().manual_seed(0)
    print(f"{'length':>6s} {'commit (us)':>12s} {'no commit (us)':>15s} {'ratio':>6s}", end="   ")
    print(f"threads {torch.get_num_threads()}")
    with torch.inference_mode():
        vocab = model.cfg.vocab_size
        state = model(torch.randint(0, vocab, (args.rows, 16), generator=gen)).state  # a non-zero state
        for length in args.lengths:
            u = model.inject(torch.randint(0, vocab, (args.rows, length), generator=gen))
            z = torch.randn(args.rows, length, model.cfg.d_model, generator=gen)
            if length == 1:
                def fn(commit, z=z[:, 0], u=u[:, 0]):
                    return model.f_step(z, u, state, commit)
            else:
                def fn(commit, z=z, u=u):
                    return model.f(z, u, state, None, commit)
            best = cost(fn, args.calls, args.rounds)
            print(f"{length:6d} {best[True]:12.0f} {best[False]:15.0f} {best[True] / best[False]:5.2f}x")
            if args.compile:
                compiled = {commit: torch.compile(lambda c=commit, fn=fn: fn(c)) for commit in (True, False)}
                best = cost(lambda commit, compiled=compiled: compiled[commit](), args.calls, args.rounds)
                print(f"{'':6s} {best[True]:12.0f} {best[False]:15.0f} {best[True] / best[False]:5.2f}x   compiled")
            if args.profile:
                profile(fn)


def profile(fn) -> None:
    from torch.profiler import profile as torch_profile

    with torch_profile() as prof:
        for _ in range(50):
            fn(False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
