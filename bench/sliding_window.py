"""A prototype of a sliding-window reading, measured beside the sequential and blockwise readings (not a mode of the
harness yet: a research measurement for issue 11).

    OMP_NUM_THREADS=2 python bench/sliding_window.py --windows 8 16 --out sliding.json

The blockwise reading starts every block from z = 0 and iterates it until the whole block has converged: its last
tokens wait for its first ones, then start over at the next block. Here a window of W tokens slides instead. Each
evaluation runs f over the window from the frozen state at its start (one parallel scan); after it, the window's
leading tokens whose own residual is below tol in every row ("converged prefix") are committed: one f over them with
the commit advances the frozen state, their output is the reading's, and the window moves on past them, taking in
as many new tokens (z = 0). The tokens at its back are iterated while they wait, so they arrive at its front nearly
converged. A token at the front that has had max_iter evaluations is committed as it is (capped), like a capped
piece. Rows move in lockstep (a window of the batch). Damping: the checkpoint's or --tau; with --solver backoff the
readings back off per row and the window per (row, token) (TokenDamping).

Prints, per reading: accuracy, agreement with the sequential reading, sequential f evaluations (the f calls made one
after another, commits included), token evaluations per token (arithmetic), capped tokens, seconds (median of
--repeats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from readings import add_reading_args, documents  # bench/readings.py: run as a script, bench/ is on sys.path

from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.fixed_point import EPS, back_off
from implicit_ssm_eval.model_adapters.formats import load_checkpoint


def token_residuals(fz: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(R, T): ||f(z)_t - z_t|| / (eps + ||z_t||) per token."""
    return (fz - z).norm(dim=-1) / (EPS + z.norm(dim=-1))


