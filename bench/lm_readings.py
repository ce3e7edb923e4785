"""The readings of a language model side by side: sequential against blockwise, per solver, at the checkpoint's
budget (text-implicit: 4 layers, max_iter 64, tol 0.05, damping 0.8), on held-out pydoc windows.

    python bench/lm_readings.py --docs 16 --out bench/results/lm_readings_cpu.json
    python bench/lm_readings.py --device cuda --backend triton --graphs capture --dtype bfloat16 --docs 64 --out X.json

A block of a language model is every layer deep: one f evaluation of a block runs the whole stack over its tokens,
and a block iterates until its slowest token has settled. For each solver (fixed_point, backoff) and reading, on the
same windows, in one process: bits per byte of the windows' text, the share of positions whose greedy next token
agrees with that solver's sequential reading, f evaluations (per piece; sequential ones: each piece counts its
slowest row; with --graphs, the evaluations the piece solves made), pieces that used the whole budget unconverged
("capped"), and wall time (median of --repeats interleaved rounds after a warm-up).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from lm_convergence import windows  # bench/: run as a script, bench/ is on sys.path
from readings import BLOCK_KERNELS, block_kernels, piece_solves, reading_stats, solves_made, warn_of_solves_made

from implicit_ssm_eval.model_adapters.formats import load_checkpoint
from implicit_ssm_eval.model_adapters.runtime import Runtime


def read(runtime, kernels: str, ids: torch.Tensor, budget, device) -> tuple[torch.Tensor, torch.Tensor, dict, float]:
    """Per-position greedy tokens and next-token log-likelihood (summed per window), statistics, wall time, with a
    block's kernels as readings.BLOCK_KERNELS[kernels] sets them."""
    with block_kernels(kernels):
        return _read(runtime, ids, budget, device)


def _read(runtime, ids: torch.Tensor, budget, device) -> tuple[torch.Tensor, torch.Tensor, dict, float]:
    kept = piece_solves(runtime)
    for solve in kept:
        solve.evaluations = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = runtime(ids[:, :-1], budget)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    vocab = runtime.model.cfg.vocab_size
    logp = torch.log_softmax(runtime.model.logits(out.hidden)[..., :vocab].float(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None].to(logp.device))[..., 0].sum(1)
    stats = {**reading_stats(runtime, [out.stats], budget), "solves_made": solves_made(runtime, kept)}
    return logp.argmax(-1), nll, stats, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/text-implicit"))
    p.add_argument("--docs", type=int, default=16)
    p.add_argument("--length", type=int, default=256, choices=(256, 512, 1024, 2048))
    p.add_argument("--solvers", nargs="+", default=["fixed_point", "backoff"])
    p.add_argument("--block-sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--tol", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--max-iter", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--tau", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--backend", default="torch")
    p.add_argument("--graphs", choices=("off", "capture", "masked"), default="off")
    p.add_argument("--block-kernels", nargs="*", default=[], choices=list(BLOCK_KERNELS)[1:],
                   help="also each blockwise reading with a block's kernels as before (bench/readings.py)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    device = torch.device(args.device)
    ckpt = load_checkpoint(args.checkpoint, dtype=getattr(torch, args.dtype), device=device)
    runtime = Runtime(ckpt.model, args.backend, args.graphs)
    ids, nbytes = windows(ckpt.tokenizer, args.docs, args.length)
    ids = ids.to(device)
    base = ckpt.default_budget.replace(**{k: v for k, v in (("tol", args.tol), ("max_iter", args.max_iter),
                                                             ("tau", args.tau)) if v is not None})
    readings = {(solver, size, "fused"): base.replace(solver=solver, mode="blockwise", block_size=size) if size else
                base.replace(solver=solver, mode="sequential")
                for solver in args.solvers for size in (None, *args.block_sizes)}
    runtimes = {"fused": runtime, **{k: Runtime(ckpt.model, args.backend, args.graphs) for k in args.block_kernels}}
    readings.update({(solver, size, k): base.replace(solver=solver, mode="blockwise", block_size=size)
                     for k in args.block_kernels for solver in args.solvers for size in args.block_sizes})
    rows, greedy, times = {}, {}, {key: [] for key in readings}
    with torch.inference_mode():
        for (solver, size, kernels), budget in readings.items():
            tokens, nll, stats, _ = read(runtimes[kernels], kernels, ids, budget, device)  # warm-up: compiles, captures
            greedy.setdefault(solver, tokens)
            name = (f"blockwise {size}" + ("" if kernels == "fused" else f" {kernels}")) if size else "sequential"
            rows[solver, size, kernels] = {"solver": solver, "reading": name,
                                  "block_size": size, "bits_per_byte": float(nll.sum()) / sum(nbytes) / math.log(2),
                                  "agrees_with_sequential": float((tokens == greedy[solver]).double().mean()), **stats}
        made = dict.fromkeys(readings, 0)
        for _ in range(args.repeats):  # interleaved: a shared machine's slow spells hit every reading alike
            for key, budget in readings.items():
                *_, stats, seconds = read(runtimes[key[2]], key[2], ids, budget, device)
                times[key].append(seconds)
                made[key] += stats["solves_made"]
    for key, row in rows.items():
        row["seconds"], row["seconds_all"] = statistics.median(times[key]), times[key]
        row["solves_made_while_timed"] = made[key]
        sequential = rows[key[0], None, "fused"]["seconds"]
        row["speed_up"] = sequential / row["seconds"]
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "budget": base.to_dict(),
                                    "tokens": int(ids[:, 1:].numel()), "threads": torch.get_num_threads(),
                                    "rows": list(rows.values())}, indent=2))
    print(f"{'solver':12s} {'reading':19s} {'bpb':>7s} {'agree':>6s} {'it/piece':>9s} {'seq f':>7s} {'made':>6s} "
          f"{'capped':>6s} {'seconds':>8s} {'speed-up':>8s}")
    for r in rows.values():
        print(f"{r['solver']:12s} {r['reading']:19s} {r['bits_per_byte']:7.4f} {r['agrees_with_sequential']:6.3f} "
              f"{r['iterations_per_piece']:9.1f} {r['sequential_f_evaluations']:7d} {r['evaluations_made']:6d} "
              f"{r['capped']:6d} {r['seconds']:8.3f} {r['speed_up']:7.2f}x")
    warn_of_solves_made({" ".join(map(str, key)): n for key, n in made.items()})


if __name__ == "__main__":
    main()
