"""Our small Triton kernels against what they replace, at the sizes of the readings (CUDA):

    python bench/kernels.py --out $OUT/kernels.json

one_chunk      the one-chunk SSD scan of a block (40 or 100 rows of the bundled a5 model: 8 heads of 32, d_state 32)
               per product precision (triton_ssd.PRECISION) and num_warps, against the torch twin (ssd.ssd_chunked)
conv_scan      a block's conv + one-chunk scan (bfloat16; the a5 model's blocks of 100 rows, the text model's of 64;
               16, 32 and 64 tokens; an iteration): the conv inside the scan's kernel, with and without an injection
               to add, against the conv's kernel ahead of it (triton_ops.FUSED_CONV_SCAN)
damped_update  a piece solve's masked update (40 rows x T x 128, and the 130M step: 16 x 768) against its torch twin
step_read      an iteration's step without its state (130M: 16 rows, 24 heads of 64, d_state 128) against mamba_ssm's
               state update on a copy of the state
steps          a layer's step after in_proj, conv included: an iteration's fused read and a committing step in place
               (130M, 16 rows, float32 and bfloat16 states) against the kernels they replace
norms          the residual add + RMSNorm and the gated RMSNorm: our row-blocked kernels (triton_norm) against
               mamba_ssm's one-row-per-program kernels, at the a5 model's widths (128, 256) from a step of 40 rows to
               a block of 64 tokens of 100 rows, and at the 130M model's (768, 1,536)
conv           the causal conv + SiLU per tile shape, at the a5 model's 320 channels (steps and blocks) and the 130M
               model's 1,792 (2,048 tokens)
skinny_gemm    the projections of a one-token evaluation of the 130M model (1 and 16 rows: in_proj 768 -> 3,352 with
               the injection added, out_proj 1,536 -> 768): cuBLAS as the model calls it (addmm, linear) against
               triton_gemm.skinny_linear at its first-guess tiles and at each tile of a small sweep (the best kept),
               with the weight's read rate and the error against cuBLAS
cold           the same products, an iteration's conv_step_read and the final evaluation's conv_step_commit
               (float32 and bfloat16 states, over a survey of their tile: triton_ssd.step_tiles), each call on the
               next of 24 layers' weights or states, as one evaluation of the 130M model reads them: 180 MB of
               weights and 302 MB of float32 state, past the 50 MB L2 that the sections above, which call one
               operand again and again, are served from
chain          one f evaluation of the 130M implicit model (16 rows, all 24 layers): an iteration and a commit, the
               kernels apart against triton_chain's (three launches a layer), float32 and bfloat16 states
streams        the same evaluation with its 16 rows in 2 or 4 parts on as many streams, forked and joined inside the
               graph, so that one part's kernels run in the gaps and tails of another's (rows are independent)

Times are device microseconds per call: 100 calls captured in a CUDA graph, median of 5 replays (launch gaps inside
a graph included, host launch work not: what a captured reading pays).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
from pathlib import Path

import torch
import triton

from implicit_ssm_eval.model_adapters.backends import (
    torch_ops,
    triton_conv,
    triton_gemm,
    triton_norm,
    triton_ops,
    triton_solve,
    triton_ssd,
)
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


def timed_cold(fn, operands: list[tuple], calls: int = 96) -> float:
    """As timed(), each call on the next operand tuple in turn (one per layer), so that none is in L2 when read."""
    turn = itertools.cycle(operands)
    return timed(lambda: fn(*next(turn)), calls=calls)


def one_chunk(results: dict) -> None:
    heads, headdim, dstate = 8, 32, 32  # the bundled a5 model
    for rows, length, dtype in ((40, 1, "float32"), (40, 8, "float32"), (40, 32, "float32"), (40, 64, "float32"),
                                (100, 16, "bfloat16"), (100, 32, "bfloat16"), (100, 64, "bfloat16"),
                                (100, 16, "float32"), (100, 32, "float32")):
        x = torch.randn(rows, length, heads, headdim, device="cuda", dtype=getattr(torch, dtype))
        dt = torch.rand(rows, length, heads, device="cuda") * 0.1
        A = -torch.rand(heads, device="cuda")
        B, C = (torch.randn(rows, length, 1, dstate, device="cuda", dtype=x.dtype) for _ in range(2))
        D, s0 = torch.randn(heads, device="cuda"), torch.randn(rows, heads, headdim, dstate, device="cuda")
        name = f"one_chunk_{rows}x{length}_{dtype}"
        for precision in ("ieee", "tf32x3", "tf32"):
            triton_ssd.PRECISION = precision
            for warps in (1, 2, 4, None):  # None: the kernel's own choice
                triton_ssd.NUM_WARPS = warps
                results[f"{name}_{precision}_warps{warps}_us"] = timed(triton_ssd.ssd_one_chunk, x, dt, A, B, C, D,
                                                                       s0, False)
        triton_ssd.PRECISION = "tf32x3"
        results[f"{name}_torch_us"] = timed(ssd_chunked, x, dt, A, B, C, 64, D, s0, False)
    triton_ssd.NUM_WARPS = None


def conv_scan(results: dict) -> None:
    """A block's conv and one-chunk scan, an iteration's (no final state): the conv's kernel ahead of the scan's
    (apart), the conv inside the scan's kernel (fused) and the same with an injection to add, for the bundled a5
    model's blocks of 100 rows and the text model's of 64."""
    from implicit_ssm_eval.model_adapters.backends import triton_ops

    shapes = {"a5": (8, 32, 32, 100), "text": (8, 64, 64, 64)}  # heads, headdim, dstate, rows
    for (model, (heads, headdim, dstate, rows)), length in itertools.product(shapes.items(), (16, 32, 64)):
        channels = heads * headdim + 2 * dstate
        wide = torch.randn(rows, length, 2 * channels, device="cuda", dtype=torch.bfloat16)
        xbc = wide[..., heads * headdim: heads * headdim + channels]  # a slice of the projection, as in the model
        window = torch.randn(rows, channels, 3, device="cuda", dtype=torch.bfloat16)
        weight = torch.randn(channels, 4, device="cuda", dtype=torch.bfloat16)
        bias = torch.randn(channels, device="cuda", dtype=torch.bfloat16)
        dt = (torch.randn(rows, length, heads, device="cuda") - 2).to(torch.bfloat16)
        dt_bias, A, D = torch.randn(heads, device="cuda"), -torch.rand(heads, device="cuda"), torch.randn(heads,
                                                                                                         device="cuda")
        state = torch.randn(rows, heads, headdim, dstate, device="cuda")
        inject = torch.randn(rows, length, channels + heads, device="cuda", dtype=torch.bfloat16)
        added = (inject[..., :channels], inject[..., channels:])
        name = f"conv_scan_{model}_{rows}x{length}"
        triton_ops.FUSED_CONV_SCAN = False
        results[f"{name}_apart_us"] = timed(triton_ops.conv_scan, xbc, window, weight, bias, dt, dt_bias, A, D,
                                            headdim, dstate, 64, state, False)
        triton_ops.FUSED_CONV_SCAN = True
        fused = (xbc, window, weight, bias, dt, A, D, headdim, dstate, state, False, dt_bias)
        results[f"{name}_fused_us"] = timed(triton_ssd.conv_ssd_one_chunk, *fused)
        results[f"{name}_fused_injected_us"] = timed(triton_ssd.conv_ssd_one_chunk, *fused, None, added)
        results[f"{name}_speed"] = results[f"{name}_apart_us"] / results[f"{name}_fused_us"]
        print(name, {k[len(name) + 1:]: round(v, 2) for k, v in results.items() if k.startswith(name)}, flush=True)


def damped_update(results: dict) -> None:
    for name, shape in (("a5_block32", (40, 32, 128)), ("a5_step", (40, 128)), ("130m_step", (16, 768)),
                        ("a5_step_100", (100, 128)), ("a5_block16_100", (100, 16, 128)),
                        ("a5_block32_100", (100, 32, 128)), ("a5_block64_100", (100, 64, 128))):
        z, fz = torch.randn(shape, device="cuda"), torch.randn(shape, device="cuda")
        valid = torch.ones(shape[:2], dtype=torch.bool, device="cuda") if len(shape) == 3 else None
        rows = shape[0]
        flags = [torch.ones(rows, dtype=torch.bool, device="cuda"), torch.zeros(rows, dtype=torch.long, device="cuda"),
                 torch.zeros(rows, dtype=torch.bool, device="cuda")]
        # every row stays active (tol 0, no last update): each call does the full update
        for label, op in (("triton", triton_solve.damped_update), ("torch", torch_ops.damped_update)):
            results[f"damped_update_{name}_{label}_us"] = timed(op, z, fz, valid, *flags, 0.8, 0.0, 10**6)
        for block, warps in itertools.product((1024, 2048, 4096), (2, 4, 8, 16)):  # the tiles, surveyed
            triton_solve.BLOCK, triton_solve.NUM_WARPS = block, warps
            results[f"damped_update_{name}_block{block}_warps{warps}_us"] = timed(
                triton_solve.damped_update, z, fz, valid, *flags, 0.8, 0.0, 10**6)
        triton_solve.BLOCK, triton_solve.NUM_WARPS = 2048, None


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


def steps(results: dict) -> None:
    """A layer's step after in_proj, its conv included: an iteration's (conv_step_read: one kernel) and a committing
    one's (conv_step in place: two), against the kernels they replace (the conv, then the read-only step or mamba_ssm's
    state update, then torch's window concatenation and masking), 130M: 16 rows of bfloat16, float32 and bfloat16
    states, every row valid in the commit."""
    rows, heads, headdim, dstate, k = 16, 24, 64, 128, 4
    channels = heads * headdim + 2 * dstate
    xbc = torch.randn(rows, channels, device="cuda", dtype=torch.bfloat16)
    conv = torch.randn(rows, channels, k - 1, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(channels, k, device="cuda", dtype=torch.bfloat16) * 0.5
    bias = torch.randn(channels, device="cuda", dtype=torch.bfloat16)
    dt, dt_bias = torch.randn(rows, heads, device="cuda"), torch.randn(heads, device="cuda")
    A, D = -torch.rand(heads, device="cuda"), torch.randn(heads, device="cuda")
    valid = torch.ones(rows, dtype=torch.bool, device="cuda")
    for state_dtype in (torch.float32, torch.bfloat16):
        name = str(state_dtype).removeprefix("torch.")
        state = torch.randn(rows, heads, headdim, dstate, device="cuda").to(state_dtype)
        read = (state, conv, xbc, weight, bias, dt, dt_bias, A, D)
        results[f"steps_iteration_fused_{name}_us"] = timed(triton_ssd.conv_step_read, *read)
        results[f"steps_iteration_apart_{name}_us"] = timed(torch_ops.conv_then_read, triton_ops, *read)
        commit = (*read, valid, True)
        results[f"steps_commit_fused_{name}_us"] = timed(triton_ssd.conv_step_commit, *read, valid)
        results[f"steps_commit_apart_{name}_us"] = timed(torch_ops.conv_then_step, triton_ops, *commit)


def norms(results: dict) -> None:
    from mamba_ssm.ops.triton.layer_norm import _layer_norm_fwd
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

    def mamba_add(x, residual, w, out_dtype):
        return _layer_norm_fwd(x, w, None, 1e-5, residual=residual, out_dtype=out_dtype,
                               residual_dtype=torch.float32, is_rms_norm=True)

    def mamba_gated(y, z, w, group, out_dtype):
        return rmsnorm_fn(y, w, None, z=z, eps=1e-5, group_size=group, norm_before_gate=False).to(out_dtype)

    shapes = [(rows, 128, 256) for rows in (40, 100, 640, 1600, 3200, 6400)] + [(16 * 2048, 768, 1536)]
    for (rows, width, inner), dtype in ((s, d) for s in shapes for d in (torch.float32, torch.bfloat16)):
        name = f"{rows}x{width}_{str(dtype)[6:]}"
        x, residual = torch.randn(rows, width, device="cuda").to(dtype), torch.randn(rows, width, device="cuda")
        w = torch.ones(width, device="cuda", dtype=dtype)
        results[f"add_rmsnorm_{name}_ours_us"] = timed(triton_norm.add_rmsnorm, x, residual, w, 1e-5, dtype)
        results[f"add_rmsnorm_{name}_mamba_ssm_us"] = timed(mamba_add, x, residual, w, dtype)
        y, wide = torch.randn(rows, inner, device="cuda"), torch.randn(rows, 2 * inner + 72, device="cuda").to(dtype)
        z, wg = wide[:, :inner], torch.ones(inner, device="cuda")
        results[f"gated_rmsnorm_{name}_ours_us"] = timed(triton_norm.gated_rmsnorm, y, z, wg, 1e-5, inner, dtype)
        results[f"gated_rmsnorm_{name}_mamba_ssm_us"] = timed(mamba_gated, y, z, wg, inner, dtype)


def conv_tile(x, state, weight, bias, out, tile) -> None:
    """The conv kernel launched with one tile shape (BLOCK_L, BLOCK_C, warps), not autotuned."""
    rows, length, channels = x.shape
    grid = (rows, triton.cdiv(length, tile[0]), triton.cdiv(channels, tile[1]))
    triton_conv._causal_conv_silu_kernel[grid](
        x, state, weight, bias, out, length, channels, 0, x.stride(0), x.stride(1), x.stride(2), state.stride(0),
        state.stride(1), state.stride(2), out.stride(0), out.stride(1), K=4, HAS_BIAS=True, HAS_INIT=True,
        BLOCK_L=tile[0], BLOCK_C=tile[1], num_warps=tile[2])


def conv(results: dict) -> None:
    tiles = [(c.kwargs["BLOCK_L"], c.kwargs["BLOCK_C"], c.num_warps) for c in triton_conv.CONFIGS] + \
        [(16, 256, 4), (8, 512, 4), (64, 64, 4), (8, 32, 1), (32, 32, 1)]
    for rows, length, channels in ((40, 16, 320), (100, 16, 320), (100, 32, 320), (100, 64, 320), (16, 2048, 1792)):
        wide = torch.randn(rows, length, channels + 584 - 320, device="cuda")
        x = wide[..., 256: 256 + channels]
        state, weight = torch.randn(rows, channels, 3, device="cuda"), torch.randn(channels, 4, device="cuda")
        bias, out = torch.randn(channels, device="cuda"), torch.empty(rows, length, channels, device="cuda")
        for tile in tiles:
            results[f"conv_{rows}x{length}x{channels}_tile{tile[0]}x{tile[1]}w{tile[2]}_us"] = timed(
                conv_tile, x, state, weight, bias, out, tile)
        results[f"conv_{rows}x{length}x{channels}_tuned_us"] = timed(triton_conv.causal_conv_silu, x, state, weight,
                                                                     bias)


def cublas(x, w, add):
    """A projection as mamba2.Mamba2 calls cuBLAS for it: the add folded into addmm."""
    return torch.nn.functional.linear(x, w) if add is None else torch.addmm(add, x, w.t())


def skinny_gemm(results: dict) -> None:
    """The 130M model's projections at 1 and 16 rows, bfloat16: cuBLAS (as mamba2.Mamba2 calls it) against
    skinny_linear at tiles() and over a sweep of tiles; microseconds, the weight's GB/s, relative error."""
    for name, inner, cols, with_add in (("in_proj", 768, 3352, True), ("out_proj", 1536, 768, False)):
        w = (torch.randn(cols, inner, device="cuda") / inner ** 0.5).to(torch.bfloat16)
        for rows in (1, 16):
            key = f"skinny_gemm_{name}_m{rows}"
            x = torch.randn(rows, inner, device="cuda", dtype=torch.bfloat16)
            add = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) if with_add else None
            ref = cublas(x, w, add)
            results[f"{key}_cublas_us"] = timed(cublas, x, w, add)
            results[f"{key}_ours_first_guess_us"] = timed(triton_gemm.skinny_linear, x, w, add)
            best = None
            for tile in itertools.product((16, 32, 64), (64, 128, 256), (2, 4), (3,)):
                tile = (max(16, triton.next_power_of_2(rows)), *tile)
                us = timed(triton_gemm.skinny_linear, x, w, add, tile)
                best = min(best or (us, tile), (us, tile))
            results[f"{key}_ours_best_us"], results[f"{key}_ours_best_tile"] = best[0], list(best[1])
            results[f"{key}_cublas_over_ours_best"] = results[f"{key}_cublas_us"] / best[0]
            results[f"{key}_ours_best_weight_gb_s"] = w.numel() * 2 / best[0] / 1e3
            got = triton_gemm.skinny_linear(x, w, add, best[1])
            results[f"{key}_rel_err_vs_cublas"] = float((got.float() - ref.float()).norm() / ref.float().norm())


