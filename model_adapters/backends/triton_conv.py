"""A Triton kernel for the causal depthwise convolution + SiLU of Mamba2, in the layout the projection produces.

Its plain twin is torch_ops.causal_conv_silu (F.conv1d over the state window). Here the input stays (B, L, C) with
channels contiguous (a slice of the in_proj output, any row stride), the first k-1 positions read the previous
state, the sum, the bias and the SiLU are computed in float32, and the output is written once, (B, L, C)
contiguous: no concatenated window, no transposed copies, and x, B and C come out with unit stride for the scan.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

# Tile shapes tried on first use per channel count and length class (a block of 2..64 tokens, or a longer sequence):
# the best is device- and size-dependent, and the first call happens during warm-up, before any CUDA graph is
# captured. Small tiles: on an H200 (bench/kernels.py, conv section) a 16 x 32 tile with one warp took 4.1 us for 100
# blocks of 16 tokens, where the large tiles tried before (the best of them tuned once per channel count) took 8.0, and
# 273 us for the 130M model's 16 x 2,048 tokens against 315. A one-token step (decoding, the sequential reading) has
# tiles of its own, one position high: the others would compute and mask 8 to 32 positions for its one.
CONFIGS = [triton.Config({"BLOCK_L": bl, "BLOCK_C": bc}, num_warps=w)
           for bl, bc, w in ((16, 32, 1), (16, 64, 2), (32, 64, 4), (16, 128, 4), (32, 128, 4), (8, 128, 2))]
STEP_CONFIGS = [triton.Config({"BLOCK_L": 1, "BLOCK_C": bc}, num_warps=w)
                for bc, w in ((128, 4), (256, 4), (512, 4), (1024, 8))]


@triton.jit
def _causal_conv_silu_kernel(X, INIT, W, BIAS, OUT, L, C, L_CLASS, sxb, sxl, sxc, sib, sic, sik, sob, sol,
                             K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
                             BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    b, pl, pc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_l = pl * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_c = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    in_c = offs_c < C
    acc = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    for j in tl.static_range(K):
        w = tl.load(W + offs_c * K + j, mask=in_c, other=0.0).to(tl.float32)
        src = offs_l + j - (K - 1)  # the input position tap j reads
        take = ((src >= 0) & (src < L))[:, None] & in_c[None, :]
        x = tl.load(X + b * sxb + src[:, None] * sxl + offs_c[None, :] * sxc, mask=take, other=0.0).to(tl.float32)
        if HAS_INIT:  # positions before the sequence read the state: INIT[b, c, K - 1 + src]
            early = ((src < 0) & (src >= 1 - K))[:, None] & in_c[None, :]
            x += tl.load(INIT + b * sib + offs_c[None, :] * sic + (src[:, None] + K - 1) * sik, mask=early,
                         other=0.0).to(tl.float32)
        acc += x * w[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_c, mask=in_c, other=0.0).to(tl.float32)[None, :]
    acc = acc * tl.sigmoid(acc)
    keep = (offs_l < L)[:, None] & in_c[None, :]
    tl.store(OUT + b * sob + offs_l[:, None] * sol + offs_c[None, :], acc.to(OUT.dtype.element_ty), mask=keep)


# The interpreter (TRITON_INTERPRET=1, the CPU tests) cannot time configurations: it runs one fixed tile of each
# shape (a step's one position high, as on the GPU).
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_tuned = None if _INTERPRETED else triton.autotune(configs=CONFIGS, key=["C", "L_CLASS"])(_causal_conv_silu_kernel)
_tuned_step = None if _INTERPRETED else triton.autotune(configs=STEP_CONFIGS, key=["C"])(_causal_conv_silu_kernel)


def causal_conv_silu(x: Tensor, state: Tensor | None, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (B, L, C) with x.stride(-1) == 1, state (B, C, k-1) or None (zeros), weight (C, k) -> SiLU(conv) (B, L, C)."""
    batch, length, channels = x.shape
    k = weight.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    weight = weight.contiguous()
    out = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device)

    def grid(meta):
        return batch, triton.cdiv(length, meta["BLOCK_L"]), triton.cdiv(channels, meta["BLOCK_C"])

    init = state if state is not None else x  # a placeholder pointer when there is no state
    length_class = min(triton.next_power_of_2(length), 256)  # blocks of 2..64 tokens, then every longer sequence
    args = (x, init, weight, bias if bias is not None else weight, out, length, channels, length_class,
            x.stride(0), x.stride(1), x.stride(2), init.stride(0), init.stride(1) if state is not None else 0,
            init.stride(2) if state is not None else 0, out.stride(0), out.stride(1))
    flags = dict(K=k, HAS_BIAS=bias is not None, HAS_INIT=state is not None)
    tuned = _tuned_step if length == 1 else _tuned
    if tuned is None:
        _causal_conv_silu_kernel[grid](*args, **flags, BLOCK_L=1 if length == 1 else 16, BLOCK_C=128)
    else:
        tuned[grid](*args, **flags)
    return out
