"""State-space duality (SSD) in plain PyTorch: the chunked parallel form and its recurrent twin.

Per head h, with a scalar decay a_t = exp(dt_t * A_h):

    S_t = a_t S_{t-1} + dt_t x_t B_t^T        S: (P, N)
    y_t = S_t C_t + D x_t

`ssd_chunked` computes this for a whole sequence with matrix products (the CPU path and the reference
for the Triton kernel); `ssd_step` is one step of the recurrence (the decoding path) and `ssd_recurrent`
loops it (the test oracle for both). All arithmetic runs in float32, or float64 when given float64, also
inside torch.autocast: autocast would run the einsums in bfloat16 (4e-3 relative error measured), so both forms
switch it off for their own body.

Shapes: x (B, L, H, P), dt (B, L, H) already softplus-ed, A (H,), B and C (B, L, G, N) with H a
multiple of G, D (H,) or (H, P) or None, state (B, H, P, N).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .tensors import compute_dtype


def discretise(dt: Tensor, dt_bias: Tensor, valid: Tensor | None = None) -> Tensor:
    """The step sizes a scan takes: softplus(dt + dt_bias) in dt_bias's dtype, zero where valid (B, L) is False
    (padding leaves the state unchanged)."""
    dt = F.softplus(dt.to(dt_bias.dtype) + dt_bias)
    return dt if valid is None else dt * valid[..., None]


def no_autocast(fn):
    """Run fn with autocast off on the device of its first tensor argument (the scan is defined in float32)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        device = next(a.device.type for a in args if isinstance(a, Tensor))
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapped


def _skip(x: Tensor, D: Tensor | None) -> Tensor:
    if D is None:
        return torch.zeros_like(x)
    D = D.to(x.dtype)
    return x * (D[:, None] if D.dim() == 1 else D)


def _segment_decay(a_cs: Tensor) -> Tensor:
    """exp(sum of log-decays strictly after s up to t) for t >= s, else 0. a_cs: (..., T) -> (..., T, T)."""
    T = a_cs.shape[-1]
    diff = a_cs[..., :, None] - a_cs[..., None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=a_cs.device).tril()
    return torch.exp(diff.masked_fill(~causal, -torch.inf))