def cold(results: dict) -> None:
    """skinny_gemm's products, conv_step_read and conv_step_commit with each call on the next of 24 layers' operands
    (bfloat16)."""
    layers, rows = 24, 16
    for name, inner, cols, with_add in (("in_proj", 768, 3352, True), ("out_proj", 1536, 768, False)):
        operands = [((torch.randn(rows, inner, device="cuda") / 4).to(torch.bfloat16),
                     (torch.randn(cols, inner, device="cuda") / inner ** 0.5).to(torch.bfloat16),
                     torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) if with_add else None)
                    for _ in range(layers)]
        results[f"cold_{name}_m{rows}_cublas_us"] = timed_cold(cublas, operands)
        results[f"warm_{name}_m{rows}_cublas_us"] = timed(cublas, *operands[0])
        for tile in ((16, 16, 256, 4, 3), (16, 32, 128, 4, 3), (16, 32, 256, 4, 3), (16, 64, 128, 4, 3)):
            def ours(x, w, add, tile=tile):
                return triton_gemm.skinny_linear(x, w, add, tile)
            label = "_".join(map(str, tile))
            results[f"cold_{name}_m{rows}_ours_{label}_us"] = timed_cold(ours, operands)
            results[f"warm_{name}_m{rows}_ours_{label}_us"] = timed(ours, *operands[0])
    for state_dtype in (torch.float32, torch.bfloat16):
        survey_step_tiles(results, str(state_dtype).removeprefix("torch."), step_operands(layers, rows, state_dtype))


