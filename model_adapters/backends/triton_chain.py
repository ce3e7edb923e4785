"""A one-token evaluation of the stack in three launches a layer, where the kernels apart take six: the sequential
reading's iterations, and with a fourth (the conv windows' shift) its commits and decoding's steps.

One f evaluation of the 130M model at batch 16 is 24 layers of small kernels, each near its latency floor: the
residual add with the next norm, the injection's copy and in_proj (`addmm`), the conv and state read
(conv_step_read), the gated norm, out_proj. A norm's statistic is a sum over a whole row, which no single program of
a projection sees, so here each kernel leaves the sums of squares of what it wrote, one a program, and the next
kernel adds them up (in a fixed order: the same bits every run) before it normalises what it reads:

    in_proj:   zxbcdt = bf16(residual * rstd * w_norm) @ W_in^T (+ inject)        rstd from the residual's sums
    read:      g = (conv_step_read's y) * SiLU(z), and sum(g^2) a program        (triton_ssd.conv_step_read_gated;
                                                                                  conv_step_commit_gated commits)
    out_proj:  residual += bf16(bf16(g * rstd_g * w_gate) @ W_out^T)              and sum(residual^2) a program

Every rounding is the one the kernels apart make (the normalised rows and the projections' outputs in the model
dtype, the residual in float32); the sums of squares are added in another order, so a result may differ from theirs
in its last bits, and the products are ours (triton_gemm's tiling), not cuBLAS's. tests/triton_chain_check.py holds
it to the torch twin.

A measurement switch, not the default (`chained(model)`, as triton_gemm.routed), and **measured not to be worth it**
(H100, `5feceec`; BENCHMARKS.md, item 2, "Three launches a layer"): an evaluation of the 130M model in a CUDA graph
ran at 0.85-0.89x the speed of the kernels apart. The launches fell 145 -> 75, but every
program of a projection reads and normalises all of its rows from the L2 (out_proj: 96 KB each, 48 programs), and
the 48 projections took 461 us against 366 us for cuBLAS's GEMMs, the norms and the copy they replace.
`bench/kernels.py --sections chain` and `bench/gpu_bench.py --sections chain` time it against the default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import triton_norm, triton_ssd
from .triton_gemm import MOST_ROWS, WIDEN, tiles


@triton.jit
def _normed_linear_kernel(X, PART, NW, W, ADD, RES, OUT, NEWPART, M, N, K, n_part, group, parts_per_group,
                          sxm, spm, swn, sam, srm, som, snm, eps,
                          HAS_ADD: tl.constexpr, RESIDUAL: tl.constexpr, IEEE: tl.constexpr, K_STEPS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr):
    """OUT = RMSNorm(X) @ W^T (+ ADD), the norm per group of `group` columns, its mean square summed from PART
    (parts_per_group a group, in order); with RESIDUAL, OUT = RES + OUT rounded to W's dtype, in float32, and this
    program's sum of OUT^2 to NEWPART."""
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_m, in_n = rows < M, cols < N
    q = tl.arange(0, BLOCK_Q)
    parts = tl.load(PART + rows[:, None] * spm + q[None, :], mask=in_m[:, None] & (q < n_part)[None, :], other=0.0)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(K_STEPS):  # a chunk lies in one group (BLOCK_K divides the group, or there is one)
        k = step * BLOCK_K + ks
        in_k = k < K
        first = (step * BLOCK_K) // group * parts_per_group
        mine = (q >= first) & (q < first + parts_per_group)
        rstd = 1.0 / tl.sqrt(tl.sum(tl.where(mine[None, :], parts, 0.0), axis=1) / group + eps)
        x = tl.load(X + rows[:, None] * sxm + k[None, :], mask=in_m[:, None] & in_k[None, :], other=0.0)
        nw = tl.load(NW + k, mask=in_k, other=0.0).to(tl.float32)
        a = (x.to(tl.float32) * rstd[:, None] * nw[None, :]).to(W.dtype.element_ty)
        w = tl.load(W + cols[:, None] * swn + k[None, :], mask=in_n[:, None] & in_k[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(w), acc)
    inside = in_m[:, None] & in_n[None, :]
    if HAS_ADD:
        acc += tl.load(ADD + rows[:, None] * sam + cols[None, :], mask=inside, other=0.0).to(tl.float32)
    out = acc.to(W.dtype.element_ty)  # the projection's output, in the model dtype
    if RESIDUAL:
        new = tl.load(RES + rows[:, None] * srm + cols[None, :], mask=inside, other=0.0) + out.to(tl.float32)
        tl.store(OUT + rows[:, None] * som + cols[None, :], new, mask=inside)
        tl.store(NEWPART + rows * snm + tl.program_id(0), tl.sum(tl.where(inside, new * new, 0.0), axis=1),
                 mask=in_m)
    else:
        tl.store(OUT + rows[:, None] * som + cols[None, :], out, mask=inside)


def _block_k(group: int, width: int) -> int:
    """Columns a chunk: a power of two from 16 to 128 that divides the group (so a chunk has one norm), or any when
    the row is one group; 0 when there is none."""
    if group == width:
        return min(128, max(16, triton.next_power_of_2(width)))
    return next((b for b in (128, 64, 32, 16) if group % b == 0), 0)


def normed_linear(x: Tensor, part: Tensor, norm_weight: Tensor, eps: float, weight: Tensor, group: int,
                  add: Tensor | None = None, residual: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """RMSNorm(x) per group of `group` columns (mean squares from `part` (M, Q): sums of squares, Q / groups a
    group, in order), rounded to weight's dtype, @ weight.T, + add -> (out in weight's dtype, None); with residual
    (M, N) float32: (residual + out, its sums of squares (M, column tiles)). x (M, K) with M <= MOST_ROWS."""
    rows, width = x.shape
    cols = weight.shape[0]
    block_m, block_n, _, warps, stages = tiles(rows, cols)
    block_k = _block_k(group, width)
    grid = (triton.cdiv(cols, block_n), triton.cdiv(rows, block_m))
    if residual is not None:
        out = torch.empty(rows, cols, dtype=torch.float32, device=x.device)
        new_part = torch.empty(rows, grid[0], dtype=torch.float32, device=x.device)
    else:
        out, new_part = torch.empty(rows, cols, dtype=weight.dtype, device=x.device), None
    n_part = part.shape[1]
    _normed_linear_kernel[grid](
        x, part, norm_weight, weight, add if add is not None else out, residual if residual is not None else out,
        out, new_part if new_part is not None else part, rows, cols, width, n_part, group,
        n_part // (width // group), x.stride(0), part.stride(0), weight.stride(0),
        add.stride(0) if add is not None else 0, residual.stride(0) if residual is not None else 0, out.stride(0),
        new_part.stride(0) if new_part is not None else 0, eps,
        HAS_ADD=add is not None, RESIDUAL=residual is not None, IEEE=WIDEN or weight.dtype == torch.float32,
        K_STEPS=triton.cdiv(width, block_k), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        BLOCK_Q=max(2, triton.next_power_of_2(n_part)), num_warps=warps, num_stages=stages)
    return out, new_part


def takes(model: Any, h: Tensor, inject: Tensor | None, state: list, commit: bool) -> bool:
    """Whether the chain takes this evaluation: one token for at most MOST_ROWS rows, float32 compute, projections
    without bias in one dtype (the injection's too) with unit inner strides, a gated norm whose groups split into
    chunks; a commit only of states it can advance in place (triton_ssd.commits_in_place)."""
    cfg = model.cfg
    mixer = model.blocks[0].mixer
    w_in, w_out = mixer.in_proj.weight, mixer.out_proj.weight
    d_inner = cfg.d_inner
    return (h.dim() == 2 and h.shape[0] <= MOST_ROWS and cfg.rmsnorm
            and mixer.in_proj.bias is None and mixer.out_proj.bias is None and mixer.cd == torch.float32
            and w_in.dtype == w_out.dtype and w_in.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and (inject is None or (inject.dtype == w_in.dtype and inject.stride(-1) == 1))
            and _block_k(d_inner // cfg.ngroups, d_inner) > 0
            and (not commit or all(triton_ssd.commits_in_place(s.ssm, s.conv) for s in state)))


def evaluate(model: Any, h: Tensor, inject: Tensor | None, state: list, commit: bool = False,
             valid: Tensor | None = None) -> tuple[Tensor, list | None]:
    """model.stack(h, inject, state, valid, step=True, in_place=True, commit=commit), three launches a layer (four
    when it commits: the conv windows shift in a launch of their own). A commit advances the states in place for
    the rows in valid and returns them; an iteration returns None."""
    cfg = model.cfg
    residual = h.float().contiguous()
    part = (residual * residual).sum(-1, keepdim=True)
    for layer, s in zip(model.blocks, state, strict=True):
        m = layer.mixer
        zxbcdt = normed_linear(residual, part, layer.norm.weight, layer.norm.eps, m.in_proj.weight, cfg.d_model,
                               add=inject)[0]
        z, xbc, dt = m._split(zxbcdt)
        d = m._derived()
        args = (m.conv1d.weight[:, 0], m.conv1d.bias, dt, d.dt_bias, d.A, d.D)
        g, gpart = (triton_ssd.conv_step_commit_gated(s.ssm, s.conv, xbc, z, *args, valid) if commit
                    else triton_ssd.conv_step_read_gated(s.ssm, s.conv, xbc, z, *args))
        residual, new_part = normed_linear(g.flatten(-2), gpart, m.norm.weight, cfg.mixer_norm_eps,
                                           m.out_proj.weight, cfg.d_inner // cfg.ngroups, residual=residual)
        part = cast(Tensor, new_part)  # set when a residual is given
    final = triton_norm.add_rmsnorm(None, residual, model.norm_f.weight, model.norm_f.eps, model.cd)[0]
    return final, (list(state) if commit else None)


@contextlib.contextmanager
def chained(model: Any) -> Iterator[None]:
    """Within the block, every one-token evaluation of `model` that evaluate() takes (an iteration, or a commit in
    place: the sequential reading's and decoding's) runs through it; everything else as before. A measurement
    switch (an instance attribute, removed on exit)."""
    default = model.stack

    def stack(h, inject=None, state=None, valid=None, step=False, in_place=False, commit=True, ops=None):
        if step and state is not None and (in_place or not commit) and takes(model, h, inject, state, commit):
            return evaluate(model, h, inject, state, commit, valid)
        return default(h, inject, state, valid, step, in_place, commit, **({} if ops is None else {"ops": ops}))

    model.stack = stack
    try:
        yield
    finally:
        del model.stack
