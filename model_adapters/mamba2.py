"""The Mamba2 mixer in plain PyTorch, with mamba_ssm's parameter names so weights map one to one.

Two forms of one function: `forward` runs a whole sequence with a chunked parallel scan, `step` runs one
token against a recurrent state. Both take an optional injection `inject` added to the in_proj output
(the implicit model's input injection) and return the new state without mutating the old one. The kernels are an
argument (`ops`: a backend module, backends/; the plain PyTorch twin by default): which ones run is the runtime's
choice (runtime/), not the model's.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backends import torch_ops
from .config import ModelConfig
from .tensors import compute_dtype

Ops = Any  # a backend module with torch_ops' functions (backends/__init__.py)


class Derived(NamedTuple):
    """Parameters in the form the scan takes them (see Mamba2._derived)."""

    A: Tensor  # (H,) -exp(A_log), compute dtype
    dt_bias: Tensor  # (H,) compute dtype
    D: Tensor  # (H,) or (H, P)


class MixerState(NamedTuple):
    """Recurrent state of one mixer. conv: the last d_conv-1 pre-conv inputs (B, conv_dim, d_conv-1) in the
    model dtype; ssm: (B, H, P, N) in the state dtype (Mamba2.sd: the compute dtype unless set to bfloat16)."""

    conv: Tensor
    ssm: Tensor


State = list[MixerState]  # a stack's recurrent state: one MixerState per layer


class Mamba2(nn.Module):
    # Storage dtype of the SSM state between tokens; None: the compute dtype. bfloat16 halves the state that the
    # sequential reading and decoding hold (mamba_ssm's decoding cache is the model dtype); every kernel still
    # computes in float32 and rounds only what it stores. A runtime choice, not a weight: set_state_dtype sets it.
    state_dtype: torch.dtype | None = None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=cfg.bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(_init_dt_bias(cfg))
        A = torch.empty(cfg.nheads).uniform_(*cfg.A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(cfg.d_inner if cfg.D_has_hdim else cfg.nheads))
        if cfg.rmsnorm:
            self.norm = _GatedNormWeight(cfg.d_inner)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)

    # -- shared pieces -------------------------------------------------------------------------------
    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.cfg
        return cast("tuple[Tensor, Tensor, Tensor]", torch.split(zxbcdt, [c.d_inner, c.conv_dim, c.nheads], dim=-1))

    @property
    def cd(self) -> torch.dtype:
        """Compute dtype of scans, convs and norms: float32, or float64 for a float64 model."""
        return compute_dtype(self.in_proj.weight)

    @property
    def sd(self) -> torch.dtype:
        """Storage dtype of the SSM state (see state_dtype)."""
        return self.state_dtype or self.cd

    def _derived(self) -> Derived:
        """A = -exp(A_log) and the dt bias in the compute dtype, and D per head or channel. Computed once per weight
        version at inference (no autograd), every call while training (autograd must see them)."""
        # Weights made under inference_mode have no version counter; they cannot change outside it either.
        key = tuple((p.data_ptr(), 0 if p.is_inference() else p._version, p.dtype)
                    for p in (self.A_log, self.dt_bias, self.D))
        cache = self.__dict__.get("_derived_cache")
        if torch.is_grad_enabled() or cache is None or cache[0] != key:
            cd = self.cd
            D = self.D.view(self.cfg.nheads, self.cfg.headdim) if self.cfg.D_has_hdim else self.D
            cache = (key, Derived(-torch.exp(self.A_log.to(cd)), self.dt_bias.to(cd), D))
            if not torch.is_grad_enabled():
                self.__dict__["_derived_cache"] = cache
        return cache[1]

    def _project(self, u: Tensor, inject: Tensor | None) -> Tensor:
        """in_proj(u) + inject, the add folded into the matrix product (one GEMM, no extra pass over the output)."""
        if inject is None:
            return self.in_proj(u)
        if self.in_proj.bias is not None:
            return self.in_proj(u) + inject
        out = torch.addmm(inject.reshape(-1, inject.shape[-1]), u.reshape(-1, u.shape[-1]), self.in_proj.weight.t())
        return out.view(*u.shape[:-1], out.shape[-1])

    def _gate_and_project(self, y: Tensor, z: Tensor, ops: Ops, z_added: Tensor | None = None) -> Tensor:
        """y (..., d_inner) float32 -> out (..., d_model) in the model dtype; the gate is z + z_added."""
        c = self.cfg
        dtype = self.out_proj.weight.dtype
        if c.rmsnorm:  # written in the projection's dtype by the norm itself (no conversion pass after it)
            norm_args = (self.norm.weight, c.mixer_norm_eps, c.d_inner // c.ngroups, dtype)
            y = ops.gated_rmsnorm(y, z, *norm_args, **({} if z_added is None else {"z_added": z_added}))
        else:
            y = y * F.silu((z if z_added is None else z + z_added).to(y.dtype))
        return self.out_proj(y.to(dtype))

    def empty_state(self, batch: int, device=None) -> MixerState:
        c, w = self.cfg, self.in_proj.weight
        conv = torch.zeros(batch, c.conv_dim, c.d_conv - 1, dtype=w.dtype, device=device or w.device)
        ssm = torch.zeros(batch, c.nheads, c.headdim, c.d_state, dtype=self.sd, device=device or w.device)
        return MixerState(conv, ssm)

    # -- parallel form -------------------------------------------------------------------------------
    def forward(self, u: Tensor, inject: Tensor | None = None, state: MixerState | None = None,
                valid: Tensor | None = None, commit: bool = True, ops: Ops = torch_ops
                ) -> tuple[Tensor, MixerState | None]:
        """u (B, L, d_model) -> (out (B, L, d_model), state after each sequence's last valid token; None unless
        commit: the iterations of a fixed-point solve before its final evaluation need no state).

        valid (B, L) bool marks real tokens of a right-padded batch: padded steps get dt = 0, so they
        leave the SSM state unchanged, and the conv window is read at each sequence's own end.
        """
        derived, c = self._derived(), self.cfg
        # The backend may add the injection in the kernels that read the projection (a block of the blockwise
        # reading: no copy of it into the projection's output first); else the projection adds it.
        in_kernels = inject is not None and ops.injects_in_kernels(u.shape[1])
        z, xbc, dt = self._split(self.in_proj(u) if in_kernels else self._project(u, inject))
        add_z, add_xbc, add_dt = self._split(inject) if in_kernels and inject is not None else (None, None, None)
        conv, ssm = (None, None) if state is None else state  # None: zeros, which the kernels take without a tensor
        conv_state = _last_inputs(xbc, conv, valid, c.d_conv - 1, add_xbc) if commit else None
        added = {} if add_xbc is None else {"added": (add_xbc, add_dt)}
        y, ssm_state = ops.conv_scan(xbc, conv, self.conv1d.weight[:, 0], self.conv1d.bias, dt, derived.dt_bias,
                                     derived.A, derived.D, c.headdim, c.d_state, c.chunk_size, ssm,
                                     final_state=commit, valid=valid, **added)
        out = self._gate_and_project(y.flatten(-2), z, ops, add_z)
        return out, MixerState(cast(Tensor, conv_state), ssm_state.to(self.sd)) if commit else None  # set if commit

    # -- recurrent form ------------------------------------------------------------------------------
    def step(self, u: Tensor, state: MixerState, inject: Tensor | None = None, in_place: bool = False,
             commit: bool = True, ops: Ops = torch_ops, valid: Tensor | None = None
             ) -> tuple[Tensor, MixerState | None]:
        """u (B, d_model) -> (out (B, d_model), new state, or None unless commit). `state` is left untouched
        unless in_place, where the backend may advance it in place (decoding, and the commit of a piece solve, which
        own the state). valid (B,) bool: a row outside it takes no step (its new state is its old one), as padding in
        the parallel form; its output is meaningless."""
        derived = self._derived()
        z, xbc, dt = self._split(self._project(u, inject))
        weight, bias, dt_bias, A, D = self.conv1d.weight[:, 0], self.conv1d.bias, derived.dt_bias, derived.A, derived.D
        if not commit:  # an iteration: the output alone, its conv and state read in one op; valid changes nothing
            y = ops.conv_step_read(state.ssm, state.conv, xbc, weight, bias, dt, dt_bias, A, D)
            return self._gate_and_project(y.flatten(-2), z, ops), None
        y, window, ssm = ops.conv_step(state.ssm, state.conv, xbc, weight, bias, dt, dt_bias, A, D, valid, in_place)
        return self._gate_and_project(y.flatten(-2), z, ops), MixerState(window, ssm.to(self.sd))


def _last_inputs(xbc: Tensor, conv_state: Tensor | None, valid: Tensor | None, n: int,
                 added: Tensor | None = None) -> Tensor:
    """The conv state after each sequence's last valid token: its last n = k-1 inputs, (B, C, n), reaching back into
    the previous state (None: zeros) when the sequence is shorter than that; the inputs are xbc + added (the
    injection, where the projection did not add it)."""
    batch, length, channels = xbc.shape
    if conv_state is None:
        conv_state = xbc.new_zeros(batch, channels, n)
    ends = valid.sum(1) if valid is not None else torch.full((batch,), length, device=xbc.device)
    idx = ends[:, None] - n + torch.arange(n, device=xbc.device)  # (B, n) positions in xbc; < 0: in the state
    where = idx.clamp(min=0)[:, :, None].expand(-1, -1, channels)
    from_x = xbc.gather(1, where) if added is None else xbc.gather(1, where) + added.gather(1, where)
    from_x = from_x.transpose(1, 2)
    from_state = conv_state.gather(2, (idx + n).clamp(0, n - 1)[:, None, :].expand(-1, channels, -1))
    return torch.where((idx < 0)[:, None, :], from_state, from_x.to(conv_state.dtype))


class _GatedNormWeight(nn.Module):
    """Holds `norm.weight` under mamba_ssm's name; the computation is the backend's gated_rmsnorm."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


def _init_dt_bias(cfg: ModelConfig) -> Tensor:
    """dt log-uniform in [dt_min, dt_max], stored through the inverse of softplus (as mamba_ssm does)."""
    log_dt = torch.rand(cfg.nheads) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
    dt = torch.exp(log_dt).clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))
