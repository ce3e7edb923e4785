"""The CPU readings with the two cores used two ways: one process thread with two intra-op threads (torch's default),
or two Python threads, each reading half the documents with one intra-op thread.

    python bench/cpu_threads.py --mode intra
    python bench/cpu_threads.py --mode interop

Prints seconds (median of --repeats interleaved rounds after a warm-up) and the speed-up over the sequential reading
of the same mode, for the sequential reading and blocks of 8 and 16.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch
from readings import add_reading_args, documents

from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.formats import load_checkpoint


def last_hidden(model, ids, budget) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids, budget).hidden[:, -1]


def in_two_threads(model, ids, budget) -> torch.Tensor:
    outs: list = [None, None]

    def work(i: int, part: torch.Tensor) -> None:
        outs[i] = last_hidden(model, part, budget)

    threads = [threading.Thread(target=work, args=(i, part)) for i, part in enumerate(ids.chunk(2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return torch.cat(outs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_reading_args(p)
    p.add_argument("--mode", choices=["intra", "interop"], required=True)
    p.add_argument("--block-sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2 if args.mode == "intra" else 1)
    ckpt = load_checkpoint(args.checkpoint)
    ids = torch.tensor([ckpt.tokenizer.encode(d["input"]) for d in documents(args.task, args.bucket, args.docs,
                                                                             args.seed)])
    base = Budget(max_iter=args.max_iter, tol=args.tol, tau=ckpt.default_budget.tau)
    readings = {"sequential": base.replace(mode="sequential"),
                **{f"blocks of {c}": base.replace(mode="blockwise", block_size=c) for c in args.block_sizes}}
    read = last_hidden if args.mode == "intra" else in_two_threads
    times: dict[str, list[float]] = {name: [] for name in readings}
    for budget in readings.values():
        read(ckpt.model, ids, budget)  # warm-up
    for _ in range(args.repeats):
        for name, budget in readings.items():
            start = time.perf_counter()
            read(ckpt.model, ids, budget)
            times[name].append(time.perf_counter() - start)
    seq = statistics.median(times["sequential"])
    print(args.mode, "  ".join(f"{name} {statistics.median(t):.3f} s ({seq / statistics.median(t):.2f}x)"
                               for name, t in times.items()))


if __name__ == "__main__":
    main()
