"""The readings side by side: sequential, blockwise at several block sizes, simultaneous, on one bucket.

    python bench/readings.py --checkpoint checkpoints/a5-implicit --bucket ood8x --docs 40 --out readings.json

For each reading, on the same documents, in one process: accuracy of the final answer, agreement of the final
answer with the sequential reading, f evaluations per piece and per token, sequential f evaluations (the f calls
made one after another: the latency of the reading; each piece counts its slowest row), with --graphs the
evaluations the piece solves made (whole segments of updates: what a GPU pays), the (sequence, piece) pairs that
reached max_iter unconverged ("capped"), and wall time
(median of --repeats interleaved rounds after a warm-up).
Prints a table; --plot writes the trade-off (block size vs accuracy, iterations per token and time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.formats import load_checkpoint
from implicit_ssm_eval.model_adapters.runtime import Runtime


def documents(task: str, bucket: str, num_docs: int, seed: int):
    from implicit_ssm_eval.tasks.state_tracking import make_docs

    return make_docs(task, bucket, num_docs=num_docs, seed=seed)


def read(model, kernels: str, ids, budget: Budget, device, batch_size: int | None = None
         ) -> tuple[torch.Tensor, dict, float]:
    """Final-position greedy answers, statistics, and the wall time of one reading, in batches of `batch_size`
    documents (default: all at once), with a block's kernels as BLOCK_KERNELS[kernels] sets them."""
    with block_kernels(kernels):
        return _read(model, ids, budget, device, batch_size)


# A block's kernels on the Triton backend: (triton_ops.FUSED_CONV_SCAN, triton_ops.INJECT_IN_KERNELS)
BLOCK_KERNELS = {"fused": (True, True), "apart": (False, False), "conv": (True, False)}


@contextlib.contextmanager
def block_kernels(kernels: str):
    """The Triton backend's switches set for a while (nothing to set without it)."""
    ops = sys.modules.get("implicit_ssm_eval.model_adapters.backends.triton_ops")
    if ops is None:
        yield
        return
    was = ops.FUSED_CONV_SCAN, ops.INJECT_IN_KERNELS
    ops.FUSED_CONV_SCAN, ops.INJECT_IN_KERNELS = BLOCK_KERNELS[kernels]
    try:
        yield
    finally:
        ops.FUSED_CONV_SCAN, ops.INJECT_IN_KERNELS = was


def _read(model, ids, budget: Budget, device, batch_size: int | None) -> tuple[torch.Tensor, dict, float]:
    kept = piece_solves(model)
    for solve in kept:
        solve.evaluations = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    answers, batches = [], []
    for chunk in ids.split(batch_size or len(ids)):
        out = model(chunk, budget)
        answers.append(model.logits(out.hidden[:, -1]).argmax(-1))
        batches.append(out.stats)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stats = {**reading_stats(model, batches, budget), "solves_made": solves_made(model, kept)}
    return torch.cat(answers), stats, seconds


def piece_solves(model) -> list:
    """The piece solves a Runtime keeps (none for a bare model)."""
    return list(getattr(model, "_caches", {}).get("piece_solves", {}).values())


def solves_made(model, kept: list) -> int:
    """Piece solves made since `kept` was taken (a list, so none of those is freed and its id reused): on a GPU each
    is a capture, which a timed round must not contain."""
    before = {id(solve) for solve in kept}
    return sum(id(solve) not in before for solve in piece_solves(model))


def warn_of_solves_made(made: dict) -> None:
    """Say so where timed rounds made piece solves: more readings (or shapes) than the runtime keeps
    (runtime.PIECE_SOLVES_KEPT) were interleaved, and their times include captures."""
    if any(made.values()):
        print(f"WARNING: timed rounds made piece solves (on a GPU, CUDA graph captures), so their times include them: "
              f"{ {k: v for k, v in made.items() if v} }; time fewer readings per process")


def reading_stats(model, batches: list, budget: Budget) -> dict:
    """What a reading cost, from the statistics of its batches (and the piece solves' counts of `model`, a Runtime)."""
    its = torch.cat([s.iterations for s in batches]).double()
    tokens = torch.cat([s.tokens for s in batches]).double()
    converged = torch.cat([s.converged for s in batches])
    present = torch.cat([s.present for s in batches])
    stats = {"pieces": int(its.shape[1]), "iterations_per_piece": float(its.mean()),
             "iterations_per_token": float((its * tokens).sum() / tokens.sum()),
             # the f calls made one after another: each batch's pieces count their slowest row
             "sequential_f_evaluations": sum(int(s.iterations.max(0).values.sum()) for s in batches),
             # with --graphs: the evaluations the piece solves made (every row at once, whole segments)
             "evaluations_made": sum(solve.evaluations for solve in piece_solves(model)),
             "converged": float(converged.double().mean()),
             # (sequence, piece) pairs that used the whole budget without converging: in lockstep solves each costs
             # every row max_iter evaluations of its piece
             "capped": int(((its >= budget.max_iter) & ~converged & present).sum())}
    return stats


