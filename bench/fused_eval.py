"""One fixed-point update of a piece solve, fused (backends/triton_fused.py) against the chain of kernels it replaces
(model.f or model.f_step, then the damped-update kernel), on the GPU, at the readings' sizes.

    python bench/fused_eval.py --checkpoint checkpoints/a5-implicit --rows 100 --tokens 1 16 32 --out fused.json

Device microseconds per update: --calls updates captured in one CUDA graph, median of 5 replays, both forms in the
same process; each (tokens, warps) row times the fused form with those warps for its two kernels.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from implicit_ssm_eval.model_adapters.formats import load_checkpoint
from implicit_ssm_eval.model_adapters.mamba2 import MixerState


def timed(fn, calls: int) -> float:
    """Device microseconds per call of fn, captured `calls` times in a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/a5-implicit"))
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 32])
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--warps", type=int, nargs="+", default=[4], help="warps of both fused kernels, each tried")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from implicit_ssm_eval.model_adapters.backends import triton_fused, triton_ops

    model = load_checkpoint(args.checkpoint, dtype=getattr(torch, args.dtype), device="cuda").model
    model.use_backend("triton")
    cfg, rows = model.cfg, args.rows
    results = []
    with torch.inference_mode():
        for tokens in args.tokens:
            shape = (rows, cfg.d_model) if tokens == 1 else (rows, tokens, cfg.d_model)
            z = torch.randn(shape, device="cuda")
            u = model.inject(torch.randint(0, cfg.vocab_size, shape[:-1], device="cuda"))
            state = [MixerState(torch.randn(rows, cfg.conv_dim, cfg.d_conv - 1, device="cuda").to(model.dtype),
                                0.1 * torch.randn(rows, cfg.nheads, cfg.headdim, cfg.d_state, device="cuda"))]
            valid = None if tokens == 1 else torch.ones(rows, tokens, dtype=torch.bool, device="cuda")
            active = torch.ones(rows, dtype=torch.bool, device="cuda")
            iterations = torch.zeros(rows, dtype=torch.long, device="cuda")
            converged = torch.zeros(rows, dtype=torch.bool, device="cuda")
            counters = (active, iterations, converged, 0.8, 0.0, 10**9)

            def chain():
                fz, _ = model.f_step(z, u, state, False) if tokens == 1 else model.f(z, u, state, valid, False)
                triton_ops.damped_update(z, fz, valid, *counters)

            row = {"tokens": tokens, "rows": rows, "dtype": args.dtype, "chain_us": timed(chain, args.calls)}
            for warps in args.warps:
                triton_fused.WARPS = (warps, warps)
                row[f"fused_w{warps}_us"] = timed(
                    lambda: triton_fused.evaluate(model, z, u, state, valid, False, update=counters), args.calls)
            results.append(row)
            print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
