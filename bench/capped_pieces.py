"""How much of a lockstep reading's latency one unconverged token costs: per reading of the bundled A5 model (tol
0.01, max_iter 256, damping 0.75 and the checkpoint's 0.8), the sequential f evaluations (each piece counts its
slowest row, as a GPU's lockstep solve pays), the pieces that reached max_iter, and the evaluations spent in them.

    OMP_NUM_THREADS=1 python bench/capped_pieces.py --seed 0 --docs 100 --out bench/results/capped_pieces_seed0.json

A token whose fixed point the damped iteration does not reach within max_iter costs every reading max_iter
evaluations: the sequential reading max_iter steps of one token, a blockwise reading max_iter evaluations of its
whole block. That puts a floor under the blockwise reading's time that smaller or faster blocks do not remove.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from readings import add_reading_args, documents  # bench/readings.py: run as a script, bench/ is on sys.path

from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.formats import load_checkpoint

READINGS = (("sequential", None), ("blockwise", 16), ("blockwise", 32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_reading_args(p)
    p.add_argument("--taus", type=float, nargs="+", default=[0.75, 0.8])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    ckpt = load_checkpoint(args.checkpoint, dtype=torch.float32, device=torch.device("cpu"))
    docs = documents(args.task, args.bucket, args.docs, args.seed)
    ids = torch.tensor([ckpt.tokenizer.encode(d["input"]) for d in docs])
    rows = []
    for tau in args.taus:
        for mode, size in READINGS:
            budget = Budget(max_iter=args.max_iter, tol=args.tol, tau=tau, mode=mode,
                            **({"block_size": size} if size else {}))
            with torch.inference_mode():
                its = ckpt.model(ids, budget).stats.iterations
            slowest = its.max(0).values  # a lockstep piece costs its slowest row's evaluations
            capped = slowest >= args.max_iter
            rows.append({"tau": tau, "reading": mode if size is None else f"blocks of {size}",
                         "sequential_f_evaluations": int(slowest.sum()), "pieces": int(its.shape[1]),
                         "capped_pieces": int(capped.sum()), "evaluations_in_capped": int(slowest[capped].sum())})
            r = rows[-1]
            print(f"tau {tau:<5} {r['reading']:<13} seq f {r['sequential_f_evaluations']:5d}  capped pieces "
                  f"{r['capped_pieces']}  in them {r['evaluations_in_capped']:4d} "
                  f"({r['evaluations_in_capped'] / r['sequential_f_evaluations']:.0%})", flush=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