def add_reading_args(p: argparse.ArgumentParser) -> None:
    """The checkpoint, the documents and the budget every reading script takes (also bench/sliding_window.py)."""
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/a5-implicit"))
    p.add_argument("--task", default="a5")
    p.add_argument("--bucket", default="ood8x")
    p.add_argument("--docs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=0.01)
    p.add_argument("--max-iter", type=int, default=256)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_reading_args(p)
    p.add_argument("--tau", type=float, default=None, help="damping of every reading (default: the checkpoint's)")
    p.add_argument("--solver", default="fixed_point", help="the solver of every reading (fixed_point.SOLVERS)")
    p.add_argument("--block-sizes", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--simultaneous", action="store_true", help="also the simultaneous reading (slow at 8x)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None, help="documents a forward (default: all --docs at once)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--backend", default="torch")
    p.add_argument("--scan-precision", default=None, choices=["ieee", "tf32x3", "tf32"],
                   help="the one-chunk Triton scan's products (default: triton_ssd.PRECISION)")
    p.add_argument("--graphs", default="off", choices=["off", "capture", "masked"], help="piece solves (graphs.py)")
    p.add_argument("--block-kernels", nargs="*", default=[], choices=list(BLOCK_KERNELS)[1:],
                   help="also each blockwise reading with a block's kernels as before: 'apart' (the conv a kernel of "
                        "its own, the injection added by the projection), 'conv' (the conv in the scan, the injection "
                        "by the projection); a runtime each, interleaved with the others")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--profile", type=Path, default=None, help="write each reading's kernel table (torch profiler)")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.scan_precision:
        from implicit_ssm_eval.model_adapters.backends import triton_ssd

        triton_ssd.PRECISION = args.scan_precision
    ckpt = load_checkpoint(args.checkpoint, dtype=getattr(torch, args.dtype), device=device)
    runtime = Runtime(ckpt.model, args.backend, args.graphs)
    docs = documents(args.task, args.bucket, args.docs, args.seed)
    ids = torch.tensor([ckpt.tokenizer.encode(d["input"]) for d in docs], device=device)
    targets = torch.tensor([ckpt.tokenizer.encode(d["target"])[0] for d in docs], device=device)
    base = Budget(max_iter=args.max_iter, tol=args.tol, tau=args.tau or ckpt.default_budget.tau, solver=args.solver)
    readings = {"sequential": base.replace(mode="sequential"),
                **{f"blockwise {c}": base.replace(mode="blockwise", block_size=c) for c in args.block_sizes}}
    if args.simultaneous:
        readings["simultaneous"] = base
    runtimes = dict.fromkeys(readings, (runtime, "fused"))
    for kernels in args.block_kernels:  # a runtime each: the graphs captured with the default kernels are its own
        other = Runtime(ckpt.model, args.backend, args.graphs)
        for c in args.block_sizes:
            readings[f"blockwise {c} {kernels}"] = base.replace(mode="blockwise", block_size=c)
            runtimes[f"blockwise {c} {kernels}"] = (other, kernels)
    rows, reference, times = [], None, {name: [] for name in readings}
    with torch.inference_mode():
        for name, budget in readings.items():
            answers, stats, _ = read(*runtimes[name], ids, budget, device, args.batch_size)  # warm-up: compiles
            reference = answers if reference is None else reference
            rows.append({"reading": name, "block_size": budget.block_size, "accuracy": float(
                (answers == targets).double().mean()), "agrees_with_sequential": float(
                (answers == reference).double().mean()), **stats})
        made = dict.fromkeys(readings, 0)
        for _ in range(args.repeats):  # interleaved rounds: a shared machine's slow spells hit every reading alike
            for name, budget in readings.items():
                _, stats, seconds = read(*runtimes[name], ids, budget, device, args.batch_size)
                times[name].append(seconds)
                made[name] += stats["solves_made"]
    if args.profile:
        args.profile.write_text("\n\n".join(profile(*runtimes[name], ids, name, budget, device)
                                            for name, budget in readings.items()))
    for row in rows:
        row["seconds"], row["seconds_all"] = statistics.median(times[row["reading"]]), times[row["reading"]]
        row["solves_made_while_timed"] = made[row["reading"]]
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    seq = rows[0]["seconds"]
    print(f"{'reading':20s} {'acc':>6s} {'agree':>6s} {'it/piece':>9s} {'it/token':>9s} {'seq f':>7s} "
          f"{'made':>6s} {'capped':>6s} {'seconds':>8s} {'speed-up':>8s}")
    for r in rows:
        print(f"{r['reading']:20s} {r['accuracy']:6.3f} {r['agrees_with_sequential']:6.3f} "
              f"{r['iterations_per_piece']:9.1f} {r['iterations_per_token']:9.1f} {r['sequential_f_evaluations']:7d} "
              f"{r['evaluations_made']:6d} {r['capped']:6d} {r['seconds']:8.3f} {seq / r['seconds']:7.2f}x")
    warn_of_solves_made(made)
    if args.plot:
        plot(rows, args.plot, f"{args.checkpoint.name}, st_{args.task}_{args.bucket}, tol {args.tol:g}, {args.device}")


def profile(model, kernels: str, ids, name: str, budget: Budget, device) -> str:
    """One reading under the torch profiler: its operators and kernels by total device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), torch_profile(activities=activities) as prof:
        read(model, kernels, ids, budget, device)  # all documents at once
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"## {name}\n" + prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)


def plot(rows: list[dict], path: Path, title: str) -> None:
    from implicit_ssm_eval.harness.plots import pyplot, save_figure

    plt = pyplot()
    blocks = [r for r in rows if r["block_size"]]
    x = [r["block_size"] for r in blocks]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, label in zip(axes, ("accuracy", "iterations_per_token", "seconds"),
                              ("accuracy of the final answer", "f evaluations per token", "seconds")):
        ax.plot(x, [r[key] for r in blocks], marker="^", ls="-.", label="blockwise")
        ax.axhline(rows[0][key], color="tab:orange", ls="--", label="sequential")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])  # block sizes as people write them, not 2^n
        ax.set_xlabel("block size (tokens)")
        ax.set_title(label, fontsize=9)
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
