"""Quasi-Newton readings of a block beside damped iteration: a research measurement for item 1 of the
implicit-readings issue (#30), which names "a quasi-Newton parallel reading in the manner of DEER / ELK" as a lever.

    OMP_NUM_THREADS=2 python bench/block_newton.py --docs 100 --seed 1 --out block_newton.json

The blockwise reading iterates a block z <- (1 - tau) z + tau f(z) from z = 0, from the frozen state at its start,
until every row has converged, then commits it with one more f. Here the same block loop takes one of these updates:

- damped: that iteration (it reads as the library's blockwise reading with solver "fixed_point"; tested);
- newton: inexact Newton on g(z) = f(z) - z over the whole block, each step solving (I - J) dz = g(z) by GMRES with
  Jacobian-vector products (torch.func.jvp), per row, to a relative tolerance. DEER and ELK linearise a whole
  nonlinear recurrence and solve the linear system in parallel; this is that idea on the block's fixed point, where
  the time coupling already runs through the scan. A JVP is an evaluation of the block, so each GMRES iteration
  counts as one sequential evaluation (and costs more than one: the script times both);
- token_anderson: Anderson mixing with weights per (row, token), where the solver "anderson" mixes a row's whole
  block with one set of weights;
- token_secant: a damping per (row, token) from the secant of its last two updates (a scalar Jacobian per token,
  the cheapest quasi-Newton: the Barzilai-Borwein step), clamped to --secant-range;
- momentum: the damped update plus beta times the last step (heavy ball), from the first update on.

The quasi-Newton updates start after --warm damped updates: at z = 0 the first pre-norm's Jacobian is about
1 / sqrt(eps), and Newton from there diverges.

--lag: where a block's evaluations go. For each block, its count (slowest row) beside the count of its hardest
token read alone (the sequential reading's most evaluations of a token of that block, any row): what a block would
cost if each token converged as fast as it does once the tokens before it have settled. With --text N, that alone
on N held-out pydoc windows of a language model (--checkpoint checkpoints/text-implicit) at the checkpoint's own
budget, where a block is every layer deep:

    OMP_NUM_THREADS=2 python bench/block_newton.py --checkpoint checkpoints/text-implicit --text 16 --out lag.json

Prints, per reading: accuracy, agreement with the sequential reading, sequential evaluations (f and JVP calls made
one after another, each block counting its slowest row, the commit included), and seconds on this machine. Also the
wall time of one JVP against one f evaluation of a block of 32.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from readings import add_reading_args, documents  # bench/readings.py: run as a script, bench/ is on sys.path
from torch import Tensor
from torch.func import jvp

from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.exits import relative_residual
from implicit_ssm_eval.model_adapters.fixed_point import _anderson_mix, damp
from implicit_ssm_eval.model_adapters.formats import load_checkpoint

BlockMap = Callable[[Tensor], Tensor]


def gmres(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, rtol: float) -> tuple[Tensor, int]:
    """x with matvec(x) ~ b, one system per row of b (R, D), from x = 0, stopping once every row's residual is
    below rtol * ||b||; and the matvecs made."""
    beta = b.norm(dim=1)
    basis = [b / beta.clamp_min(1e-30)[:, None]]
    hess = b.new_zeros(b.shape[0], iters + 1, iters)
    rhs = b.new_zeros(b.shape[0], iters + 1)
    rhs[:, 0] = beta
    for k in range(iters):
        w = matvec(basis[k])
        for i in range(k + 1):  # modified Gram-Schmidt, per row
            hess[:, i, k] = (w * basis[i]).sum(1)
            w = w - hess[:, i, k, None] * basis[i]
        hess[:, k + 1, k] = w.norm(dim=1)
        basis.append(w / hess[:, k + 1, k].clamp_min(1e-30)[:, None])
        h = hess[:, :k + 2, :k + 1]
        y = torch.linalg.lstsq(h, rhs[:, :k + 2, None]).solution
        left = (h @ y)[..., 0] - rhs[:, :k + 2]
        if bool((left.norm(dim=1) <= rtol * beta).all()):
            break
    return sum(y[:, i] * basis[i] for i in range(k + 1)), k + 1


class Damped:
    def __init__(self, tau: float):
        self.tau = tau

    def update(self, f: BlockMap, z: Tensor, fz: Tensor, k: int) -> tuple[Tensor, int]:
        """The next iterate of every row, and the extra sequential evaluations it made."""
        return damp(z, fz, self.tau), 0


class Newton(Damped):
    def __init__(self, tau: float, warm: int, iters: int, rtol: float):
        super().__init__(tau)
        self.warm, self.iters, self.rtol = warm, iters, rtol

    def update(self, f: BlockMap, z: Tensor, fz: Tensor, k: int) -> tuple[Tensor, int]:
        if k <= self.warm:
            return damp(z, fz, self.tau), 0
        rows = z.shape[0]

        def matvec(v: Tensor) -> Tensor:  # (I - J) v
            return v - jvp(f, (z,), (v.view_as(z),))[1].reshape(rows, -1)

        step, made = gmres(matvec, (fz - z).reshape(rows, -1), self.iters, self.rtol)
        return z + step.view_as(z), made


class TokenAnderson(Damped):
    def __init__(self, tau: float, warm: int, m: int):
        super().__init__(tau)
        self.warm, self.m = warm, m
        self.xs: list[Tensor] = []
        self.fs: list[Tensor] = []

    def update(self, f: BlockMap, z: Tensor, fz: Tensor, k: int) -> tuple[Tensor, int]:
        if k <= self.warm:
            return damp(z, fz, self.tau), 0
        self.xs, self.fs = [*self.xs, z][-self.m:], [*self.fs, fz][-self.m:]
        return token_mix(torch.stack(self.xs, 1), torch.stack(self.fs, 1), self.tau), 0


class TokenSecant(Damped):
    def __init__(self, tau: float, warm: int, low: float, high: float):
        super().__init__(tau)
        self.warm, self.low, self.high = warm, low, high
        self.last: tuple[Tensor, Tensor] | None = None

    def update(self, f: BlockMap, z: Tensor, fz: Tensor, k: int) -> tuple[Tensor, int]:
        """z + t g with g = f(z) - z and, per (row, token), t = <s, s> / <s, -y> for s, y the changes of z and g
        since the last update: the root of the secant of g along s. Where the secant does not fall, tau."""
        g, last = fz - z, self.last
        self.last = (z, g)
        if last is None or k <= self.warm:
            return damp(z, fz, self.tau), 0
        s, y = z - last[0], g - last[1]
        num, den = (s * s).sum(-1, keepdim=True), -(s * y).sum(-1, keepdim=True)
        t = torch.where(den > 0, (num / den.clamp_min(1e-30)).clamp(self.low, self.high), self.tau)
        return z + t * g, 0


class Momentum(Damped):
    def __init__(self, tau: float, beta: float):
        super().__init__(tau)
        self.beta = beta
        self.last: Tensor | None = None

    def update(self, f: BlockMap, z: Tensor, fz: Tensor, k: int) -> tuple[Tensor, int]:
        moved = damp(z, fz, self.tau)
        if self.last is not None:
            moved = moved + self.beta * (z - self.last)
        self.last = z
        return moved, 0


def token_mix(xs: Tensor, fs: Tensor, tau: float) -> Tensor:
    """Anderson (type II) with weights per (row, token): histories xs, fs (R, n, T, D) -> (R, T, D). Each token is
    mixed as fixed_point._anderson_mix mixes a row, over its own residuals only."""
    rows, n, tokens, width = xs.shape

    def per_token(h: Tensor) -> Tensor:  # (R * T, n, D): every token a row of its own
        return h.transpose(1, 2).reshape(rows * tokens, n, width)

    return _anderson_mix(per_token(xs), per_token(fs), None, tau).view(rows, tokens, width)


def read_blocks(model, ids: Tensor, block: int, budget: Budget, make: Callable[[], Damped]
                ) -> tuple[Tensor, dict]:
    """The last token's output of each row, read block by block with make()'s update, and the counts. A row stops
    (keeps its iterate) once its relative residual over the block is below tol, as the library's solve stops it:
    the update of the evaluation that found it converged is taken, later ones are not."""
    u_all = model.inject(ids)
    state = model.empty_state(ids.shape[0])
    sequential, capped, extra, steps = 0, 0, 0, 0
    for start in range(0, ids.shape[1], block):
        u = u_all[:, start:start + block]

        def f(z: Tensor, u: Tensor = u, state=state) -> Tensor:
            return model.f(z, u, state, None, commit=False)[0]

        solver, z = make(), torch.zeros(*u.shape[:2], model.cfg.d_model, dtype=u.dtype)
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        for k in range(1, budget.max_iter):
            fz = f(z)
            met = relative_residual(fz, z) < budget.tol
            moved, made = solver.update(f, z, fz, k)
            z = torch.where(done[:, None, None], z, moved)
            sequential, done = sequential + 1 + made, done | met
            extra, steps = extra + made, steps + bool(made)
            if bool(done.all()):
                break
        capped += int((~done).sum())
        out, state = model.f(z, u, state, None, commit=True)
        sequential += 1
    counts = {"sequential_evaluations": sequential, "capped": capped}
    if steps:  # Newton: the GMRES iterations (JVPs) a step took, on average over the steps of every block
        counts["jvps_per_newton_step"] = extra / steps
    return out[:, -1], counts


def library_read(model, ids: Tensor, budget: Budget) -> tuple[Tensor, dict]:
    out = model(ids, budget)
    return out.hidden[:, -1], {"sequential_evaluations": int(out.stats.iterations.max(0).values.sum()),
                               "capped": int((~out.stats.converged).sum())}


def lag(model, ids: Tensor, budget: Budget, block: int) -> dict:
    """Per block of the library's blockwise reading: its evaluations (slowest row) and its hardest token's in the
    sequential reading (any row), with the same budget."""
    tokens = model(ids, budget.replace(mode="sequential")).stats.iterations  # (R, L)
    blocks = model(ids, budget.replace(mode="blockwise", block_size=block)).stats.iterations  # (R, L / block)
    hardest = tokens.view(tokens.shape[0], -1, block).amax(2)  # (R, blocks)
    return {"block": block, "block_evaluations": blocks.amax(0).tolist(),
            "hardest_token_evaluations": hardest.amax(0).tolist(),
            "block_over_hardest_token_per_row": float((blocks.double() / hardest.double()).mean())}


def jvp_cost(model, ids: Tensor, block: int = 32, repeats: int = 10) -> dict:
    """Milliseconds of one f evaluation and of one JVP of a block, all rows."""
    u = model.inject(ids)[:, :block]
    state = model.empty_state(ids.shape[0])
    z = torch.randn(*u.shape[:2], model.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def f(z: Tensor) -> Tensor:
        return model.f(z, u, state, None, commit=False)[0]

    costs = {}
    for name, fn in (("f_ms", lambda: f(z)), ("jvp_ms", lambda: jvp(f, (z,), (z,)))):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        costs[name] = (time.perf_counter() - start) / repeats * 1e3
    return costs


def updates(tau: float, args) -> dict[str, Callable[[], Damped]]:
    """The updates --methods names, each at every setting asked for."""
    out: dict[str, Callable[[], Damped]] = {}
    low, high = args.secant_range
    for warm in args.warm:
        if "newton" in args.methods:
            for iters, rtol in zip(args.gmres_iters, args.gmres_rtol):
                out[f"newton warm {warm} gmres {iters}/{rtol}"] = lambda w=warm, i=iters, r=rtol: Newton(tau, w, i, r)
        if "token_anderson" in args.methods:
            for m in args.anderson_m:
                out[f"token_anderson warm {warm} m {m}"] = lambda w=warm, m=m: TokenAnderson(tau, w, m)
        if "token_secant" in args.methods:
            out[f"token_secant warm {warm} [{low}, {high}]"] = lambda w=warm: TokenSecant(tau, w, low, high)
    if "momentum" in args.methods:
        for beta in args.momentum:
            out[f"momentum {beta}"] = lambda b=beta: Momentum(tau, b)
    return out


def readings(model, ids: Tensor, budget: Budget, args) -> dict[str, Callable]:
    out: dict[str, Callable] = {"sequential (library, backoff)": lambda: library_read(
        model, ids, budget.replace(mode="sequential", solver="backoff"))}
    for c in args.block_sizes:
        out[f"blocks of {c}, backoff (library)"] = lambda c=c: library_read(
            model, ids, budget.replace(mode="blockwise", block_size=c, solver="backoff"))
        out[f"blocks of {c}, damped"] = lambda c=c: read_blocks(model, ids, c, budget, lambda: Damped(budget.tau))
        for name, make in updates(budget.tau, args).items():
            out[f"blocks of {c}, {name}"] = lambda c=c, make=make: read_blocks(model, ids, c, budget, make)
    return out


def print_lag(row: dict) -> None:
    print(f"blocks of {row['block']} (backoff): a block's evaluations / its hardest token's, per row, mean "
          f"{row['block_over_hardest_token_per_row']:.2f}; summed over blocks (slowest rows) "
          f"{sum(row['block_evaluations'])} / {sum(row['hardest_token_evaluations'])}", flush=True)


def text_lag(args) -> None:
    """--text: the lag on a language model's held-out windows, cut to a whole number of the largest block."""
    from lm_convergence import windows  # bench/lm_convergence.py

    ckpt = load_checkpoint(args.checkpoint, dtype=torch.float32, device=torch.device("cpu"))
    ids, _ = windows(ckpt.tokenizer, args.text, 256)
    ids = ids[:, :ids.shape[1] // max(args.block_sizes) * max(args.block_sizes)]
    budget = ckpt.default_budget.replace(solver="backoff", **({"tau": args.tau} if args.tau else {}))
    print(f"{ckpt.model.cfg.n_layer} layers, {tuple(ids.shape)} tokens, {budget}", flush=True)
    with torch.no_grad():
        lags = [lag(ckpt.model, ids, budget, c) for c in args.block_sizes]
    for row in lags:
        print_lag(row)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "budget": budget.to_dict(),
                                    "threads": torch.get_num_threads(), "lag": lags}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_reading_args(p)
    p.add_argument("--tau", type=float, default=None, help="damping (default: the checkpoint's)")
    p.add_argument("--block-sizes", type=int, nargs="+", default=[16, 32])
    p.add_argument("--warm", type=int, nargs="+", default=[8, 16], help="damped updates before Newton or Anderson")
    p.add_argument("--gmres-iters", type=int, nargs="+", default=[10, 20], help="GMRES iterations a Newton step")
    p.add_argument("--gmres-rtol", type=float, nargs="+", default=[0.3, 0.1],
                   help="GMRES tolerance, one per --gmres-iters")
    p.add_argument("--anderson-m", type=int, nargs="+", default=[2, 5])
    p.add_argument("--secant-range", type=float, nargs=2, default=[0.3, 1.0], metavar=("LOW", "HIGH"),
                   help="the token secant's damping is clamped to [LOW, HIGH]")
    p.add_argument("--momentum", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="betas of the heavy ball")
    p.add_argument("--methods", nargs="+", default=["newton", "token_anderson", "token_secant"],
                   choices=["newton", "token_anderson", "token_secant", "momentum"])
    p.add_argument("--lag", action="store_true", help="also each block's evaluations beside its hardest token's")
    p.add_argument("--text", type=int, default=0, metavar="N",
                   help="only the lag, on N windows of a language model at its own budget")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if len(args.gmres_iters) != len(args.gmres_rtol):
        p.error("--gmres-iters and --gmres-rtol pair up: give as many of each")
    if args.text:
        text_lag(args)
        return
    ckpt = load_checkpoint(args.checkpoint, dtype=torch.float32, device=torch.device("cpu"))
    model = ckpt.model
    docs = documents(args.task, args.bucket, args.docs, args.seed)
    ids = torch.tensor([ckpt.tokenizer.encode(d["input"]) for d in docs])
    targets = torch.tensor([ckpt.tokenizer.encode(d["target"])[0] for d in docs])
    budget = Budget(max_iter=args.max_iter, tol=args.tol, tau=args.tau or ckpt.default_budget.tau)
    rows, reference = [], None
    with torch.no_grad():  # not inference_mode: forward-mode AD needs tensors it may track
        costs = jvp_cost(model, ids)
        print(f"a block of 32, {len(ids)} rows: f {costs['f_ms']:.1f} ms, JVP {costs['jvp_ms']:.1f} ms "
              f"({costs['jvp_ms'] / costs['f_ms']:.1f}x), threads {torch.get_num_threads()}", flush=True)
        lags = [lag(model, ids, budget.replace(solver="backoff"), c) for c in args.block_sizes] if args.lag else []
        for row in lags:
            print_lag(row)
        for name, fn in readings(model, ids, budget, args).items():
            start = time.perf_counter()
            hidden, stats = fn()
            seconds = time.perf_counter() - start
            answers = model.logits(hidden).argmax(-1)
            reference = answers if reference is None else reference
            rows.append({"reading": name, "accuracy": float((answers == targets).double().mean()),
                         "agrees_with_sequential": float((answers == reference).double().mean()), **stats,
                         "seconds": seconds})
            r = rows[-1]
            print(f"{name:48s} acc {r['accuracy']:.3f} agree {r['agrees_with_sequential']:.3f} "
                  f"sequential evaluations {r['sequential_evaluations']:6d} capped {r['capped']:3d} "
                  f"{seconds:7.1f} s" + (f", {r['jvps_per_newton_step']:.1f} JVPs a Newton step"
                                         if "jvps_per_newton_step" in r else ""), flush=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "threads": torch.get_num_threads(), **costs, "lag": lags, "rows": rows},
                                   indent=2))


if __name__ == "__main__":
    main()
