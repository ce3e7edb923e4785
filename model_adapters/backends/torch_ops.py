"""The pure-PyTorch backend: the CPU path and the oracle for every other backend.

A backend is a module exposing exactly these functions with these signatures (see backends/__init__.py).
dt arrives already discretised (softplus(dt + dt_bias), zero on padding), in float32.
"""

from __future__ import annotations

from torch import Tensor

from ..norms import gated_rmsnorm_ref
from ..ssd import ssd_chunked, ssd_step

NAME = "torch"


def chunk_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
               D: Tensor | None, initial_state: Tensor | None) -> tuple[Tensor, Tensor]:
    """x (B, L, H, P), dt (B, L, H), B/C (B, L, G, N) -> y (B, L, H, P) float32, final state (B, H, P, N)."""
    return ssd_chunked(x, dt, A, B, C, chunk_size, D=D, initial_state=initial_state)


def state_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
               D: Tensor | None) -> tuple[Tensor, Tensor]:
    """x (B, H, P), dt (B, H), B/C (B, G, N), state (B, H, P, N) -> y, new state. Does not mutate `state`."""
    return ssd_step(state, x, dt, A, B, C, D)


def gated_rmsnorm(x: Tensor, z: Tensor, weight: Tensor, eps: float, group_size: int) -> Tensor:
    return gated_rmsnorm_ref(x, z, weight, eps, group_size)