def step_operands(layers: int, rows: int, state_dtype: torch.dtype) -> list[tuple]:
    """conv_step_commit's arguments at the 130M shape (float32 dt, A, D; a bfloat16 token), one tuple a layer;
    conv_step_read takes the same less the last (valid)."""
    heads, headdim, dstate, k = 24, 64, 128, 4
    channels = heads * headdim + 2 * dstate
    return [(torch.randn(rows, heads, headdim, dstate, device="cuda").to(state_dtype),
             torch.randn(rows, channels, k - 1, device="cuda", dtype=torch.bfloat16),
             torch.randn(rows, channels, device="cuda", dtype=torch.bfloat16),
             torch.randn(channels, k, device="cuda", dtype=torch.bfloat16) * 0.5,
             torch.randn(channels, device="cuda", dtype=torch.bfloat16),
             torch.randn(rows, heads, device="cuda"), torch.randn(heads, device="cuda"),
             -torch.rand(heads, device="cuda"), torch.randn(heads, device="cuda"), None) for _ in range(layers)]


def survey_step_tiles(results: dict, name: str, operands: list[tuple]) -> None:
    """conv_step_read and conv_step_commit (in place, its window shift included) over the survey of their tile,
    each call on the next layer's operands; the default tile warm beside; the best tile's state GB/s (read once,
    or read and written)."""
    read_operands = [args[:-1] for args in operands]
    state_bytes = operands[0][0].numel() * operands[0][0].element_size()
    for kernel, fn, args, passes in (("conv_step_read", triton_ssd.conv_step_read, read_operands, 1),
                                     ("conv_step_commit", triton_ssd.conv_step_commit, operands, 2)):
        for tile in itertools.product((16, 32, 64), (1, 2, 4, 8)):
            with triton_ssd.step_tiles(**{kernel.removeprefix("conv_step_"): tile}):
                results[f"cold_{kernel}_{name}_p{tile[0]}_warps{tile[1]}_us"] = timed_cold(fn, args)
        results[f"warm_{kernel}_{name}_default_us"] = timed(fn, *args[0])
        best = min(v for key, v in results.items() if key.startswith(f"cold_{kernel}_{name}_p"))
        results[f"cold_{kernel}_{name}_best_state_gb_s"] = passes * state_bytes / best / 1e3


