"""Row-blocked Triton kernels for the RMSNorms of a Mamba2 stack: the residual add fused with the next norm, and the
gated, grouped norm of the mixer.

mamba_ssm's layer-norm kernels run one program per row. That suits wide rows (d_model 768 and up), but the bundled
state-tracking models have rows of 128 and 256 values, and a block of the blockwise reading has thousands of them
(100 sequences x 32 tokens): one program per 128 values is scheduling-bound, and its autotuned warp count is chosen
once per width for whatever row count came first (bfloat16, 1,600 rows: 4.5-8 us, where these kernels take 1.9). Here
one program takes BLOCK_M rows of one group, BLOCK_M growing with the row count (_tiles), and nothing is autotuned
(the same tiles in every process).
torch_ops' add_rmsnorm and gated_rmsnorm are the twins and the definition; everything is computed in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

TILE = 4096  # values a program holds at most: BLOCK_M rows of a (power-of-two padded) group
SPREAD = 256  # rows are grouped into programs only past this many (about two programs per multiprocessor)
WIDEST = 512  # wider groups (the 130M model's 768 and 1,536) keep mamba_ssm's kernels (see triton_ops)...
WIDEST_NARROWING = 4096  # ...unless the norm narrows its dtype (a row of up to 4,096 values, one program, 8 warps)


@triton.jit
def _rmsnorm_kernel(X, R, Z, ZADD, W, Y, RES, M, N, sxm, srm, szm, szam, sym, sresm, eps,
                    HAS_X: tl.constexpr, HAS_Z: tl.constexpr, HAS_ZADD: tl.constexpr, STORE_RES: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Y = RMSNorm(h) * W per group of N columns (program axis 1), h = R + X (add: X, R given; the sum stored to RES)
    or R * SiLU(Z) (gated: R and Z given; with ZADD, Z + ZADD rounded to Z's dtype: the injection a projection would
    have added to its output)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * N + tl.arange(0, BLOCK_N)
    inside = (rows < M)[:, None] & (tl.arange(0, BLOCK_N) < N)[None, :]
    h = tl.load(R + rows[:, None] * srm + cols[None, :], mask=inside, other=0.0).to(tl.float32)
    if HAS_X:
        h += tl.load(X + rows[:, None] * sxm + cols[None, :], mask=inside, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(Z + rows[:, None] * szm + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        if HAS_ZADD:
            z += tl.load(ZADD + rows[:, None] * szam + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            z = z.to(Z.dtype.element_ty).to(tl.float32)
        h = h * z * tl.sigmoid(z)
    if STORE_RES:
        tl.store(RES + rows[:, None] * sresm + cols[None, :], h, mask=inside)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=1) / N + eps)
    w = tl.load(W + cols, mask=tl.arange(0, BLOCK_N) < N, other=0.0).to(tl.float32)
    y = h * rstd[:, None] * w[None, :]
    tl.store(Y + rows[:, None] * sym + cols[None, :], y.to(Y.dtype.element_ty), mask=inside)


def takes(width: int) -> bool:
    """Whether these kernels take groups of `width` values (narrow ones; wider ones keep mamba_ssm's)."""
    return width <= WIDEST


def takes_narrowing(width: int) -> bool:
    """Whether these kernels take a gated norm of `width`-value groups that writes a narrower dtype than it reads."""
    return width <= WIDEST_NARROWING


def _rows(t: Tensor) -> Tensor:
    """t as (M, width) with unit column stride, a view where the leading dimensions merge (a slice of the in_proj
    output does), else a copy."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _tiles(rows: int, group: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, warps): rows per program grow with the row count, so that a step's few rows still spread
    over one program each (latency: as many programs as rows, as mamba_ssm's kernels have) and a block's thousands
    share about SPREAD programs of up to TILE values; a warp per 512 values."""
    block_n = triton.next_power_of_2(group)
    block_m = min(max(1, TILE // block_n), triton.next_power_of_2(triton.cdiv(rows, SPREAD)))
    return block_m, block_n, min(8, max(1, block_m * block_n // 512))


def _launch(x, r, z, weight, y, res, group: int, eps: float, z_added=None) -> None:
    rows = r.shape[0]
    if rows == 0:
        return
    block_m, block_n, warps = _tiles(rows, group)
    placeholder = r
    _rmsnorm_kernel[(triton.cdiv(rows, block_m), r.shape[1] // group)](
        x if x is not None else placeholder, r, z if z is not None else placeholder,
        z_added if z_added is not None else placeholder, weight, y, res if res is not None else placeholder, rows,
        group, x.stride(0) if x is not None else 0, r.stride(0), z.stride(0) if z is not None else 0,
        z_added.stride(0) if z_added is not None else 0, y.stride(0), res.stride(0) if res is not None else 0, eps,
        HAS_X=x is not None, HAS_Z=z is not None, HAS_ZADD=z_added is not None, STORE_RES=res is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)


def add_rmsnorm(x: Tensor | None, residual: Tensor, weight: Tensor, eps: float,
                out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """residual + x (x None: nothing added) and its RMSNorm in out_dtype; the new residual keeps residual's dtype."""
    shape, width = residual.shape, residual.shape[-1]
    r = _rows(residual)
    xs = _rows(x) if x is not None else None
    y = torch.empty(r.shape, dtype=out_dtype, device=r.device)
    new = torch.empty(r.shape, dtype=residual.dtype, device=r.device) if x is not None else None
    _launch(xs, r, None, weight, y, new, width, eps)
    return y.view(shape), (residual if new is None else new.view(shape))


def gated_rmsnorm(x: Tensor, z: Tensor, weight: Tensor, eps: float, group_size: int,
                  out_dtype: torch.dtype | None = None, z_added: Tensor | None = None) -> Tensor:
    """RMSNorm(x * SiLU(z)) per group of group_size channels, in out_dtype (default: float32); z_added: z + z_added
    (rounded to z's dtype) in its place."""
    xs, zs = _rows(x), _rows(z)
    y = torch.empty(xs.shape, dtype=out_dtype or torch.float32, device=xs.device)
    _launch(None, xs, zs, weight, y, None, group_size, eps, _rows(z_added) if z_added is not None else None)
    return y.view(x.shape)
