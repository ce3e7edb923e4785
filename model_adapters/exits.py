"""Exit criteria: when a piece (a sequence, a token, a block: reading.py) stops iterating, in one registry.

After each f evaluation k a solve measures its criterion per row (fixed_point.solve); a row whose value meets the
budget's threshold (Budget.tol) leaves the loop and gets the final evaluation. `Budget.exit` names the criterion:

    residual       ||f(z) - z|| / (1e-6 + ||z||) over the piece's valid positions < tol  (the default: the reference's)
    residual_abs   max over the piece's valid tokens of ||f(z)_t - z_t||                < tol
    kl             max over the piece's valid tokens of KL(p_k || p_{k-1})               < tol
    entropy        max over the piece's valid tokens of |H(p_k) - H(p_{k-1})|            < tol
    argmax         every valid token's argmax unchanged over the last tol evaluations (tol an integer >= 1)

p_k is the next-token distribution read from evaluation k: softmax(head(f(z_k))), over the padded vocabulary as
scoring reads it. The per-token criteria take the max over a piece's tokens (the min of the argmax streak): a piece
stops when every one of its tokens has settled, whatever the reading (per sequence in the simultaneous reading, per
token in the sequential one, per block in the blockwise one). The distribution criteria are undefined at a piece's
first evaluation (no previous distribution) and never stop there.

Cost: kl, entropy and argmax apply the LM head to every row's f(z) at every evaluation, the final one included (a
head evaluation per iteration: at the bundled sizes about as much as a layer, for a large vocabulary more than the
whole stack), and kl keeps the previous log-probabilities of every row (rows x tokens x vocabulary floats). The
residual criteria cost a norm. Iteration counts report f evaluations only.

A criterion is a registration (register_exit(ExitSpec(...))), here or from outside the package; Budget validation,
model_args and the sweep's --exit read EXITS. The masked solves that CUDA graphs capture test the relative residual
only: the runtime solves a budget of another criterion eagerly (runtime/runtime.py says so in its log).

The relative residual's definition lives here too (solve, the masked update and training use it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .tensors import broadcast_mask, compute_dtype

EPS = 1e-6  # the reference's denominator guard in the relative residual
DEFAULT_EXIT = "residual"

Head = Callable[[Tensor], Tensor]  # hidden (..., d_model) -> float32 logits (..., vocab)


def row_norms(t: Tensor, valid: Tensor | None) -> Tensor:
    """Frobenius norm of each batch row of t (B, ...), counting only valid (B, L) positions."""
    t = t.to(compute_dtype(t))
    if valid is not None:
        t = t * broadcast_mask(valid, t)
    return torch.linalg.vector_norm(t.flatten(1), dim=1)


def relative_residual(fz: Tensor, z: Tensor, valid: Tensor | None = None) -> Tensor:
    return row_norms(fz - z, valid) / (EPS + row_norms(z, valid))


class ExitTest(Protocol):
    """One solve's criterion. value() is called once per f evaluation with the rows it covered (`rows`: their
    indices in the solve's batch, None for every row in order), their iterates z and f(z) ((R, D) for a one-token
    piece, (R, T, D) for a longer one) and valid (R, T) or None; a stateful test keeps what it needs per batch row."""

    def value(self, rows: Tensor | None, z: Tensor, fz: Tensor, valid: Tensor | None) -> Tensor:
        """(R,) the criterion after this evaluation."""
        ...

    def stops(self, value: Tensor, tol: float) -> Tensor:
        """(R,) bool: the value meets the threshold."""
        ...


@dataclass(frozen=True)
class ExitSpec:
    name: str  # the Budget's `exit`, the model_arg `exit=...`
    make: Callable[[int, Any], ExitTest]  # (rows of the solve, head: a Head where needs_head) -> a fresh test
    needs_head: bool = False  # reads the next-token distribution (a head evaluation per iteration)
    counts_iterations: bool = False  # the threshold is a number of evaluations (an integer >= 1), met from above
    description: str = ""


EXITS: dict[str, ExitSpec] = {}


def register_exit(spec: ExitSpec) -> ExitSpec:
    if spec.name in EXITS and EXITS[spec.name] != spec:
        raise ValueError(f"an exit criterion named {spec.name!r} is registered already")
    EXITS[spec.name] = spec
    return spec


def exit_test(name: str, batch: int, head: Head | None = None) -> ExitTest:
    """A fresh test of criterion `name` for a solve of `batch` rows; head: the LM head, for the criteria that read
    the next-token distribution."""
    spec = EXITS[name]
    if spec.needs_head and head is None:
        raise ValueError(f"exit={name} reads the next-token distribution: the solve needs the model's head")
    return spec.make(batch, head)


def threshold_problem(name: str, tol) -> str | None:
    """Why `tol` is not a threshold of criterion `name` (None: it is). tol 0 is a fixed budget, which no criterion
    stops: only the default names it."""
    if name not in EXITS:
        return f"exit must be one of {sorted(EXITS)}, got {name!r}"
    if name != DEFAULT_EXIT and not tol > 0:
        return (f"exit={name} needs tol > 0, its threshold (tol=0 is a fixed budget, which no criterion stops early: "
                f"leave exit out), got tol={tol!r}")
    if EXITS[name].counts_iterations and tol and (tol < 1 or not float(tol).is_integer()):
        return f"exit={name} counts evaluations: tol must be an integer >= 1, got tol={tol!r}"
    return None


class ExitPoint(NamedTuple):
    """An anytime threshold: what a run at this criterion and tol (at the trajectory's max_iter) returns, read off a
    tol-0 trajectory (Budget.anytime_budgets; exact for one simultaneous piece)."""

    exit: str
    tol: float

    @property
    def label(self) -> str:
        """"kl=0.001", "argmax=2": how results name the point (metrics `acc@kl=0.001`)."""
        return f"{self.exit}={threshold_text(self.tol)}"


Point = int | ExitPoint  # an anytime point of a trajectory: a max_iter k, or a criterion at a threshold


def point_name(point: Point) -> str:
    """How results and logs name an anytime point: "4" for max_iter 4, "kl=0.001" for an exit point."""
    return point.label if isinstance(point, ExitPoint) else str(point)


def threshold_text(tol: float) -> str:
    """A threshold as text that reads back as the same number (repr), integers without a decimal point."""
    return str(int(tol)) if float(tol).is_integer() else repr(float(tol))


def parse_exit_point(text: str) -> ExitPoint:
    """"kl:0.001" or "kl=0.001" -> ExitPoint("kl", 0.001), checked."""
    name, sep, value = text.replace("=", ":").partition(":")
    try:
        tol = float(value)
    except ValueError:
        tol = math.nan
    problem = threshold_problem(name.strip(), tol) if sep and tol == tol else \
        f"an anytime exit is CRITERION:THRESHOLD (e.g. kl:0.001), got {text!r}"
    if problem:
        raise ValueError(problem)
    return ExitPoint(name.strip(), tol)


# -- the criteria ----------------------------------------------------------------------------------------------------
class RelativeResidual:
    """||f(z) - z|| / (1e-6 + ||z||) over the row's valid positions: stateless."""

    def value(self, rows: Tensor | None, z: Tensor, fz: Tensor, valid: Tensor | None) -> Tensor:
        return relative_residual(fz, z, valid)

    def stops(self, value: Tensor, tol: float) -> Tensor:
        return value < tol


def _tokens(per_token: Tensor, fz: Tensor) -> Tensor:
    """Per-token values of a one-token piece (fz (R, D): values (R,)) as (R, 1); a longer piece's (R, T) stay."""
    return per_token[:, None] if fz.dim() == 2 else per_token


def over_tokens(per_token: Tensor, valid: Tensor | None, largest: bool = True) -> Tensor:
    """(R, T) per-token values -> (R,) their max (largest) or min over each row's valid tokens."""
    if valid is not None:
        fill = -math.inf if largest else math.inf
        per_token = per_token.masked_fill(~valid, fill)
    return per_token.amax(1) if largest else per_token.amin(1)


class AbsoluteResidual(RelativeResidual):
    """max over the valid tokens of ||f(z)_t - z_t||: stateless."""

    def value(self, rows: Tensor | None, z: Tensor, fz: Tensor, valid: Tensor | None) -> Tensor:
        diff = (fz - z).to(compute_dtype(fz))
        per_token = torch.linalg.vector_norm(diff, dim=-1)
        return over_tokens(_tokens(per_token, fz), valid)


class _Distributions:
    """What the distribution criteria share: the head applied to f(z), and per batch row whether an earlier
    evaluation was seen (the first one has nothing to compare with)."""

    def __init__(self, batch: int, head: Head):
        self.head, self.batch = head, batch
        self.seen: Tensor | None = None

    def log_probs(self, fz: Tensor) -> Tensor:
        """(R, [T,] V) log-probabilities of the next token, in the iterate's compute dtype (float32; float64 for a
        float64 model, so that the equivalence tests compare criteria exactly)."""
        return F.log_softmax(self.head(fz).to(compute_dtype(fz)), dim=-1)

    def buffer(self, like: Tensor, dtype=None) -> Tensor:
        return torch.zeros(self.batch, *like.shape[1:], dtype=dtype or like.dtype, device=like.device)

    def first_seen(self, rows: Tensor | None, device) -> tuple[Tensor, slice | Tensor]:
        """(R,) bool: the rows seen before this evaluation, and the index of the rows (then marked seen)."""
        if self.seen is None:
            self.seen = torch.zeros(self.batch, dtype=torch.bool, device=device)
        index = slice(None) if rows is None else rows
        seen = self.seen[index].clone()
        self.seen[index] = True
        return seen, index


class KLChange(_Distributions):
    """max over the valid tokens of KL(p_k || p_{k-1}); inf at a row's first evaluation."""

    def __init__(self, batch: int, head: Head):
        super().__init__(batch, head)
        self.previous: Tensor | None = None  # (B, [T,] V) log-probabilities of each row's latest evaluation

    def value(self, rows: Tensor | None, z: Tensor, fz: Tensor, valid: Tensor | None) -> Tensor:
        logp = self.log_probs(fz)
        if self.previous is None:
            self.previous = self.buffer(logp)
        seen, index = self.first_seen(rows, fz.device)
        kl = (logp.exp() * (logp - self.previous[index])).sum(-1)
        self.previous[index] = logp
        return torch.where(seen, over_tokens(_tokens(kl, fz), valid), math.inf)

    def stops(self, value: Tensor, tol: float) -> Tensor:
        return value < tol


class EntropyChange(KLChange):
    """max over the valid tokens of |H(p_k) - H(p_{k-1})|; inf at a row's first evaluation."""

    def value(self, rows: Tensor | None, z: Tensor, fz: Tensor, valid: Tensor | None) -> Tensor:
        logp = self.log_probs(fz)
        entropy = -(logp.exp() * logp).sum(-1)  # (R, [T])
        if self.previous is None:
            self.previous = self.buffer(entropy)
        seen, index = self.first_seen(rows, fz.device)
        change = (entropy - self.previous[index]).abs()
        self.previous[index] = entropy
        return torch.where(seen, over_tokens(_tokens(change, fz), valid), math.inf)


class ArgmaxStreak(_Distributions):
    """The number of successive evaluations over which every valid token's argmax has stayed the same (the
    smallest streak over the piece's tokens); stops once it reaches tol."""

    def __init__(self, batch: int, head: Head):
        super().__init__(batch, head)
        self.argmax: Tensor | None = None  # (B, [T]) each row's latest argmax
        self.streak: Tensor | None = None  # (B, [T]) evaluations it has stayed the same

    def value(self, rows: Tensor | None, z: Tensor, fz: Tensor, valid: Tensor | None) -> Tensor:
        top = self.head(fz).argmax(-1)
        if self.argmax is None or self.streak is None:
            self.argmax, self.streak = self.buffer(top), self.buffer(top)
        seen, index = self.first_seen(rows, fz.device)
        same = broadcast_mask(seen, top) & (top == self.argmax[index])
        streak = torch.where(same, self.streak[index] + 1, 0)
        self.argmax[index], self.streak[index] = top, streak
        return over_tokens(_tokens(streak, fz).float(), valid, largest=False)

    def stops(self, value: Tensor, tol: float) -> Tensor:
        return value >= tol


register_exit(ExitSpec("residual", lambda batch, head: RelativeResidual(),
                       description="relative residual ||f(z) - z|| / (1e-6 + ||z||) over the piece (the reference's)"))
register_exit(ExitSpec("residual_abs", lambda batch, head: AbsoluteResidual(),
                       description="max over the piece's tokens of the absolute residual ||f(z)_t - z_t||"))
register_exit(ExitSpec("kl", KLChange, needs_head=True,
                       description="max over the piece's tokens of KL(p_k || p_k-1) between successive evaluations"))
register_exit(ExitSpec("entropy", EntropyChange, needs_head=True,
                       description="max over the piece's tokens of the change of the next-token entropy"))
register_exit(ExitSpec("argmax", ArgmaxStreak, needs_head=True, counts_iterations=True,
                       description="every token's argmax unchanged over the last tol evaluations"))
