"""The implicit Mamba2 language model in one file: plain PyTorch, read top to bottom.

This is what the project evaluates, written as simply as it can be: no kernels, no CUDA graphs, no batching tricks,
one sequence at a time, every scan a loop over tokens. It is the oracle that the production path (models.py,
reading.py, fixed_point.py, the kernels of backends/, the CUDA graphs of runtime/) is tested against in float64
(tests/model_adapters/test_implicit_lm.py), and it shares no code with it: it imports torch and nothing else.
Parameter names are mamba_ssm's (and the production model's), so one state dict loads into both.

The model (Schöne et al., "Implicit Language Models are RNNs", ICML 2025; PAPER.md):

    e_t = Emb(x_t)                               token embedding
    u_t = W_u RMSNorm_u(e_t) + b_u               the injection, computed once, sized like a Mamba2 in_proj output
    f(z; u) = RMSNorm_f(h_L),  h_0 = z,  h_l = h_{l-1} + Mamba2_l(RMSNorm_l(h_{l-1}); u)
    z* = f(z*; u)                                found by damped iteration: z <- (1 - tau) z + tau f(z)
    logits_t = W_emb f(z*)_t                     the head is tied to the embedding

An explicit model is the same stack run once on the embeddings (h_0 = e, no injection).

Readings. A sequence is cut into pieces of `piece` tokens. Each piece is iterated to its fixed point with every
layer's recurrent state (conv window and SSM state) frozen where the previous piece left it; the final evaluation
of the piece commits the state the next piece starts from. piece = L is the simultaneous reading (all tokens at
once), piece = 1 the sequential one (the RNN view), anything between is blockwise.

Budget of a piece: z_0 = 0; at most max_iter - 1 damped updates, stopping once ||f(z) - z|| / (1e-6 + ||z||) < tol;
then one final f evaluation, whose output the head reads. Iterations are counted as f evaluations, the final one
included (the reference code's f_thres = max_iter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Config:
    """The architecture (the fields of a checkpoint's config that change the computation)."""

    kind: str = "implicit"  # "implicit": iterate the stack to a fixed point; "explicit": run it once
    vocab_size: int = 32
    pad_vocab_size_multiple: int = 1  # embedding rows: vocab_size rounded up to a multiple of this
    d_model: int = 64
    n_layer: int = 1
    d_state: int = 16  # N: the SSM state per head and channel
    d_conv: int = 4  # width of the causal depthwise convolution
    expand: int = 2  # d_inner = expand * d_model
    headdim: int = 16  # P: channels per head
    ngroups: int = 1  # G: heads share B and C within a group
    D_has_hdim: bool = False  # the skip D per channel (True) or per head
    rmsnorm: bool = True  # the gate: RMSNorm(y * SiLU(z)) per group, or y * SiLU(z)
    conv_bias: bool = True
    bias: bool = False  # of in_proj and out_proj
    norm_eps: float = 1e-5
    mixer_norm_eps: float = 1e-5
    tie_embeddings: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """A checkpoint's config dict; keys that do not change the computation (chunk_size, budget, ...) are ignored."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:  # x, B and C go through the convolution together
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:  # z (the gate), x, B, C, dt
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_size_multiple) * self.pad_vocab_size_multiple


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


@dataclass
class MixerState:
    """A mixer's recurrent state: the last d_conv - 1 inputs of the convolution (d_conv - 1, conv_dim) and the SSM
    state (H, P, N)."""

    conv: Tensor
    ssm: Tensor


class GateNorm(nn.Module):  # holds mamba_ssm's `norm.weight`
    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class Mamba2(nn.Module):
    """One Mamba2 mixer, run over the tokens of one sequence (T, d_model) from a state, one token at a time."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=cfg.bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(cfg.nheads))
        self.A_log = nn.Parameter(torch.zeros(cfg.nheads))
        self.D = nn.Parameter(torch.ones(cfg.d_inner if cfg.D_has_hdim else cfg.nheads))
        if cfg.rmsnorm:
            self.norm = GateNorm(cfg.d_inner)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)

    def empty_state(self, like: Tensor) -> MixerState:
        c = self.cfg
        return MixerState(like.new_zeros(c.d_conv - 1, c.conv_dim), like.new_zeros(c.nheads, c.headdim, c.d_state))

    def forward(self, v: Tensor, inject: Tensor | None, state: MixerState) -> tuple[Tensor, MixerState]:
        """v (T, d_model), inject (T, d_in_proj) or None -> out (T, d_model) and the state after the last token."""
        c = self.cfg
        zxbcdt = self.in_proj(v) + (inject if inject is not None else 0)
        z, xbc, dt = torch.split(zxbcdt, [c.d_inner, c.conv_dim, c.nheads], dim=-1)
        window = torch.cat([state.conv, xbc])  # (d_conv - 1 + T, conv_dim): the conv reads back into the state
        ssm, ys = state.ssm, []
        for t in range(v.shape[0]):
            x, B, C = self.conv_token(window[t: t + c.d_conv])
            ssm, y = self.scan_token(ssm, x, B, C, dt[t])
            ys.append(y)
        y = torch.stack(ys).flatten(1)  # (T, d_inner)
        return self.out_proj(self.gate(y, z)), MixerState(window[v.shape[0]:], ssm)

    def conv_token(self, window: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The causal depthwise convolution at one token from its window (d_conv, conv_dim), SiLU, split into
        x (H, P), B and C (G, N)."""
        c = self.cfg
        out = (window * self.conv1d.weight[:, 0].T).sum(0)
        if self.conv1d.bias is not None:
            out = out + self.conv1d.bias
        x, B, C = torch.split(F.silu(out), [c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state])
        return x.view(c.nheads, c.headdim), B.view(c.ngroups, c.d_state), C.view(c.ngroups, c.d_state)

    def scan_token(self, ssm: Tensor, x: Tensor, B: Tensor, C: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        """One step of the selective scan, per head h: S <- exp(dt_h A_h) S + dt_h x_h B_gᵀ, y_h = S C_g + D x_h."""
        c = self.cfg
        dt = F.softplus(dt + self.dt_bias)  # (H,)
        A = -torch.exp(self.A_log)
        group = torch.arange(c.nheads) // (c.nheads // c.ngroups)  # the group of each head
        Bh, Ch = B[group], C[group]  # (H, N)
        ssm = torch.exp(dt * A)[:, None, None] * ssm + (dt[:, None] * x)[:, :, None] * Bh[:, None, :]
        D = self.D.view(c.nheads, c.headdim) if c.D_has_hdim else self.D[:, None]
        return ssm, (ssm * Ch[:, None, :]).sum(-1) + D * x

    def gate(self, y: Tensor, z: Tensor) -> Tensor:
        c = self.cfg
        y = y * F.silu(z)
        if not c.rmsnorm:
            return y
        groups = y.view(y.shape[0], c.ngroups, -1)
        groups = groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + c.mixer_norm_eps)
        return groups.flatten(1) * self.norm.weight


class Block(nn.Module):
    """h -> h + Mamba2(RMSNorm(h)): a pre-norm residual block (no MLP)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2(cfg)

    def forward(self, h: Tensor, inject: Tensor | None, state: MixerState) -> tuple[Tensor, MixerState]:
        out, state = self.mixer(self.norm(h), inject, state)
        return h + out, state


State = list[MixerState]  # one per layer


@dataclass
class PieceStats:
    tokens: int
    iterations: int  # f evaluations, the final one included
    residual: float  # at the final evaluation's input
    converged: bool


@dataclass
class Reading:
    hidden: Tensor  # (L, d_model): what the head reads
    state: State  # after the last token
    pieces: list[PieceStats]


class ImplicitLM(nn.Module):
    """An implicit (or, with kind "explicit", a plain) Mamba2 LM over one sequence of token ids."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        if cfg.kind == "implicit":
            self.injection_norm = RMSNorm(cfg.d_model, 1e-5)
            self.injection = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=True)

    def empty_state(self) -> State:
        # The ignore: nn.ModuleList yields plain Modules to a type checker, and this file imports torch alone (no
        # typing.cast: test_the_one_file_model_shares_no_code_with_the_production_path).
        return [layer.mixer.empty_state(self.embedding.weight) for layer in self.layers]  # type: ignore[union-attr, operator]

    def stack(self, h: Tensor, inject: Tensor | None, state: State) -> tuple[Tensor, State]:
        """RMSNorm_f(h_L) of the blocks from h_0 = h, and each layer's state after the last token."""
        new_state = []
        for layer, s in zip(self.layers, state):
            h, s = layer(h, inject, s)
            new_state.append(s)
        return self.norm_f(h), new_state

    def f(self, z: Tensor, u: Tensor, state: State) -> tuple[Tensor, State]:
        """The map whose fixed point is the reading of a piece: z (T, d_model) from the frozen state."""
        return self.stack(z, u, state)

    def solve_piece(self, u: Tensor, state: State, max_iter: int, tol: float, tau: float
                    ) -> tuple[Tensor, State, PieceStats]:
        """The piece's fixed point from z = 0: damped updates until the residual is below tol or max_iter - 1
        updates are made, then the final evaluation, which commits the piece's state."""
        z = torch.zeros(u.shape[0], self.cfg.d_model, dtype=u.dtype)
        converged, updates = False, 0
        while updates < max_iter - 1:
            fz, _ = self.f(z, u, state)
            residual = (fz - z).norm() / (1e-6 + z.norm())
            z = (1 - tau) * z + tau * fz
            updates += 1
            if tol > 0 and residual < tol:
                converged = True
                break
        fz, state = self.f(z, u, state)
        residual = float((fz - z).norm() / (1e-6 + z.norm()))
        return fz, state, PieceStats(u.shape[0], updates + 1, residual, converged or residual < tol)

    def read(self, ids: Tensor, piece: int, max_iter: int, tol: float = 0.0, tau: float = 0.8,
             state: State | None = None) -> Reading:
        """The reading of ids (L,) in pieces of `piece` tokens (L: simultaneous, 1: sequential, else blockwise)."""
        state = state if state is not None else self.empty_state()
        if self.cfg.kind == "explicit":
            hidden, state = self.stack(self.embedding(ids), None, state)
            return Reading(hidden, state, [])
        u = self.injection(self.injection_norm(self.embedding(ids)))
        outputs, stats = [], []
        for start in range(0, len(ids), piece):
            out, state, solved = self.solve_piece(u[start: start + piece], state, max_iter, tol, tau)
            outputs.append(out)
            stats.append(solved)
        return Reading(torch.cat(outputs), state, stats)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)