def chain(results: dict) -> None:
    """One f evaluation of the 130M implicit model (24 layers, bfloat16, 16 rows, random weights) in a CUDA graph, an
    iteration and a commit in place, float32 and bfloat16 states: the kernels apart (triton_ops, the default)
    against triton_chain's, in interleaved rounds (the best of 3)."""
    import contextlib

    from implicit_ssm_eval.model_adapters.backends import triton_chain

    model = model_130m()
    z = torch.randn(16, 768, device="cuda")
    u = model.inject(torch.randint(0, model.cfg.vocab_size, (16,), device="cuda"))
    alive = torch.ones(16, dtype=torch.bool, device="cuda")
    variants = {"apart": contextlib.nullcontext, "chained": lambda: triton_chain.chained(model)}
    for state_dtype in (torch.float32, torch.bfloat16):
        model.set_state_dtype(state_dtype)
        state, name = model.empty_state(16), str(state_dtype).removeprefix("torch.")
        for _ in range(3):
            for variant, patch in variants.items():
                with patch():
                    for what, fn in (("iteration", lambda s=state: model.f_step(z, u, s, False, triton_ops)),
                                     ("commit", lambda s=state: model.f_step(z, u, s, True, triton_ops,
                                                                                 in_place=True, valid=alive))):
                        key = f"chain_{name}_{what}_{variant}_us"
                        results[key] = min(results.get(key, float("inf")), timed(fn, calls=20))
                        print(f"{key} {results[key]:.1f}", flush=True)  # a call cut short keeps what it measured
        for what in ("iteration", "commit"):
            results[f"chain_{name}_{what}_speed"] = (results[f"chain_{name}_{what}_apart_us"]
                                                     / results[f"chain_{name}_{what}_chained_us"])
    model.set_state_dtype(None)


