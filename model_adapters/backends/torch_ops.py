"""The pure-PyTorch backend: the CPU path and the oracle for every other backend.

A backend is a module exposing exactly these functions with these signatures (see backends/__init__.py).
dt arrives raw, with its bias: each scan discretises it (softplus(dt + dt_bias), zero on padding).
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from ..fixed_point import RowDamping, back_off, damp, damp_rows, relative_residual
from ..norms import add_rmsnorm_ref, gated_rmsnorm_ref
from ..ssd import discretise, ssd_chunked, ssd_step
from ..tensors import broadcast_mask

NAME = "torch"


def chunk_scan(x: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
               D: Tensor | None, initial_state: Tensor | None, final_state: bool = True,
               valid: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """x (B, L, H, P), dt (B, L, H) raw (the scan takes softplus(dt + dt_bias), zero where valid (B, L) is False),
    B/C (B, L, G, N) -> y (B, L, H, P) float32, final state (B, H, P, N) (None unless final_state)."""
    return ssd_chunked(x, discretise(dt, dt_bias, valid), A, B, C, chunk_size, D=D, initial_state=initial_state,
                       final_state=final_state)


def conv_scan(xbc: Tensor, conv: Tensor | None, weight: Tensor, bias: Tensor | None, dt: Tensor, dt_bias: Tensor,
              A: Tensor, D: Tensor | None, headdim: int, dstate: int, chunk_size: int, initial_state: Tensor | None,
              final_state: bool = True, valid: Tensor | None = None, added: tuple[Tensor, Tensor] | None = None
              ) -> tuple[Tensor, Tensor | None]:
    """A sequence's conv and scan: x, B and C are SiLU(causal conv) of xbc (B, L, H P + 2 G N) continuing from the
    conv window (B, H P + 2 G N, k-1) (None: zeros), then chunk_scan of them -> (y (B, L, H, P) float32, final state
    or None). dt (B, L, H) raw, as chunk_scan takes it. added: (to xbc, to dt), summed with them first (the implicit
    model's injection, when the projection has not added it: injects_in_kernels)."""
    return conv_then_scan(sys.modules[__name__], xbc, conv, weight, bias, dt, dt_bias, A, D, headdim, dstate,
                          chunk_size, initial_state, final_state, valid, added)


def injects_in_kernels(length: int) -> bool:
    """Whether a mixer's parallel form hands its injection to conv_scan and gated_rmsnorm (`added`, `z_added`) rather
    than adding it in its projection. Never here: addmm adds it in the product."""
    return False


def conv_then_scan(ops: ModuleType, xbc: Tensor, conv: Tensor | None, weight: Tensor, bias: Tensor | None,
                   dt: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor | None, headdim: int, dstate: int,
                   chunk_size: int, initial_state: Tensor | None, final_state: bool, valid: Tensor | None,
                   added: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
    """conv_scan as two of a backend's ops: its causal_conv_silu, then its chunk_scan."""
    if added is not None:
        xbc, dt = xbc + added[0], dt + added[1]
    heads = dt.shape[-1]
    groups = (xbc.shape[-1] - heads * headdim) // (2 * dstate)
    out = ops.causal_conv_silu(xbc, conv, weight, bias)
    x, B, C = torch.split(out, [heads * headdim, groups * dstate, groups * dstate], dim=-1)
    return ops.chunk_scan(x.unflatten(-1, (heads, headdim)), dt, dt_bias, A, B.unflatten(-1, (groups, dstate)),
                          C.unflatten(-1, (groups, dstate)), chunk_size, D, initial_state, final_state, valid)


def state_step(state: Tensor, x: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, B: Tensor, C: Tensor,
               D: Tensor | None, in_place: bool = False, want_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """x (B, H, P), dt (B, H) raw (discretised here: softplus(dt + dt_bias)), B/C (B, G, N), state (B, H, P, N)
    -> y, new state (None when want_state is False: y alone is cheaper). With in_place=False `state` is not mutated;
    with True a backend may advance it in place (this one never does: it is the functional reference)."""
    return ssd_step(state, x, F.softplus(dt.to(dt_bias.dtype) + dt_bias), A, B, C, D, want_state)


def conv_step_read(state: Tensor, conv: Tensor, xbc: Tensor, weight: Tensor, bias: Tensor | None, dt: Tensor,
                   dt_bias: Tensor, A: Tensor, D: Tensor | None) -> Tensor:
    """The output of one step and no new state (a fixed-point iteration of the sequential reading): x, B and C are
    SiLU(causal conv) of the token's xbc (B, d_inner + 2 G N) against the conv state (B, d_inner + 2 G N, k-1); then
    y = exp(dt A) (S C) + dt x (B . C) + D x, (B, H, P) float32, with state (B, H, P, N) and dt raw (B, H)."""
    return conv_then_read(sys.modules[__name__], state, conv, xbc, weight, bias, dt, dt_bias, A, D)


def conv_then_read(ops: ModuleType, state: Tensor, conv: Tensor, xbc: Tensor, weight: Tensor, bias: Tensor | None,
                   dt: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor | None) -> Tensor:
    """conv_step_read as two of a backend's ops: its causal_conv_silu, then its state_step without a state."""
    x, B, C = _conv_token(ops, state, conv, xbc, weight, bias)
    return ops.state_step(state, x, dt, dt_bias, A, B, C, D, False, False)[0]


def conv_step(state: Tensor, conv: Tensor, xbc: Tensor, weight: Tensor, bias: Tensor | None, dt: Tensor,
              dt_bias: Tensor, A: Tensor, D: Tensor | None, valid: Tensor | None, in_place: bool
              ) -> tuple[Tensor, Tensor, Tensor]:
    """One committing step (the final evaluation of a token, a decoding step), shapes as conv_step_read's -> (y, the
    next conv window (B, C, k-1), the next SSM state). valid (B,) bool or None: a row outside it takes no step, its
    window and state stay its old ones. in_place: a backend may advance `state` and `conv` in place and return them
    (this one never does: it is the functional reference)."""
    return conv_then_step(sys.modules[__name__], state, conv, xbc, weight, bias, dt, dt_bias, A, D, valid, in_place)


def conv_then_step(ops: ModuleType, state: Tensor, conv: Tensor, xbc: Tensor, weight: Tensor, bias: Tensor | None,
                   dt: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor | None, valid: Tensor | None, in_place: bool
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """conv_step as a backend's ops: its causal_conv_silu, its state_step, and the window shifted by torch."""
    if valid is not None:  # raw dt -inf: every backend's softplus gives exactly 0, so exp(dt A) = 1, dt x B = 0
        dt = dt.masked_fill(~valid[:, None], float("-inf"))
    x, B, C = _conv_token(ops, state, conv, xbc, weight, bias)
    y, new_state = ops.state_step(state, x, dt, dt_bias, A, B, C, D, in_place, True)
    window = torch.cat([conv.to(xbc.dtype), xbc[..., None]], dim=-1)[..., 1:]
    if valid is not None:
        window = torch.where(valid[:, None, None], window, conv)
    return y, window, new_state


def _conv_token(ops: ModuleType, state: Tensor, conv: Tensor, xbc: Tensor, weight: Tensor, bias: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """SiLU(conv) of one token's xbc (B, d_inner + 2 G N), split into x (B, H, P), B and C (B, G, N)."""
    heads, headdim, dstate = state.shape[1:]
    d_inner = heads * headdim
    groups = (xbc.shape[-1] - d_inner) // (2 * dstate)
    out = ops.causal_conv_silu(xbc[:, None], conv, weight, bias)[:, 0]
    x, B, C = torch.split(out, [d_inner, groups * dstate, groups * dstate], dim=-1)
    return x.unflatten(-1, (heads, headdim)), B.unflatten(-1, (groups, dstate)), C.unflatten(-1, (groups, dstate))


def causal_conv_silu(x: Tensor, state: Tensor | None, weight: Tensor, bias: Tensor | None) -> Tensor:
    """SiLU(causal depthwise conv): x (B, L, C) continuing from state (B, C, k-1) (None: zeros), weight (C, k)
    -> (B, L, C), in x's dtype (the convolution accumulates in float32 itself)."""
    batch, length, channels = x.shape
    k = weight.shape[-1]
    if state is None:
        state = torch.zeros(batch, channels, k - 1, dtype=x.dtype, device=x.device)
    if length == 1:  # a step: k multiply-adds per channel; F.conv1d costs about twice as much on a CPU
        w = weight.to(x.dtype)
        out = (state.to(x.dtype) * w[:, :-1]).sum(-1) + x[:, 0] * w[:, -1]
        return F.silu(out if bias is None else out + bias.to(x.dtype))[:, None]
    window = torch.cat([state.to(x.dtype), x.transpose(1, 2)], dim=-1)  # (B, C, k-1+L)
    out = F.conv1d(window, weight[:, None, :].to(x.dtype), None if bias is None else bias.to(x.dtype), groups=channels)
    return F.silu(out).transpose(1, 2)


def gated_rmsnorm(x: Tensor, z: Tensor, weight: Tensor, eps: float, group_size: int,
                  out_dtype: torch.dtype | None = None, z_added: Tensor | None = None) -> Tensor:
    """RMSNorm(x * SiLU(z)) per group, in out_dtype (None: the compute dtype; see norms.gated_rmsnorm_ref); z_added:
    z + z_added in z's place."""
    y = gated_rmsnorm_ref(x, z if z_added is None else z + z_added, weight, eps, group_size)
    return y if out_dtype is None else y.to(out_dtype)


def add_rmsnorm(x: Tensor | None, residual: Tensor, weight: Tensor, eps: float,
                out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """residual + x, and its RMSNorm in out_dtype (see norms.add_rmsnorm_ref)."""
    return add_rmsnorm_ref(x, residual, weight, eps, out_dtype)


def damped_update(z: Tensor, fz: Tensor, valid: Tensor | None, active: Tensor, iterations: Tensor,
                  converged: Tensor, tau: float | RowDamping, tol: float, max_iter: int) -> None:
    """One masked damped update of a piece solve (graphs.PieceSolve), in place. z (R, [T,] D) the iterates and fz
    = f(z); valid (R, T) or None; active, converged (R,) bool and iterations (R,) int64. An active row moves to
    (1 - tau) z + tau fz and counts the update; it has converged once its residual ||fz - z|| / (eps + ||z||) over
    its valid tokens is below tol, and stays active while neither that nor max_iter - 1 updates is reached.
    tau a RowDamping (the "backoff" solver): each row moves with its own damping, which then backs off where the
    row has stalled (fixed_point.back_off), in place."""
    residual = relative_residual(fz, z, valid)
    if isinstance(tau, RowDamping):
        moved = damp_rows(z, fz, tau.tau)
        for buffer, value in zip(tau, back_off(*tau, residual)):
            buffer.copy_(torch.where(active, value, buffer))
    else:
        moved = damp(z, fz, tau)
    z.copy_(torch.where(broadcast_mask(active, z), moved, z))
    iterations.add_(active.long())
    done = active & (residual < tol)
    converged.logical_or_(done)
    active.logical_and_(~done & (iterations < max_iter - 1))
