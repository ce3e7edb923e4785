"""Typed configuration: the model architecture (one dataclass for both kinds) and the fixed-point Budget.

Both reject unknown keys with a message that lists the valid ones, so a typo in a config.json or in
lm-eval's model_args fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

KINDS = ("explicit", "implicit")
SOLVERS = ("fixed_point", "anderson")
MODES = ("simultaneous", "sequential")


class ConfigError(ValueError):
    """A user-supplied configuration value is invalid; the message says what was expected."""


def reject_unknown_keys(where: str, given: dict, valid: list[str] | tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an explicit or implicit Mamba2 LM (pure Mamba2 blocks, no MLP).

    Field names follow mamba_ssm's Mamba2 where one exists, so checkpoints map one to one.
    """

    kind: str = "explicit"  # "explicit": one pass through the stack; "implicit": iterate it to a fixed point
    vocab_size: int = 32  # real vocabulary (the tokenizer's); logits beyond it are padding
    pad_vocab_size_multiple: int = 1  # embedding rows are padded up to a multiple of this, as mamba_ssm does
    d_model: int = 64
    n_layer: int = 1
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    headdim: int = 16
    ngroups: int = 1
    chunk_size: int = 64  # SSD chunk length; any sequence length works, this only trades memory for speed
    D_has_hdim: bool = False  # D per channel (True) or per head (False, mamba_ssm's default)
    rmsnorm: bool = True  # gated grouped RMSNorm before out_proj; False gates with SiLU(z) only
    conv_bias: bool = True
    bias: bool = False  # bias of in_proj and out_proj
    norm_eps: float = 1e-5  # block and final RMSNorms
    mixer_norm_eps: float = 1e-5  # the gated RMSNorm inside the mixer (mamba_ssm hard-codes 1e-5 there)
    tie_embeddings: bool = True
    dt_min: float = 0.001  # initialisation range of dt (only used for freshly initialised models)
    dt_max: float = 0.1
    A_init_range: tuple[float, float] = (1.0, 16.0)
    # The default fixed-point budget stored with an implicit checkpoint (see Budget for the meaning).
    budget: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {self.kind!r}")
        positive = ("vocab_size", "pad_vocab_size_multiple", "d_model", "n_layer", "d_state", "d_conv",
                    "expand", "headdim", "ngroups", "chunk_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_inner % self.headdim:
            raise ConfigError(f"expand*d_model={self.d_inner} must be a multiple of headdim={self.headdim}")
        if self.nheads % self.ngroups:
            raise ConfigError(f"nheads={self.nheads} must be a multiple of ngroups={self.ngroups}")
        if self.kind == "explicit" and self.budget:
            raise ConfigError("an explicit model has no fixed-point budget; remove 'budget' from its config")
        if self.kind == "implicit":
            Budget.from_dict(self.budget)  # validates

    # Derived sizes, named as in mamba_ssm.
    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return math.ceil(self.vocab_size / m) * m

    def default_budget(self) -> Budget:
        if self.kind != "implicit":
            raise ConfigError("an explicit model has no fixed-point budget")
        return Budget.from_dict(self.budget)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model config") -> ModelConfig:
        reject_unknown_keys(where, d, _field_names(cls))
        d = dict(d)
        if "A_init_range" in d:
            d["A_init_range"] = tuple(d["A_init_range"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["A_init_range"] = list(self.A_init_range)
        return d

    @classmethod
    def tiny(cls, kind: str = "explicit", **overrides) -> ModelConfig:
        """A model small enough for unit tests: 2 layers, 2 groups, odd-sized chunks."""
        base = dict(kind=kind, vocab_size=37, pad_vocab_size_multiple=8, d_model=32, n_layer=2, d_state=8,
                    expand=2, headdim=8, ngroups=2, chunk_size=16)
        if kind == "implicit":
            base["budget"] = {"max_iter": 8, "tol": 0.0, "tau": 0.8}
        base.update(overrides)
        return cls(**base)


@dataclass(frozen=True)
class Budget:
    """How an implicit model is iterated. An argument of every forward: a sweep never mutates a model.

    max_iter: number of f evaluations, the final one (whose output feeds the LM head) included. This is
        the reference code's `f_thres`: z0 = 0, max_iter - 1 damped updates, then one final f.
    tol: stop a sequence early once ||f(z) - z|| / (1e-6 + ||z||) < tol; 0 never stops early.
    tau: damping, z <- (1 - tau) z + tau f(z) (also Anderson's mixing weight).
    solver: "fixed_point" (damped iteration, the reference semantics) or "anderson" (Anderson acceleration).
    mode: "simultaneous" (all tokens iterated together, one parallel scan per f) or "sequential"
        (token by token with the recurrent states frozen at the previous token: the RNN / generation path).
    anderson_m: Anderson's history length.
    """

    max_iter: int = 16
    tol: float = 0.0
    tau: float = 0.8
    solver: str = "fixed_point"
    mode: str = "simultaneous"
    anderson_m: int = 5

    def __post_init__(self):
        if not isinstance(self.max_iter, int) or isinstance(self.max_iter, bool) or self.max_iter < 1:
            raise ConfigError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        if not _is_real(self.tol) or not (0.0 <= self.tol < math.inf):
            raise ConfigError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if not _is_real(self.tau) or not (0.0 < self.tau <= 1.0):
            raise ConfigError(f"tau must be a number in (0, 1], got {self.tau!r}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.anderson_m, int) or self.anderson_m < 1:
            raise ConfigError(f"anderson_m must be an integer >= 1, got {self.anderson_m!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "budget") -> Budget:
        reject_unknown_keys(where, d, _field_names(cls))
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> Budget:
        reject_unknown_keys("budget", changes, _field_names(Budget))
        return dataclasses.replace(self, **changes)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)