class TokenDamping:
    """Solver "backoff" in a window: a damping per (row, token), backed off as the solver backs off a row's
    (fixed_point.back_off), restarted for the tokens left after a commit (a new solve, like their ages)."""

    def __init__(self, tau: float):
        self.tau = tau
        self.damp = self.best = self.stall = torch.zeros(0, 0)

    def restart(self, rows: int, tokens: int) -> None:
        self.damp = torch.full((rows, tokens), self.tau)
        self.best = torch.full((rows, tokens), float("inf"))
        self.stall = torch.zeros(rows, tokens, dtype=torch.int32)

    def update(self, z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        rows, tokens = z.shape[:2]
        if self.damp.shape != (rows, tokens):  # the window grew: its new tokens start a solve of their own
            old = self.damp.shape[1] if self.damp.shape[0] == rows else 0
            damp, best, stall = self.damp, self.best, self.stall
            self.restart(rows, tokens)
            if old:
                self.damp[:, :old], self.best[:, :old], self.stall[:, :old] = damp, best, stall
        flat = back_off(self.damp.flatten(), self.best.flatten(), self.stall.flatten(),
                        token_residuals(fz, z).flatten())
        self.damp, self.best, self.stall = (t.view(rows, tokens) for t in flat)
        d = self.damp[..., None]
        return (1 - d) * z + d * fz


def sliding_read(model, ids: torch.Tensor, window: int, budget: Budget, restart: int = 0
                 ) -> tuple[torch.Tensor, dict]:
    """The last token's hidden state of each row, and the counts. restart > 0: a window whose front has not
    converged after that many evaluations since the last commit starts again from z = 0 (as a sequential solve of
    its front token would have), once per front token. Solver "backoff": a damping per token (TokenDamping)."""
    damping = TokenDamping(budget.tau) if budget.solver == "backoff" else None

    def update(z, fz):
        return damping.update(z, fz) if damping else (1 - budget.tau) * z + budget.tau * fz
    rows, length = ids.shape
    u = model.inject(ids)
    state = model.empty_state(rows)
    z = torch.zeros(rows, 0, model.cfg.d_model)
    age = torch.zeros(0, dtype=torch.long)  # evaluations each window token has had
    start, calls, commits, token_evals, capped, last = 0, 0, 0, 0, 0, None
    while start < length:
        end = min(start + window, length)
        grow = end - start - z.shape[1]
        z = torch.cat([z, z.new_zeros(rows, grow, z.shape[-1])], 1)
        age = torch.cat([age, age.new_zeros(grow)])
        fz, _ = model.f(z, u[:, start:end], state, None, commit=False)
        calls, token_evals, age = calls + 1, token_evals + (end - start), age + 1
        done = (token_residuals(fz, z) < budget.tol).all(0)  # (T,): converged in every row
        prefix = int(done.long().cumprod(0).sum())
        if restart and prefix == 0 and int(age[0]) == restart:
            z.zero_()
            continue
        if prefix == 0 and age[0] >= budget.max_iter:
            prefix, capped = 1, capped + 1
        if prefix == 0:
            z = update(z, fz)
            continue
        out, state = model.f(z[:, :prefix], u[:, start:start + prefix], state, None, commit=True)
        commits, token_evals = commits + 1, token_evals + prefix
        last = out[:, -1]
        z = update(z, fz)[:, prefix:]
        if damping:
            damping.restart(rows, z.shape[1])
        age = age[prefix:] * 0  # the frozen state moved: a new solve for the tokens left, with a budget of its own
        start += prefix
    return last, {"sequential_f_evaluations": calls + commits, "window_evaluations": calls, "commits": commits,
                  "token_evaluations_per_token": token_evals / length, "capped_tokens": capped}


def standard_read(model, ids: torch.Tensor, budget: Budget) -> tuple[torch.Tensor, dict]:
    out = model(ids, budget)
    its = out.stats.iterations
    tokens = out.stats.tokens.double()
    return out.hidden[:, -1], {
        "sequential_f_evaluations": int(its.max(0).values.sum()),
        "token_evaluations_per_token": float((its.max(0).values.double() * tokens[0]).sum() / ids.shape[1]),
        "capped_tokens": int(((its >= budget.max_iter) & ~out.stats.converged).sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_reading_args(p)
    p.add_argument("--windows", type=int, nargs="+", default=[8, 16])
    p.add_argument("--block-sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--restart", type=int, default=0, help="restart a stalled window from zeros (0: never)")
    p.add_argument("--tau", type=float, default=None, help="damping of every reading (default: the checkpoint's)")
    p.add_argument("--solver", default="fixed_point", choices=["fixed_point", "backoff"],
                   help="damped iteration; backoff: a damping per row in the readings, per token in the window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    ckpt = load_checkpoint(args.checkpoint, dtype=torch.float32, device=torch.device("cpu"))
    model = ckpt.model
    docs = documents(args.task, args.bucket, args.docs, args.seed)
    ids = torch.tensor([ckpt.tokenizer.encode(d["input"]) for d in docs])
    targets = torch.tensor([ckpt.tokenizer.encode(d["target"])[0] for d in docs])
    base = Budget(max_iter=args.max_iter, tol=args.tol, tau=args.tau or ckpt.default_budget.tau, solver=args.solver)
    readings = {"sequential": lambda: standard_read(model, ids, base.replace(mode="sequential"))}
    for c in args.block_sizes:
        readings[f"blocks of {c}"] = lambda c=c: standard_read(model, ids, base.replace(mode="blockwise", block_size=c))
    for w in args.windows:
        readings[f"window of {w}"] = lambda w=w: sliding_read(model, ids, w, base, args.restart)
    rows, times, reference = [], {name: [] for name in readings}, None
    with torch.inference_mode():
        for name, fn in readings.items():
            hidden, stats = fn()
            answers = model.logits(hidden).argmax(-1)
            reference = answers if reference is None else reference
            rows.append({"reading": name, "accuracy": float((answers == targets).double().mean()),
                         "agrees_with_sequential": float((answers == reference).double().mean()), **stats})
        for _ in range(args.repeats):
            for name, fn in readings.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    for row in rows:
        row["seconds"] = statistics.median(times[row["reading"]])
    seq = rows[0]["seconds"]
    print(f"{'reading':14s} {'acc':>6s} {'agree':>6s} {'seq f':>6s} {'windows':>7s} {'commits':>7s} "
          f"{'tok ev/tok':>10s} {'capped':>6s} "
          f"{'seconds':>8s} {'speed-up':>8s}   threads {torch.get_num_threads()}")
    for r in rows:
        print(f"{r['reading']:14s} {r['accuracy']:6.3f} {r['agrees_with_sequential']:6.3f} "
              f"{r['sequential_f_evaluations']:6d} {r.get('window_evaluations', 0):7d} {r.get('commits', 0):7d} "
              f"{r['token_evaluations_per_token']:10.1f} {r['capped_tokens']:6d} "
              f"{r['seconds']:8.3f} {seq / r['seconds']:7.2f}x")
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
