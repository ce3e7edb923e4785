"""Typed configuration: the model architecture (one dataclass for both kinds) and the fixed-point Budget.

Both reject unknown keys with a message that lists the valid ones, so a typo in a config.json or in
lm-eval's model_args fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, cast

from .errors import ConfigError
from .exits import DEFAULT_EXIT, EXITS, ExitPoint, threshold_problem
from .fixed_point import SOLVERS
from .readings import READINGS, reading_unit

# max_iter's valid range is [1, MAX_ITER_LIMIT]: a cap far above any budget worth scoring, so that a typo
# (max_iter=40000) is refused instead of running for hours; above COSTLY_MAX_ITER a run is told what it may cost.
MAX_ITER_LIMIT = 4096
COSTLY_MAX_ITER = 256

KINDS = ("explicit", "implicit")
READING_PARAMS = ("block_size",)  # Budget fields that readings may declare as their parameters (readings.py)


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
    # The default fixed-point budget stored with an implicit checkpoint (see Budget); a dict is parsed on construction.
    budget: Budget | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {self.kind!r}")
        _check_model_fields(self)  # before the arithmetic below, so a wrong type is named, not a TypeError
        if self.d_inner % self.headdim:
            raise ConfigError(f"expand*d_model={self.d_inner} must be a multiple of headdim={self.headdim}")
        if self.nheads % self.ngroups:
            raise ConfigError(f"nheads={self.nheads} must be a multiple of ngroups={self.ngroups}")
        if isinstance(self.budget, dict):  # parsed once, here: a forward never re-reads a dict
            object.__setattr__(self, "budget", Budget.from_dict(self.budget) if self.budget else None)
        if self.kind == "explicit" and self.budget is not None:
            raise ConfigError("an explicit model has no fixed-point budget; remove 'budget' from its config")
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise ConfigError(f"budget must be a mapping of Budget fields, got {self.budget!r}")

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
        return self.budget or Budget()

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model config") -> ModelConfig:
        reject_unknown_keys(where, d, _field_names(cls))
        d = dict(d)
        if "A_init_range" in d:
            d["A_init_range"] = tuple(d["A_init_range"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["A_init_range"] = list(self.A_init_range)
        d["budget"] = self.budget.to_dict() if self.budget is not None else {}
        return d

    @classmethod
    def tiny(cls, kind: str = "explicit", **overrides) -> ModelConfig:
        """A model small enough for unit tests: 2 layers, 2 groups, odd-sized chunks."""
        base: dict[str, Any] = dict(kind=kind, vocab_size=37, pad_vocab_size_multiple=8, d_model=32, n_layer=2,
                                    d_state=8, expand=2, headdim=8, ngroups=2, chunk_size=16)
        if kind == "implicit":
            base["budget"] = {"max_iter": 8, "tol": 0.0, "tau": 0.8}
        base.update(overrides)
        return cls(**base)


@dataclass(frozen=True)
class Budget:
    """How an implicit model is iterated. An argument of every forward: a sweep never mutates a model.

    max_iter: number of f evaluations, the final one (whose output feeds the LM head) included. This is
        the reference code's `f_thres`: z0 = 0, max_iter - 1 solver updates, then one final f.
    tol: stop early once ||f(z) - z|| / (1e-6 + ||z||) < tol, per sequence and piece; 0 never stops early. With
        another exit criterion, tol is that criterion's threshold (see `exit`).
    tau: damping, z <- (1 - tau) z + tau f(z) (also Anderson's mixing weight).
    solver: a name in fixed_point.SOLVERS: "fixed_point" (damped iteration, the reference semantics), "backoff"
        (damped iteration at tau, where a row that stalls for 16 updates goes on at 0.9 times its damping: the same
        fixed point, reached where tau overshoots it; rows that do not stall read as with "fixed_point") or
        "anderson" (Anderson acceleration).
    mode: how the sequence is read: a reading of the registry (readings.py): "simultaneous" (all tokens iterated
        together, one parallel scan per f), "sequential" (token by token with the recurrent states frozen at the
        previous token: the RNN and generation reading) or "blockwise" (blocks of block_size tokens, each iterated
        simultaneously from the state the previous block committed).
    block_size: tokens per block; set exactly when the reading declares it as a parameter (blockwise).
    anderson_m: Anderson's history length.
    exit: the criterion a piece stops on, a name in exits.EXITS: "residual" (the relative residual above, the
        default), "residual_abs", "kl", "entropy" or "argmax", each at threshold tol (> 0: a fixed budget, tol 0,
        stops on nothing, so it takes the default). tol is the threshold rather than a field of its own because it
        already is one everywhere: tol 0 is what makes a budget fixed (anytime trajectories, CUDA graphs), tol > 0
        what makes it adaptive (the sweep's grid, the report's adaptive rows, the unconverged warnings), and a
        second number would leave one of the two meaningless in every budget. The default is left out of to_dict()
        and the sweep's folder names, so residual budgets keep their keys.
    """

    max_iter: int = 16
    tol: float = 0.0
    tau: float = 0.8
    solver: str = "fixed_point"
    mode: str = "simultaneous"
    block_size: int | None = None
    anderson_m: int = 5
    exit: str = DEFAULT_EXIT

    def __post_init__(self):
        if not _is_int(self.max_iter) or not 1 <= self.max_iter <= MAX_ITER_LIMIT:
            raise ConfigError(f"max_iter must be an integer in [1, {MAX_ITER_LIMIT}], got {self.max_iter!r}")
        if not _is_real(self.tol) or not (0.0 <= self.tol < math.inf):
            raise ConfigError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if not _is_real(self.tau) or not (0.0 < self.tau <= 1.0):
            raise ConfigError(f"tau must be a number in (0, 1], got {self.tau!r}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {sorted(SOLVERS)}, got {self.solver!r}")
        if self.mode not in READINGS:
            raise ConfigError(f"mode must be one of {list(READINGS)}, got {self.mode!r}")
        for name in READING_PARAMS:
            _check_reading_param(self, name)
        if not _is_int(self.anderson_m) or self.anderson_m < 1:
            raise ConfigError(f"anderson_m must be an integer >= 1, got {self.anderson_m!r}")
        problem = threshold_problem(self.exit, self.tol) if isinstance(self.exit, str) else \
            f"exit must be one of {sorted(EXITS)}, got {self.exit!r}"
        if problem:
            raise ConfigError(problem)

    def piece_size(self, length: int) -> int:
        """Tokens per piece when reading `length` tokens, as the reading says (all of them, one, block_size)."""
        return READINGS[self.mode].piece_size(self, length)

    def anytime_budgets(self, budgets) -> tuple[int | ExitPoint, ...]:
        """The budgets one trajectory serves exactly, validated: `budgets` (max_iter values k, and ExitPoints: a
        criterion at a threshold, capped at this max_iter) plus max_iter; the k sorted, then the points. Only a
        single simultaneous piece at tol = 0 has one trajectory whose evaluation k is the run at max_iter = k, and
        whose rows each stop where a run at a threshold stops them."""
        budgets = tuple(budgets)
        if not budgets:
            return ()
        points = tuple(sorted({b for b in budgets if isinstance(b, ExitPoint)}))
        budgets = tuple(b for b in budgets if not isinstance(b, ExitPoint))
        if self.mode != "simultaneous" or self.tol != 0:
            raise ConfigError("anytime budgets need mode=simultaneous and tol=0 (only then is one trajectory exact "
                              f"for every budget); got mode={self.mode}, tol={self.tol}. A grid of budgets in any "
                              "reading, one run each: implicit-eval sweep CKPT --modes MODE --max-iter 1 2 4 ... "
                              "--tol TOL")
        bad = [k for k in budgets if not _is_int(k) or not 1 <= k <= self.max_iter]
        if bad:
            raise ConfigError(f"anytime budgets must be integers in [1, max_iter={self.max_iter}], got {bad}")
        for p in points:
            problem = threshold_problem(p.exit, p.tol) if p.tol > 0 else f"an anytime exit needs a threshold > 0: {p}"
            if problem:
                raise ConfigError(problem)
        return tuple(sorted(set(budgets) | {self.max_iter})) + points

    def at(self, point: int | ExitPoint) -> Budget:
        """The budget an anytime point of this (tol-0) budget stands for: max_iter k, or a criterion at a threshold."""
        if isinstance(point, ExitPoint):
            return self.replace(exit=point.exit, tol=point.tol)
        return self.replace(max_iter=point)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "budget") -> Budget:
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping of budget fields, got {d!r}")
        reject_unknown_keys(where, d, _field_names(cls))
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Every field; block_size only where it applies and exit only where it is not the default, so a budget's
        key is the same as before blockwise and exit criteria."""
        d = dataclasses.asdict(self)
        if d["block_size"] is None:
            del d["block_size"]
        if d["exit"] == DEFAULT_EXIT:
            del d["exit"]
        return d

    def replace(self, **changes) -> Budget:
        """This budget with `changes`. A change of reading drops the parameters the new reading does not take (a
        blockwise budget read sequentially loses its block size), unless they are changed too."""
        reject_unknown_keys("budget", changes, _field_names(Budget))
        mode = changes.get("mode", self.mode)
        if mode in READINGS:
            for name in READING_PARAMS:
                if name not in READINGS[mode].params and name not in changes:
                    changes[name] = None
        return dataclasses.replace(self, **changes)


def resolve_budget(default: Budget, overrides: dict[str, Any]) -> Budget:
    """The budget of a run: the checkpoint's default with the user's overrides (model_args, flags), validated as a
    whole. One function for the adapter and `implicit-eval run`: overrides are checked against the checkpoint's
    budget, not a blank one (block_size=16 alone is valid for a checkpoint that reads blockwise)."""
    return default.replace(**overrides)


def cost_notice(budget: Budget, default_max_iter: int | None = None) -> str | None:
    """What a budget above COSTLY_MAX_ITER may cost, for a warning before the run; None below it. One pass is one
    evaluation of the layer stack, an explicit model's whole forward."""
    if budget.max_iter <= COSTLY_MAX_ITER:
        return None
    unit = reading_unit(budget.mode)
    stops = "tol=0 never stops early" if budget.tol == 0 else f"fewer where a {unit} converges to tol={budget.tol:g}"
    default = "" if default_max_iter is None else f"the checkpoint's default is max_iter={default_max_iter}; "
    return (f"max_iter={budget.max_iter} at tol={budget.tol:g}: up to {budget.max_iter} forward passes per {unit} "
            f"({stops}); {default}valid up to {MAX_ITER_LIMIT}")


def _check_reading_param(budget: Budget, name: str) -> None:
    """A reading parameter is set, to an integer >= 1, exactly when the budget's reading declares it."""
    value, takes = getattr(budget, name), name in READINGS[budget.mode].params
    if takes and (not _is_int(value) or value < 1):
        raise ConfigError(f"mode={budget.mode} needs {name}, an integer >= 1, got {value!r}")
    if not takes and value is not None:
        users = [r for r, spec in READINGS.items() if name in spec.params]
        raise ConfigError(f"{name} applies to mode={'/'.join(users)} only, got mode={budget.mode}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)


def _check_model_fields(cfg: ModelConfig) -> None:
    """Every ModelConfig field against its annotation, so a wrong-typed config.json value ("abc" for an eps, a
    float where an int belongs, "yes" for a flag) fails at load naming the field instead of as a TypeError at
    the first forward. Annotations are strings here (`from __future__ import annotations`); kind and budget
    have checks of their own."""
    for f in dataclasses.fields(cfg):
        rule = _MODEL_FIELD_RULES.get(cast(str, f.type))  # a string: see above
        value = getattr(cfg, f.name)
        if rule is not None and not rule[0](value):
            raise ConfigError(f"{f.name} must be {rule[1]}, got {value!r}")


def _positive_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < math.inf


def _positive_range(x) -> bool:
    """A (low, high) pair with 0 < low <= high: A is drawn uniformly from it and stored as log(A)."""
    return (isinstance(x, (tuple, list)) and len(x) == 2 and all(_positive_number(v) for v in x)
            and x[0] <= x[1])


_MODEL_FIELD_RULES = {
    "int": (lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 1, "a positive integer"),
    "float": (_positive_number, "a finite number > 0"),
    "bool": (lambda x: isinstance(x, bool), "true or false"),
    "tuple[float, float]": (_positive_range, "a pair [low, high] of finite numbers with 0 < low <= high"),
}
