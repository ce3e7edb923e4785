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


def no_autocast(fn):
    """Run fn with autocast off on the device of its first tensor argument (the scan is defined in float32)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        device = next(a.device.type for a in args if isinstance(a, Tensor))
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapped


def _heads_from_groups(t: Tensor, nheads: int) -> Tensor:
    """(B, L, G, N) -> (B, L, H, N): each group's B or C is shared by H/G consecutive heads."""
    return t.repeat_interleave(nheads // t.shape[2], dim=2)


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
                D: Tensor | None = None, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked SSD over a whole sequence of any length. Returns (y: (B, L, H, P), final_state)."""
    batch, length, nheads, _ = x.shape
    cd = compute_dtype(x)
    x, dt, A = x.to(cd), dt.to(cd), A.to(cd)
    B, C = _heads_from_groups(B.to(cd), nheads), _heads_from_groups(C.to(cd), nheads)

    # 1. Pad to whole chunks. Padded steps have dt = 0: no decay and no input, so states pass unchanged.
    pad = (-length) % chunk_size
    xdt = F.pad(x * dt[..., None], (0, 0, 0, 0, 0, pad))
    a = F.pad(dt * A, (0, 0, 0, pad))
    B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    n_chunks = (length + pad) // chunk_size

    def chunks(t: Tensor) -> Tensor:
        return t.reshape(batch, n_chunks, chunk_size, *t.shape[2:])

    xdt, B, C = chunks(xdt), chunks(B), chunks(C)
    a_cs = torch.cumsum(chunks(a).permute(0, 3, 1, 2), dim=-1)  # (B, H, c, T)

    # 2. Within each chunk: the quadratic (attention-like) form.
    decay = _segment_decay(a_cs)  # (B, H, c, T, T)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, decay, xdt)

    # 3. State contributed by each chunk alone, at its end.
    decay_to_end = torch.exp(a_cs[..., -1:] - a_cs)  # (B, H, c, T)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_to_end, xdt)

    # 4. Pass states across chunks (a short recurrence over chunk boundaries).
    if initial_state is None:
        initial_state = torch.zeros_like(chunk_states[:, 0])
    states = torch.cat([initial_state.to(cd)[:, None], chunk_states], dim=1)  # (B, c+1, H, P, N)
    chunk_decay = _segment_decay(torch.cumsum(F.pad(a_cs[..., -1], (1, 0)), dim=-1))  # (B, H, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    states_in, final_state = states[:, :-1], states[:, -1]

    # 5. Output contributed by the state entering each chunk.
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states_in, torch.exp(a_cs))
    y = (y_diag + y_off).reshape(batch, n_chunks * chunk_size, nheads, -1)[:, :length]
    return y + _skip(x, D), final_state


@no_autocast
def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One recurrence step. x (B, H, P), dt (B, H), B and C (B, G, N). Returns (y (B, H, P), new_state).

    Functional: `state` is not modified, so the implicit model can evaluate a step many times against
    the same frozen state.
    """
    cd = compute_dtype(x)
    nheads = x.shape[1]
    x, dt, A = x.to(cd), dt.to(cd), A.to(cd)
    B = B.to(cd).repeat_interleave(nheads // B.shape[1], dim=1)
    C = C.to(cd).repeat_interleave(nheads // C.shape[1], dim=1)
    decay = torch.exp(dt * A)[..., None, None]
    new_state = decay * state.to(cd) + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new_state, C)
    return y + _skip(x, D), new_state


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