@no_autocast
def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                D: Tensor | None = None, initial_state: Tensor | None = None,
                final_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """Chunked SSD over a whole sequence of any length. Returns (y: (B, L, H, P), final state, or None when
    final_state is False: a fixed-point iteration that does not commit its state skips that work).

    Layout (b, c, g, k, ...): c chunks of T tokens, g groups of k heads each, so that B and C are never copied
    per head and every product is one batched matrix product. A sequence shorter than chunk_size is one chunk of
    its own length: padding it to a full chunk would make a short block cost what a long one does.
    """
    batch, length, nheads, headdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    cd = compute_dtype(x)
    T = min(chunk_size, length)
    pad = (-length) % T
    n = (length + pad) // T

    # 1. Pad to whole chunks (padded steps have dt = 0: no decay and no input, states pass unchanged) and split.
    def chunks(t: Tensor, *inner: int) -> Tensor:
        t = F.pad(t.to(cd), (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, n, T, *inner)

    xdt = chunks(x * dt[..., None].to(x.dtype), groups, nheads // groups, headdim).permute(0, 1, 3, 4, 2, 5)
    a_cs = chunks(dt.to(cd) * A.to(cd), groups, nheads // groups).permute(0, 1, 3, 4, 2).cumsum(-1)  # (b,c,g,k,T)
    Bc = chunks(B, groups, dstate).permute(0, 1, 3, 2, 4)  # (b, c, g, T, N)
    Cc = chunks(C, groups, dstate).permute(0, 1, 3, 2, 4)

    # 2. Within each chunk, the quadratic (attention-like) form: (C B^T * decay) @ (x dt).
    scores = (Cc @ Bc.transpose(-1, -2))[:, :, :, None] * _segment_decay(a_cs)  # (b, c, g, k, T, T)
    y = scores @ xdt  # (b, c, g, k, T, P)

    # 3. The states entering each chunk, and the final one: the recurrence state <- exp(a_end) state + chunk
    # state, where a chunk contributes sum_s exp(a_end - a_s) (x dt)_s B_s^T at its end.
    if initial_state is None:
        initial_state = torch.zeros(batch, nheads, headdim, dstate, dtype=cd, device=x.device)
    state = initial_state.to(cd).reshape(batch, groups, nheads // groups, headdim, dstate)
    states_in, final = _pass_states(state, xdt, a_cs, Bc, final_state)

    # 4. What the state entering each chunk contributes: exp(a_t) C_t state_in.
    y = y + (Cc[:, :, :, None] @ states_in.transpose(-1, -2)) * torch.exp(a_cs)[..., None]
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(batch, n * T, nheads, headdim)[:, :length]
    return y + _skip(x.to(cd), D), None if final is None else final.reshape(batch, nheads, headdim, dstate)


def _pass_states(state: Tensor, xdt: Tensor, a_cs: Tensor, Bc: Tensor, final: bool) -> tuple[Tensor, Tensor | None]:
    """state (b, g, k, P, N) entering the first chunk -> (states entering each chunk (b, c, g, k, P, N), the state
    after the last or None). One chunk without a final state (a short block's iteration) needs neither the chunk
    state nor a copy."""
    n = a_cs.shape[1]
    if n == 1 and not final:
        return state[:, None], None
    to_end = torch.exp(a_cs[..., -1:] - a_cs)  # (b, c, g, k, T)
    chunk_states = (xdt * to_end[..., None]).transpose(-1, -2) @ Bc[:, :, :, None]  # (b, c, g, k, P, N)
    chunk_decay = torch.exp(a_cs[..., -1])[..., None, None]  # (b, c, g, k, 1, 1)
    entering = []
    for c in range(n):
        entering.append(state)
        state = chunk_decay[:, c] * state + chunk_states[:, c]
    states_in = entering[0][:, None] if n == 1 else torch.stack(entering, 1)
    return states_in, state if final else None


@no_autocast
def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Tensor | None = None, want_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """One recurrence step. x (B, H, P), dt (B, H), B and C (B, G, N). Returns (y (B, H, P), new_state).

    Functional: `state` is not modified, so the implicit model can evaluate a step many times against
    the same frozen state. want_state=False (a fixed-point iteration that commits nothing) returns None for it and
    never forms it: y = a (S C) + (x dt)(B . C) reads the state once, where forming a S + (x dt) B^T first writes a
    state-sized tensor (the state is H*P*N per row, far larger than the token's activations).
    """
    cd = compute_dtype(x)
    batch, nheads, headdim = x.shape
    groups, dstate = B.shape[1:]
    x, dt, A = x.to(cd), dt.to(cd), A.to(cd)
    # Heads of a group share B and C: broadcast over (b, g, k, P, N) views, never copied per head.
    decay = torch.exp(dt * A).view(batch, groups, -1, 1, 1)
    xdt = (dt[..., None] * x).view(batch, groups, -1, headdim, 1)
    B, C = B.to(cd), C.to(cd)
    # One vector-matrix product per (row, group), its heads stacked: C (1, N) @ S^T (N, k P). The same product written
    # S @ C, a matrix-vector one, takes a slow path of the CPU's batched GEMM (4x slower on 40 rows).
    Cr = C[:, :, None, :]  # (b, g, 1, N)
    if not want_state:
        read = (Cr @ state.to(cd).reshape(batch, groups, -1, dstate).transpose(-1, -2)).view(batch, groups, -1,
                                                                                             headdim, 1)
        bc = (B * C).sum(-1)[:, :, None, None, None]
        y = (decay * read + xdt * bc).view(batch, nheads, headdim)
        return y + _skip(x, D), None
    new_state = decay * state.to(cd).view(batch, groups, -1, headdim, dstate) + xdt * B[:, :, None, None]
    y = (Cr @ new_state.view(batch, groups, -1, dstate).transpose(-1, -2)).view(batch, nheads, headdim)
    return y + _skip(x, D), new_state.view(batch, nheads, headdim, dstate)


def ssd_recurrent(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                  initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Token-by-token loop of `ssd_step`: the plain reference for `ssd_chunked`. Same signature minus chunks."""
    batch, length, nheads, headdim = x.shape
    state = initial_state
    if state is None:
        state = torch.zeros(batch, nheads, headdim, B.shape[-1], dtype=compute_dtype(x), device=x.device)
    ys = []
    for t in range(length):
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    return torch.stack(ys, dim=1), state
