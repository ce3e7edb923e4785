"""Explicit and implicit Mamba2 language models: parameters and semantics (the production path).

ExplicitLM: embedding -> N pre-norm residual Mamba2 blocks -> RMSNorm -> LM head.
ImplicitLM: the same stack used as a map f(z; u) = RMSNorm_f(blocks(z; u)) and iterated to a fixed point,
with the input entering only through the injection u = W_u RMSNorm_u(emb) + b_u, added to every layer's
in_proj output on every iteration. The residual stream and the fixed-point iterate stay in float32 whatever
the parameter dtype.

Both models share one interface:
    forward(input_ids, budget=None, lengths=None, state=None, anytime=(), want_state=True, ops=torch_ops) -> LMOutput
    step(token_ids, state, budget=None, ops=torch_ops) -> LMOutput          (one token, decoding)
    logits(hidden) -> float32 logits over the padded vocabulary
An implicit model reads a sequence in the way its Budget's mode says (reading.py); step() is the reading of one
token, so decoding and sequential scoring are the same computation. The kernels are an argument (`ops`, a backend
module); which ones run, and whether a computation is replayed from CUDA graphs, is the runtime's business
(runtime/): these classes know nothing of it. The same model in one plain file, the oracle the tests hold this one
to, is implicit_lm.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from .backends import torch_ops
from .config import Budget, ModelConfig
from .errors import ConfigError
from .exits import ExitPoint
from .mamba2 import Mamba2, MixerState, Ops, State
from .norms import RMSNorm
from .reading import Readout, ReadStats, read
from .tensors import compute_dtype, valid_mask


@dataclass
class LMOutput:
    hidden: Tensor  # (B, L, d_model) after the final norm, float32; (B, d_model) from step()
    state: State | None  # recurrent state after each sequence's last valid token (None: not asked for)
    stats: ReadStats | None = None  # implicit only: solver statistics per (sequence, piece), see reading.py
    anytime: dict[int | ExitPoint, Readout] = field(default_factory=dict)  # budget k (exit point) -> its reading


class Block(nn.Module):
    """h -> h + Mixer(RMSNorm(h)): a pre-norm residual block. The stack (_LM.stack) runs it, fusing each residual
    add with the next block's norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2(cfg)


class _LM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    @property
    def blocks(self) -> Sequence[Block]:
        """self.layers as what it holds (to a type checker an nn.ModuleList holds plain Modules)."""
        return cast("Sequence[Block]", self.layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def cd(self) -> torch.dtype:
        """Residual / iterate dtype: float32, or float64 for a float64 model."""
        return compute_dtype(self.embedding.weight)

    def stack(self, h: Tensor, inject: Tensor | None = None, state: State | None = None, valid: Tensor | None = None,
              step: bool = False, in_place: bool = False, commit: bool = True, ops: Ops = torch_ops
              ) -> tuple[Tensor, State | None]:
        """RMSNorm_f(h_L) with h_l = h_{l-1} + Mixer_l(RMSNorm_l(h_{l-1}); inject), h_0 = h, and each layer's new
        recurrent state (None unless commit). h: (B, L, D) (or (B, D) with step=True, against `state`; valid is then
        (B,): the rows that take the step, see Mamba2.step). The residual stays in float32; each residual add is fused
        with the next norm (backend add_rmsnorm: one kernel on the GPU)."""
        out, residual, new_state = None, h.to(self.cd), []
        for i, layer in enumerate(self.blocks):
            normed, residual = ops.add_rmsnorm(out, residual, layer.norm.weight, layer.norm.eps, self.dtype)
            s = None if state is None else state[i]
            if step:
                # a step always has a state
                out, s = layer.mixer.step(normed, cast(MixerState, s), inject, in_place, commit, ops, valid)
            else:
                out, s = layer.mixer(normed, inject, s, valid, commit, ops)
            new_state.append(s)
        final, _ = ops.add_rmsnorm(out, residual, self.norm_f.weight, self.norm_f.eps, self.cd)
        return final, cast(State, new_state) if commit else None  # each layer's state is set when commit

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden.to(self.lm_head.weight.dtype)).float()

    def empty_state(self, batch: int) -> State:
        return [layer.mixer.empty_state(batch) for layer in self.blocks]

    @property
    def state_dtype(self) -> torch.dtype:
        """Storage dtype of the SSM states: the compute dtype, or bfloat16 once set (Mamba2.state_dtype)."""
        return self.blocks[0].mixer.sd

    def set_state_dtype(self, dtype: torch.dtype | None) -> None:
        """Store the SSM states in `dtype` (bfloat16 or the compute dtype; None: the compute dtype). States made
        before keep their dtype; the kernels read either."""
        if dtype not in (None, torch.bfloat16, self.cd):
            raise ValueError(f"state dtype must be bfloat16 or {self.cd}, got {dtype}")
        for layer in self.blocks:
            layer.mixer.state_dtype = None if dtype == self.cd else dtype

    def embed(self, ids: Tensor) -> Tensor:
        return self.embedding(ids)

    def check_ids(self, ids: Tensor) -> None:
        """Token ids outside the embedding table are a user error (a tokenizer that does not match)."""
        if not ids.numel():
            return
        low, high = torch.stack(torch.aminmax(ids)).tolist()  # one host synchronisation, not two
        if low < 0 or high >= self.cfg.padded_vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.cfg.padded_vocab_size}) for this checkpoint, "
                             f"got ids in [{low}, {high}]: does the tokenizer match?")