def model_130m(max_iter: int = 4):
    """The 130M implicit configuration, random weights, bfloat16, on the GPU."""
    from implicit_ssm_eval.model_adapters.config import ModelConfig
    from implicit_ssm_eval.model_adapters.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(kind="implicit", vocab_size=50277, pad_vocab_size_multiple=16, d_model=768, n_layer=24,
                      d_state=128, expand=2, headdim=64, ngroups=1, budget={"max_iter": max_iter})
    return build_model(cfg).to("cuda", torch.bfloat16).eval()


def in_parts(fn, parts: list[tuple], streams: list) -> None:
    """fn(*part) for each part on its own stream, forked from and joined to the current one (capturable)."""
    main = torch.cuda.current_stream()
    for stream in streams:
        stream.wait_stream(main)
    for part, stream in zip(parts, streams):
        with torch.cuda.stream(stream):
            fn(*part)
    for stream in streams:
        main.wait_stream(stream)


def streams(results: dict) -> None:
    """One f evaluation of the 130M implicit model (16 rows, 24 layers) in a CUDA graph, an iteration and a commit in
    place, its rows whole or in 2 or 4 parts on their own streams; float32 and bfloat16 states; the best of 3
    interleaved rounds."""
    model = model_130m()
    rows = 16
    z = torch.randn(rows, 768, device="cuda")
    u = model.inject(torch.randint(0, model.cfg.vocab_size, (rows,), device="cuda"))
    for state_dtype in (torch.float32, torch.bfloat16):
        model.set_state_dtype(state_dtype)
        name = str(state_dtype).removeprefix("torch.")
        runs = {}
        for n in (1, 2, 4):
            size = rows // n
            parts = [(z[i:i + size], u[i:i + size], model.empty_state(size),
                      torch.ones(size, dtype=torch.bool, device="cuda")) for i in range(0, rows, size)]
            side = [torch.cuda.Stream() for _ in parts]
            runs[f"iteration_parts{n}"] = lambda p=parts, s=side: in_parts(
                lambda zp, up, sp, vp: model.f_step(zp, up, sp, False, triton_ops), p, s)
            runs[f"commit_parts{n}"] = lambda p=parts, s=side: in_parts(
                lambda zp, up, sp, vp: model.f_step(zp, up, sp, True, triton_ops, in_place=True, valid=vp), p, s)
        for _ in range(3):
            for what, fn in runs.items():
                key = f"streams_{name}_{what}_us"
                results[key] = min(results.get(key, float("inf")), timed(fn, calls=20))
                print(f"{key} {results[key]:.1f}", flush=True)  # a call cut short keeps what it measured
        for what in ("iteration", "commit"):
            for n in (2, 4):
                results[f"streams_{name}_{what}_parts{n}_speed"] = (results[f"streams_{name}_{what}_parts1_us"]
                                                                  / results[f"streams_{name}_{what}_parts{n}_us"])
    model.set_state_dtype(None)


