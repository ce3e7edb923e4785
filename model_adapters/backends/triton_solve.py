"""The masked damped update of a piece solve (graphs.PieceSolve) in one Triton kernel.

Each update of a captured solve otherwise runs about a dozen small kernels after f: the difference, two masked row
norms, the damped move, the select of active rows, the counters. At the sizes of the sequential and blockwise
readings each of them is launch-bound, and the row norms of a block (a few rows of T x d_model values) are slow
reductions. One program per row does it all in one pass over the row: it reads z and f(z) once, writes the moved z,
and updates the row's counters (torch_ops.damped_update is the twin and the definition).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # see triton_ops

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch import Tensor  # noqa: E402

from ..fixed_point import BACKOFF_FACTOR, BACKOFF_PATIENCE, EPS, RowDamping  # noqa: E402

BLOCK = 2048  # values of a row per loop step (at most): a 64-token block of d_model 768 is 24 steps
NUM_WARPS = None  # per program (one row); None: by row size (_warps). bench/kernels.py sets both.


def _warps(size: int) -> int:
    """4 warps for a row of up to 2,048 values (a step, or a block of 16 of the a5 model), 16 above: one program per
    row, so a block of 100 rows keeps 100 programs whatever its length, and a longer row needs more loads in flight.
    Measured on an H200 (bench/kernels.py, 100 rows of the a5 model): a block of 32 takes 2.9 us against 4.1 with 4
    warps, a block of 64 4.2 against 4.8; a step's row does not gain from more."""
    return 4 if size <= 2048 else 16


@triton.jit
def _damped_update_kernel(Z, FZ, VALID, ACTIVE, ITERATIONS, CONVERGED, TAU, BEST, STALL, size, width, tokens, keep,
                          tau, tol, last_update, eps, patience, factor, HAS_VALID: tl.constexpr,
                          PER_ROW: tl.constexpr, BLOCK: tl.constexpr, STEPS: tl.constexpr):
    row = tl.program_id(0)
    active = tl.load(ACTIVE + row) != 0
    if PER_ROW:  # the backoff solver: the row's own damping
        tau = tl.load(TAU + row)
        keep = 1.0 - tau
    diff_sq = tl.zeros([BLOCK], dtype=tl.float32)
    z_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for step in range(STEPS):  # a constexpr count: Triton's interpreter (the CPU tests) loops only over those
        i = step * BLOCK + tl.arange(0, BLOCK)
        inside = i < size
        z = tl.load(Z + row * size + i, mask=inside, other=0.0)
        fz = tl.load(FZ + row * size + i, mask=inside, other=0.0).to(tl.float32)
        if HAS_VALID:  # padding counts in no norm
            v = tl.load(VALID + row * tokens + i // width, mask=inside, other=0).to(tl.float32)
            diff_sq += ((fz - z) * v) * ((fz - z) * v)
            z_sq += (z * v) * (z * v)
        else:
            diff_sq += (fz - z) * (fz - z)
            z_sq += z * z
        tl.store(Z + row * size + i, keep * z + tau * fz, mask=inside & active)
    residual = tl.sqrt(tl.sum(diff_sq, axis=0)) / (eps + tl.sqrt(tl.sum(z_sq, axis=0)))
    iterations = tl.load(ITERATIONS + row) + active.to(tl.int64)
    done = active & (residual < tol)
    if PER_ROW:  # fixed_point.back_off
        stall = tl.where(residual < tl.load(BEST + row), 0, tl.load(STALL + row) + 1)
        hit = stall >= patience
        tl.store(TAU + row, tl.where(hit, tau * factor, tau), mask=active)
        tl.store(BEST + row, tl.where(hit, residual, tl.minimum(residual, tl.load(BEST + row))), mask=active)
        tl.store(STALL + row, tl.where(hit, 0, stall), mask=active)
    tl.store(ITERATIONS + row, iterations)
    tl.store(CONVERGED + row, ((tl.load(CONVERGED + row) != 0) | done).to(tl.int8))
    tl.store(ACTIVE + row, (active & ~done & (iterations < last_update)).to(tl.int8))


def damped_update(z: Tensor, fz: Tensor, valid: Tensor | None, active: Tensor, iterations: Tensor,
                  converged: Tensor, tau: float | RowDamping, tol: float, max_iter: int) -> None:
    """torch_ops.damped_update in one launch: z and fz float32 (fz = the final norm's
    output), z contiguous (the solve's buffer); tau a number, or a RowDamping (the backoff solver) advanced in
    place."""
    if z.dtype != torch.float32:  # a float64 model: the twin keeps its precision
        from .torch_ops import damped_update as twin

        return twin(z, fz, valid, active, iterations, converged, tau, tol, max_iter)
    rows, width = z.shape[0], z.shape[-1]
    size = z[0].numel()
    fz = fz if fz.is_contiguous() else fz.contiguous()
    block = min(BLOCK, triton.next_power_of_2(size))
    flags = [t.view(torch.uint8) for t in (active, converged)]  # bool buffers, read and written as bytes
    valid_bytes = valid.contiguous().view(torch.uint8) if valid is not None else z  # z: a placeholder pointer
    if isinstance(tau, RowDamping):  # the kernel reads and advances each row's damping
        per_row, rate, (row_tau, best, stall) = True, 0.0, tau
    else:
        per_row, rate, (row_tau, best, stall) = False, tau, (z, z, z)  # z: placeholder pointers
    _damped_update_kernel[(rows,)](
        z, fz, valid_bytes, flags[0], iterations, flags[1], row_tau, best, stall, size, width,
        size // width, 1.0 - rate, rate, tol, max_iter - 1, EPS, BACKOFF_PATIENCE, BACKOFF_FACTOR,
        HAS_VALID=valid is not None, PER_ROW=per_row, BLOCK=block, STEPS=triton.cdiv(size, block),
        num_warps=NUM_WARPS or _warps(size))