class ExplicitLM(_LM):
    kind = "explicit"

    def forward(self, input_ids: Tensor, budget: Budget | None = None, lengths: Tensor | None = None,
                state: State | None = None, anytime=(), want_state: bool = True, ops: Ops = torch_ops) -> LMOutput:
        """input_ids (B, L), right padded to `lengths` (B,) if given. want_state=False (scoring): the returned state is
        None, and no layer computes its final conv window and SSM state."""
        _no_budget(budget, anytime)
        self.check_ids(input_ids)
        hidden, new_state = self.stack(self.embed(input_ids), None, state, valid_mask(lengths, input_ids.shape[1]),
                                       commit=want_state, ops=ops)
        return LMOutput(hidden, new_state)

    def step(self, token_ids: Tensor, state: State, budget: Budget | None = None, ops: Ops = torch_ops) -> LMOutput:
        """token_ids (B,) -> hidden (B, d_model): O(1) work per token. `state` may be advanced in place (decoding
        owns it): use the returned state."""
        _no_budget(budget, ())
        hidden, new_state = self.stack(self.embed(token_ids), None, state, step=True, in_place=True, ops=ops)
        return LMOutput(hidden, new_state)


def _no_budget(budget, anytime) -> None:
    if budget is not None or anytime:
        raise ConfigError("an explicit model takes no fixed-point budget")


class ImplicitLM(_LM):
    kind = "implicit"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.injection_norm = RMSNorm(cfg.d_model, 1e-5)  # the reference hard-codes this eps
        self.injection = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=True)

    def inject(self, ids: Tensor) -> Tensor:
        """u = W_u RMSNorm_u(Emb(ids)) + b_u: (..., d_in_proj) in the parameter dtype, computed once."""
        x = self.injection_norm(self.embed(ids)).to(self.injection.weight.dtype)
        return self.injection(x)

    def f(self, z: Tensor, u: Tensor, state: State | None = None, valid: Tensor | None = None,
          commit: bool = True, ops: Ops = torch_ops) -> tuple[Tensor, State | None]:
        """The map over whole sequences: z (B, L, D) -> RMSNorm_f(blocks(z; u)), one parallel scan per layer, and
        the recurrent states it ends in (None unless commit)."""
        return self.stack(z, u, state, valid, commit=commit, ops=ops)

    def f_step(self, z: Tensor, u: Tensor, state: State, commit: bool = True, ops: Ops = torch_ops,
               in_place: bool = False, valid: Tensor | None = None) -> tuple[Tensor, State | None]:
        """The map for one token: z (B, D) against the recurrent states of the previous token. in_place: a commit
        may advance `state`'s SSM states in place (use the returned state); valid (B,): the rows that take the step,
        the others keep their state (Mamba2.step)."""
        return self.stack(z, u, state, valid, step=True, in_place=in_place, commit=commit, ops=ops)

    def forward(self, input_ids: Tensor, budget: Budget | None = None, lengths: Tensor | None = None,
                state: State | None = None, anytime=(), want_state: bool = True, ops: Ops = torch_ops) -> LMOutput:
        """input_ids (B, L), right padded to `lengths` (B,) if given; `state` continues earlier tokens.

        anytime: budgets k <= max_iter whose readings to return as well, read off the one trajectory (simultaneous
        mode with tol = 0 only: that is when they equal separate runs at each k); max_iter is included. ExitPoints
        among them: the readings of runs that stop on a criterion at a threshold (capped at max_iter), read off it too.
        want_state=False (scoring): the state may be returned as None, which spares a one-piece reading's final
        evaluation its conv windows and SSM states.
        """
        budget = budget or self.cfg.default_budget()
        keep = budget.anytime_budgets(anytime)
        self.check_ids(input_ids)
        r = read(self, self.inject(input_ids), budget, lengths, state, keep, want_state, ops)
        return LMOutput(r.hidden, r.state, r.stats, r.anytime)

    def step(self, token_ids: Tensor, state: State, budget: Budget | None = None, ops: Ops = torch_ops) -> LMOutput:
        """token_ids (B,) -> hidden (B, d_model): the reading of one more token (the generation path)."""
        budget = budget or self.cfg.default_budget()
        r = read(self, self.inject(token_ids)[:, None], budget, None, state, ops=ops)
        return LMOutput(r.hidden[:, 0], r.state, r.stats)


def build_model(cfg: ModelConfig) -> ExplicitLM | ImplicitLM:
    """A freshly initialised model (loaders overwrite every parameter)."""
    model = (ImplicitLM if cfg.kind == "implicit" else ExplicitLM)(cfg)
    initialize(model)
    return model


def initialize(model: _LM, std: float = 0.02) -> None:
    """mamba_ssm's scheme: small embeddings (the head is tied to them), zero biases, and out_proj rescaled by
    1/sqrt(n_layer) so the residual stream does not grow with depth."""
    import math

    with torch.no_grad():
        nn.init.normal_(model.embedding.weight, std=std)
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for layer in model.blocks:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight /= math.sqrt(model.cfg.n_layer)