SECTIONS = {f.__name__: f for f in (one_chunk, conv_scan, damped_update, step_read, steps, norms, conv, skinny_gemm,
                                    cold, chain, streams)}


def ranked_tiles(results: dict, kernel: str, per_dtype: int = 1) -> list[str]:
    """The cold survey's fastest tiles of conv_step_{kernel} (read or commit), `per_dtype` of each state dtype, as
    gpu_bench.py's --read-tiles and --commit-tiles take them ('P:WARPS')."""
    picked: list[str] = []
    for dtype in ("float32", "bfloat16"):
        pattern = re.compile(rf"cold_conv_step_{kernel}_{dtype}_p(\d+)_warps(\d+)_us")
        ranked = sorted((v, f"{m[1]}:{m[2]}") for key, v in results.items() if (m := pattern.fullmatch(key)))
        picked += [tile for _, tile in ranked[:per_dtype] if tile not in picked]
    return picked


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--rank-tiles", nargs=2, metavar=("JSON", "KERNEL"), help="print the fastest tiles of "
                   "conv_step_KERNEL (read or commit) in a cold section's results (one a state dtype, as "
                   "P:WARPS,...) and exit")
    args = p.parse_args()
    if args.rank_tiles:
        path, kernel = args.rank_tiles
        if kernel not in ("read", "commit"):
            p.error(f"--rank-tiles: the kernel is read or commit, got {kernel!r}")
        print(",".join(ranked_tiles(json.loads(Path(path).read_text()), kernel)))
        return
    if args.out is None:
        p.error("--out is required")
    results = {"device": torch.cuda.get_device_name()}
    with torch.inference_mode():
        for section in (SECTIONS[name] for name in args.sections):
            try:
                section(results)
            except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' figures
                results[f"{section.__name__}_error"] = f"{type(exc).__name__}: {exc}"
            args.out.write_text(json.dumps(results, indent=2))
    for key, value in results.items():
        print(f"{key:44s} {value:.2f}" if isinstance(value, float) else f"{key:44s} {value}")


if __name__ == "__main__":
    main()
