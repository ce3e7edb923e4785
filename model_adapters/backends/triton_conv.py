"""A Triton kernel for the causal depthwise convolution + SiLU of Mamba2, in the layout the projection produces.

Its plain twin is torch_ops.causal_conv_silu (F.conv1d over the state window). Here the input stays (B, L, C) with
channels contiguous (a slice of the in_proj output, any row stride), the first k-1 positions read the previous
state, the sum, the bias and the SiLU are computed in float32, and the output is written once, (B, L, C)
contiguous: no concatenated window, no transposed copies, and x, B and C come out with unit stride for the scan.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _causal_conv_silu_kernel(X, INIT, W, BIAS, OUT, L, C, sxb, sxl, sxc, sib, sic, sik, sob, sol,
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


def causal_conv_silu(x: Tensor, state: Tensor | None, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (B, L, C) with x.stride(-1) == 1, state (B, C, k-1) or None (zeros), weight (C, k) -> SiLU(conv) (B, L, C)."""
    batch, length, channels = x.shape
    k = weight.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    weight = weight.contiguous()
    out = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device)
    block_l, block_c = min(64, triton.next_power_of_2(length)), 128
    grid = (batch, triton.cdiv(length, block_l), triton.cdiv(channels, block_c))
    init = state if state is not None else x  # a placeholder pointer when there is no state
    _causal_conv_silu_kernel[grid](
        x, init, weight, bias if bias is not None else weight, out, length, channels,
        x.stride(0), x.stride(1), x.stride(2), init.stride(0), init.stride(1) if state is not None else 0,
        init.stride(2) if state is not None else 0, out.stride(0), out.stride(1),
        K=k, HAS_BIAS=bias is not None, HAS_INIT=state is not None, BLOCK_L=block_l, BLOCK_C=block_c)
    return out
