"""A matrix product for few rows: out = x @ weight.T (+ add), for the projections of a one-token evaluation.

At batch 16 an f evaluation of the 130M model runs 48 products of 16 rows (in_proj 768 -> 3,352 with the injection
added, out_proj 1,536 -> 768). Their weights are 5.1 and 2.4 MB in bfloat16, which an H200 reads in about 1.1 and
0.5 us, yet cuBLAS took about 4.5 us each (BENCHMARKS.md, "The implicit-readings issue on a freshly started H200"),
and `addmm` first copies the injection into its output (another 23 us an evaluation). Here one program computes
BLOCK_N output columns for BLOCK_M rows over the whole of K, so the grid spreads the weight's columns over the
multiprocessors, and the add is read in the epilogue (no copy).

Not the models' default, and measured not to be worth it (H100, `1638ac3`; BENCHMARKS.md, item 2): alone, at the
130M shapes, it is 1.2-1.5x as fast as cuBLAS (`bench/kernels.py --sections skinny_gemm`), but with the model's
projections sent through it (`routed(model)`, a measurement switch) the sequential reading gained 1% and decoding
lost 1.5-4%. With each call on the next of 24 layers' weights, past the L2 as the model streams them (`--sections
cold`, H100, `e3c74a9`), its lead shrinks to 1.30x (in_proj) and 1.08x (out_proj): that explains part of the loss,
not all. It stays for the next attempt to start from, with its check.
torch's `addmm` in float32 is the definition (tests/triton_gemm_check.py): float32 inputs
multiply in IEEE float32, bfloat16 ones on the tensor cores, both accumulate in float32 and round once, after the add.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from torch import Tensor

MOST_ROWS = 64  # more rows than this are a forward's product, which cuBLAS tiles well
# Triton 3.6's interpreter misreads bfloat16 operands of tl.dot (errors of 1e10), so under it (the CPU tests) the
# operands are widened first: the CPU check holds the tiling, masks and add; the CUDA check the tensor-core product.
WIDEN = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _skinny_kernel(X, W, ADD, OUT, M, N, K, sxm, swn, sam, som,
                   HAS_ADD: tl.constexpr, IEEE: tl.constexpr, K_STEPS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(K_STEPS):  # a constexpr count: Triton's interpreter (the CPU tests) loops only over those
        k0 = step * BLOCK_K
        inside_k = (k0 + ks) < K
        x = tl.load(X + rows[:, None] * sxm + (k0 + ks)[None, :], mask=(rows < M)[:, None] & inside_k[None, :],
                    other=0.0)
        w = tl.load(W + cols[:, None] * swn + (k0 + ks)[None, :], mask=(cols < N)[:, None] & inside_k[None, :],
                    other=0.0)
        if IEEE:  # float32 inputs (or any, widened for the interpreter): the product in IEEE float32
            acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    inside = (rows < M)[:, None] & (cols < N)[None, :]
    if HAS_ADD:
        acc += tl.load(ADD + rows[:, None] * sam + cols[None, :], mask=inside, other=0.0).to(tl.float32)
    tl.store(OUT + rows[:, None] * som + cols[None, :], acc.to(OUT.dtype.element_ty), mask=inside)


def takes(x: Tensor, weight: Tensor) -> bool:
    """Whether this kernel takes the product: few rows, unit inner strides, one dtype."""
    return (x.dim() == 2 and x.shape[0] <= MOST_ROWS and x.stride(-1) == 1 and weight.stride(-1) == 1
            and x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16, torch.float16))


def tiles(rows: int, cols: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): rows padded to tl.dot's least side of 16; columns in
    blocks of 32 where that gives at least 64 programs, else 16. A first guess, to be replaced by what
    `bench/kernels.py --sections skinny_gemm` finds fastest."""
    block_m = max(16, triton.next_power_of_2(rows))
    block_n = 32 if triton.cdiv(cols, 32) >= 64 else 16
    return block_m, block_n, 128, 4, 3


def skinny_linear(x: Tensor, weight: Tensor, add: Tensor | None = None,
                  tile: tuple[int, int, int, int, int] | None = None) -> Tensor:
    """x (M, K) @ weight (N, K).T + add (M, N), in x's dtype; M <= MOST_ROWS (takes())."""
    if not takes(x, weight):
        raise ValueError(f"skinny_linear takes at most {MOST_ROWS} rows with unit inner strides in one dtype; got "
                         f"x {tuple(x.shape)} {x.dtype} stride {x.stride()}, weight {weight.dtype} {weight.stride()}")
    (rows, inner), cols = x.shape, weight.shape[0]
    if weight.shape[1] != inner or (add is not None and add.shape != (rows, cols)):
        raise ValueError(f"skinny_linear: x {tuple(x.shape)}, weight {tuple(weight.shape)}, add "
                         f"{None if add is None else tuple(add.shape)} do not chain")
    block_m, block_n, block_k, warps, stages = tile or tiles(rows, cols)
    out = torch.empty(rows, cols, dtype=x.dtype, device=x.device)
    if add is not None and add.stride(-1) != 1:
        add = add.contiguous()
    grid = (triton.cdiv(cols, block_n), triton.cdiv(rows, block_m))
    _skinny_kernel[grid](x, weight, add if add is not None else out, out, rows, cols, inner, x.stride(0),
                         weight.stride(0), add.stride(0) if add is not None else 0, out.stride(0),
                         HAS_ADD=add is not None, IEEE=WIDEN or x.dtype == torch.float32,
                         K_STEPS=triton.cdiv(inner, block_k), BLOCK_M=block_m, BLOCK_N=block_n,
                         BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out


@contextlib.contextmanager
def routed(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, the in_proj (with the injection added, if any) and out_proj of every Mamba2 mixer of
    `model` run through skinny_linear wherever it takes the product (one-token evaluations and decoding steps: at
    most MOST_ROWS rows, no bias); everything else as before. A measurement switch (class and instance attributes,
    restored on exit), not a runtime option."""
    from ..mamba2 import Mamba2

    default = Mamba2._project

    def project(self, u: Tensor, inject: Tensor | None) -> Tensor:
        weight = self.in_proj.weight
        if self.in_proj.bias is None and takes(u, weight) and (inject is None or inject.dtype == u.dtype):
            return skinny_linear(u, weight, inject)
        return default(self, u, inject)

    def out_proj(linear: torch.nn.Linear):
        def forward(y: Tensor) -> Tensor:
            if linear.bias is None and takes(y, linear.weight):
                return skinny_linear(y, linear.weight)
            return torch.nn.functional.linear(y, linear.weight, linear.bias)
        return forward

    mixers = [m for m in model.modules() if isinstance(m, Mamba2)]
    Mamba2._project = project  # type: ignore[method-assign]
    for mixer in mixers:
        mixer.out_proj.forward = out_proj(mixer.out_proj)  # type: ignore[method-assign]
    try:
        yield
    finally:
        Mamba2._project = default  # type: ignore[method-assign]
        for mixer in mixers:
            del mixer.out_proj.forward
