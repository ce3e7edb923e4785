"""Our small Triton kernels against what they replace, at the sizes of the readings (CUDA):

    python bench/kernels.py --out $OUT/kernels.json

one_chunk      the one-chunk SSD scan of a block (40 rows of the bundled a5 model: 8 heads of 32, d_state 32) per
               num_warps, against the torch twin (ssd.ssd_chunked)
damped_update  a piece solve's masked update (40 rows x T x 128, and the 130M step: 16 x 768) against its torch twin
step_read      an iteration's step without its state (130M: 16 rows, 24 heads of 64, d_state 128) against mamba_ssm's
               state update on a copy of the state

Times are device microseconds per call: 100 calls captured in a CUDA graph, median of 5 replays (launch gaps inside
a graph included, host launch work not: what a captured reading pays).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from implicit_ssm_eval.model_adapters.backends import torch_ops, triton_ops, triton_solve, triton_ssd
from implicit_ssm_eval.model_adapters.ssd import ssd_chunked


def timed(fn, *args, calls: int = 100) -> float:
    """Device microseconds per call: `calls` calls captured in one CUDA graph and replayed (an eager call of a small
    Triton kernel costs tens of microseconds of host launch work, which would hide the kernel's own time)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # compile and autotune outside the capture
            fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn(*args)
    graph.replay()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def one_chunk(results: dict) -> None:
    rows, heads, headdim, dstate = 40, 8, 32, 32
    for length in (1, 8, 32, 64):
        x = torch.randn(rows, length, heads, headdim, device="cuda")
        dt = torch.rand(rows, length, heads, device="cuda") * 0.1
        A = -torch.rand(heads, device="cuda")
        B, C = (torch.randn(rows, length, 1, dstate, device="cuda") for _ in range(2))
        D, s0 = torch.randn(heads, device="cuda"), torch.randn(rows, heads, headdim, dstate, device="cuda")
        for warps in (1, 2, 4, 8, None):  # None: the kernel's own choice
            triton_ssd.NUM_WARPS = warps
            results[f"one_chunk_L{length}_warps{warps}_us"] = timed(triton_ssd.ssd_one_chunk, x, dt, A, B, C, D, s0,
                                                                    False)
        results[f"one_chunk_L{length}_torch_us"] = timed(ssd_chunked, x, dt, A, B, C, 64, D, s0, False)
    triton_ssd.NUM_WARPS = None


def damped_update(results: dict) -> None:
    for name, shape in (("a5_block32", (40, 32, 128)), ("a5_step", (40, 128)), ("130m_step", (16, 768))):
        z, fz = torch.randn(shape, device="cuda"), torch.randn(shape, device="cuda")
        valid = torch.ones(shape[:2], dtype=torch.bool, device="cuda") if len(shape) == 3 else None
        rows = shape[0]
        flags = [torch.ones(rows, dtype=torch.bool, device="cuda"), torch.zeros(rows, dtype=torch.long, device="cuda"),
                 torch.zeros(rows, dtype=torch.bool, device="cuda")]
        for label, op in (("triton", triton_solve.damped_update), ("torch", torch_ops.damped_update)):
            # every row stays active (tol 0, no last update): each call does the full update
            results[f"damped_update_{name}_{label}_us"] = timed(op, z, fz, valid, *flags, 0.8, 0.0, 10**6)


def step_read(results: dict) -> None:
    rows, heads, headdim, dstate = 16, 24, 64, 128
    state = torch.randn(rows, heads, headdim, dstate, device="cuda")
    x = torch.randn(rows, heads, headdim, device="cuda")
    dt, bias, A = torch.randn(rows, heads, device="cuda"), torch.randn(heads, device="cuda"), -torch.rand(heads,
                                                                                                        device="cuda")
    B, C = torch.randn(rows, 1, dstate, device="cuda"), torch.randn(rows, 1, dstate, device="cuda")
    D = torch.randn(heads, device="cuda")
    for label, want_state in (("read_triton", False), ("update_mamba_ssm", True)):
        results[f"step_{label}_130m_us"] = timed(triton_ops.state_step, state, x, dt, bias, A, B, C, D, False,
                                                 want_state)
    results["step_read_torch_130m_us"] = timed(torch_ops.state_step, state, x, dt, bias, A, B, C, D, False, False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    results = {"device": torch.cuda.get_device_name()}
    with torch.inference_mode():
        for section in (one_chunk, damped_update, step_read):
            try:
                section(results)
            except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' figures
                results[f"{section.__name__}_error"] = f"{type(exc).__name__}: {exc}"
            args.out.write_text(json.dumps(results, indent=2))
    for key, value in results.items():
        print(f"{key:44s} {value:.2f}" if isinstance(value, float) else f"{key:44s} {value}")


if __name__ == "__main__":
    main()
