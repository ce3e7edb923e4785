"""The state-tracking tasks: each is a deterministic automaton read symbol by symbol plus a symbol sampler.

A task's *state after t symbols* is the answer the model must give after reading x_1 ... x_t; documents
keep all prefix states. Tasks:

  * word problems ``s5 a5 s3 z60 a4xz5`` (Merrill, Petty & Sabharwal 2024): symbols are group elements,
    the state is their product (convention in ``algebra.py``);
  * ``a5xm`` (Schöne et al. 2025): A5 x M with the aperiodic monoid M; each symbol's A5 part is the
    identity with probability ``p_identity``;
  * ``parity``, ``even_pairs``, ``cycle_nav``, ``mod_arith`` (Delétang et al. 2023, regular tasks).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache

from ..common import accepts_key, bounded_attempts
from .algebra import FiniteMonoid, named_algebra

# Sequences at least this long are split between training and evaluation by the held-out partition of
# their first KEY_LEN symbols. Shorter ones cannot be split (parity has only 2^12 strings of length 12).
KEY_LEN = 13


@dataclass(frozen=True)
class Automaton:
    """A deterministic automaton: ``transitions[q][x]`` is the next state (-1: symbol not allowed there),
    ``outputs[q]`` the index of the answer symbol reported in state q."""

    transitions: tuple[tuple[int, ...], ...]
    start: int
    outputs: tuple[int, ...]

    def run(self, inputs: list[int]) -> list[int]:
        """Answer indices after each prefix x_1..x_t, t = 1..len(inputs)."""
        state, answers = self.start, []
        for t, x in enumerate(inputs):
            state = self.transitions[state][x]
            if state < 0:
                raise ValueError(f"symbol index {x} is not allowed at position {t}")
            answers.append(self.outputs[state])
        return answers


# A sampler draws the input-symbol index at a position: (position, rng, p_identity) -> index.
Sampler = Callable[[int, random.Random, "float | None"], int]
# The draw of one sequence, (position, rng) -> index, and a plan that makes it: (length, rng) -> Draw.
# Plans let a sequence fix something before its symbols are drawn (where an identity run goes).
Draw = Callable[[int, random.Random], int]
Plan = Callable[[int, random.Random], Draw]


@dataclass(frozen=True)
class TaskSpec:
    """One state-tracking task. ``sample`` is the generator; the rest documents and configures it."""

    name: str
    description: str
    input_symbols: tuple[str, ...]
    answer_symbols: tuple[str, ...]
    automaton: Automaton
    sampler: Sampler
    train_max_len: int  # longest training length L: the id bucket's upper end, oodKx is K*L
    id_min_len: int  # shortest length of the id bucket
    # bump when the generator's output for a fixed seed changes (checked by a test); all tasks are at 2 since
    # their shifted buckets were added (the length buckets' documents did not change)
    version: int
    p_identity: float | None = None  # probability that a symbol's group part is the identity
    supports_p_identity: bool = False
    odd_lengths_only: bool = False  # expressions number-operator-...-number have odd length

    @property
    def chance(self) -> float:
        """Accuracy of guessing uniformly among the answer symbols."""
        return 1.0 / len(self.answer_symbols)

    def with_p_identity(self, p_identity: float | None) -> TaskSpec:
        if p_identity is None:
            return self
        if not self.supports_p_identity:
            raise ValueError(f"p_identity applies to tasks with a group part, not to {self.name!r}")
        if not 0.0 <= p_identity <= 1.0:
            raise ValueError(f"p_identity must be in [0, 1], got {p_identity!r}")
        return dataclasses.replace(self, p_identity=float(p_identity))

    def effective_length(self, length: int) -> int:
        """The length actually generated: odd-only tasks drop one symbol from even lengths (as Delétang)."""
        if length < 1:
            raise ValueError(f"sequence length must be >= 1, got {length}")
        return length - 1 if self.odd_lengths_only and length % 2 == 0 else length

    def draw(self, position: int, rng: random.Random) -> int:
        """The task's own distribution of the symbol at ``position`` (``p_identity`` applied)."""
        return self.sampler(position, rng, self.p_identity)

    def sample_indices(
        self, length: int, rng: random.Random, split: str | None = None, plan: Plan | None = None
    ) -> list[int]:
        """Input-symbol indices of one sequence; ``split`` restricts it to the train or eval partition.

        ``plan`` replaces the task's symbol distribution for this sequence (a shifted bucket's); it is
        called once, before the first symbol, with the generated length.
        """
        length = self.effective_length(length)
        draw = self.draw if plan is None else plan(length, rng)
        head_len = min(length, KEY_LEN)
        for _ in bounded_attempts(f"draw a {self.name} sequence of length {length} in the {split} split"):
            head = [draw(pos, rng) for pos in range(head_len)]
            if length < KEY_LEN or accepts_key(self._key(head), split):
                break
        tail = [draw(pos, rng) for pos in range(head_len, length)]
        return head + tail

    def sample(
        self, length: int, rng: random.Random, split: str | None = None, plan: Plan | None = None
    ) -> tuple[list[str], list[str]]:
        """(symbols, states) of one random sequence: states[t] is the answer after symbols[: t + 1]."""
        inputs = self.sample_indices(length, rng, split, plan)
        return self.symbols(inputs), [self.answer_symbols[a] for a in self.automaton.run(inputs)]

    def symbols(self, inputs: list[int]) -> list[str]:
        return [self.input_symbols[x] for x in inputs]

    def states_of(self, symbols: list[str]) -> list[str]:
        """Prefix states of a given symbol sequence (raises ValueError on symbols outside the task)."""
        index = {s: i for i, s in enumerate(self.input_symbols)}
        unknown = sorted({s for s in symbols if s not in index})
        if unknown:
            raise ValueError(f"symbols {unknown[:5]} are not inputs of task {self.name!r}")
        return [self.answer_symbols[a] for a in self.automaton.run([index[s] for s in symbols])]

    def partition_key(self, symbols: list[str]) -> str:
        """The held-out partition key of a sequence (length >= KEY_LEN): the task and its first symbols."""
        return self.name + "|" + " ".join(symbols[:KEY_LEN])

    def _key(self, head: list[int]) -> str:
        return self.partition_key(self.symbols(head))


# --- word problems -------------------------------------------------------------------------------------


def _group_automaton(algebra: FiniteMonoid) -> Automaton:
    # States and symbols are both the algebra's elements; the state is reported as itself.
    return Automaton(algebra.table, algebra.identity, tuple(range(algebra.order)))


def _uniform_or_identity(algebra: FiniteMonoid) -> Sampler:
    def draw(position: int, rng: random.Random, p_identity: float | None) -> int:
        # With p_identity the identity is drawn first with probability p, else uniformly over all
        # elements (the identity included), as in the reference code.
        if p_identity is not None and rng.random() < p_identity:
            return algebra.identity
        return rng.randrange(algebra.order)

    return draw


def _word_problem(name: str, train_max_len: int, description: str) -> TaskSpec:
    algebra = named_algebra(name)
    return TaskSpec(
        name=name,
        description=description,
        input_symbols=algebra.elements,
        answer_symbols=algebra.elements,
        automaton=_group_automaton(algebra),
        sampler=_uniform_or_identity(algebra),
        train_max_len=train_max_len,
        id_min_len=1,
        version=2,
        supports_p_identity=True,
    )


def _a5xm_sampler() -> Sampler:
    a5, m = named_algebra("a5"), named_algebra("m")

    def draw(position: int, rng: random.Random, p_identity: float | None) -> int:
        hard = p_identity is None or rng.random() >= p_identity
        g = rng.randrange(a5.order) if hard else a5.identity
        return g * m.order + rng.randrange(m.order)  # index layout of direct_product

    return draw


def _a5xm() -> TaskSpec:
    algebra = named_algebra("a5xm")
    return TaskSpec(
        name="a5xm",
        description="A5 x M word problem, M a 4-element aperiodic monoid; A5 part identity w.p. p_identity",
        input_symbols=algebra.elements,
        answer_symbols=algebra.elements,
        automaton=_group_automaton(algebra),
        sampler=_a5xm_sampler(),
        train_max_len=256,  # the reference trains and tests at fixed length 256 (and tests at 1024)
        id_min_len=256,
        version=2,
        p_identity=0.9,  # the paper trains with 0.9 and tests with 0.5 and 0.9
        supports_p_identity=True,
    )


# --- Delétang et al. regular tasks ---------------------------------------------------------------------


def _uniform(n: int) -> Sampler:
    return lambda position, rng, p_identity: rng.randrange(n)


def _parity() -> TaskSpec:
    # state = parity of the number of 1s so far
    return TaskSpec(
        name="parity",
        description="parity check: is the number of 1s so far even or odd",
        input_symbols=("0", "1"),
        answer_symbols=("even", "odd"),
        automaton=Automaton(((0, 1), (1, 0)), 0, (0, 1)),
        sampler=_uniform(2),
        train_max_len=40,
        id_min_len=1,
        version=2,
    )


def _even_pairs() -> TaskSpec:
    # The number of "ab" and "ba" substrings is even iff the first and last symbols agree, so the
    # automaton remembers (first, last). State 0 is the empty prefix; 1 + 2*first + last otherwise.
    transitions = [[1 + 2 * x + x for x in (0, 1)]]
    for first, _last in ((0, 0), (0, 1), (1, 0), (1, 1)):
        transitions.append([1 + 2 * first + x for x in (0, 1)])
    outputs = (0,) + tuple(0 if f == last else 1 for f, last in ((0, 0), (0, 1), (1, 0), (1, 1)))
    return TaskSpec(
        name="even_pairs",
        description="even pairs: is the number of 'a b' and 'b a' pairs so far even",
        input_symbols=("a", "b"),
        answer_symbols=("even", "odd"),
        automaton=Automaton(tuple(tuple(r) for r in transitions), 0, outputs),
        sampler=_uniform(2),
        train_max_len=40,
        id_min_len=1,
        version=2,
    )


def _cycle_nav() -> TaskSpec:
    moves = (0, 1, -1)
    transitions = tuple(tuple((q + d) % 5 for d in moves) for q in range(5))
    return TaskSpec(
        name="cycle_nav",
        description="cycle navigation: position on a 5-cycle starting at 0 after moves +0, +1, -1",
        input_symbols=("+0", "+1", "-1"),
        answer_symbols=tuple(str(q) for q in range(5)),
        automaton=Automaton(transitions, 0, tuple(range(5))),
        sampler=_uniform(3),
        train_max_len=40,
        id_min_len=1,
        version=2,
    )


MOD = 5
OPERATORS = ("+", "-", "*")


def _mod_arith_automaton() -> Automaton:
    """Numbers and operators alternate; the value uses the usual precedence (* before + and -).

    After a number the state is (S, P): S the sum of finished terms, P the signed current product
    term, value (S + P) mod 5. After an operator it is (S, P, op) and reports the value of the
    expression without that trailing operator, so every prefix has a well-defined answer.
    """
    states: list[tuple] = [("start",)]
    states += [("num", s, p) for s in range(MOD) for p in range(MOD)]
    states += [("op", s, p, op) for s in range(MOD) for p in range(MOD) for op in OPERATORS]
    index = {q: i for i, q in enumerate(states)}

    def step(q: tuple, symbol: int) -> int:
        is_number = symbol < MOD
        if q[0] == "start":
            return index[("num", 0, symbol)] if is_number else -1
        if q[0] == "num":
            return -1 if is_number else index[("op", q[1], q[2], OPERATORS[symbol - MOD])]
        if not is_number:
            return -1
        _, s, p, op = q
        if op == "*":
            return index[("num", s, (p * symbol) % MOD)]
        sign = 1 if op == "+" else -1
        return index[("num", (s + p) % MOD, (sign * symbol) % MOD)]

    transitions = tuple(tuple(step(q, x) for x in range(MOD + len(OPERATORS))) for q in states)
    outputs = tuple(0 if q[0] == "start" else (q[1] + q[2]) % MOD for q in states)
    return Automaton(transitions, 0, outputs)


def _mod_arith_sampler(position: int, rng: random.Random, p_identity: float | None) -> int:
    # even positions hold numbers 0..4, odd positions operators
    return rng.randrange(MOD) if position % 2 == 0 else MOD + rng.randrange(len(OPERATORS))


def _mod_arith() -> TaskSpec:
    return TaskSpec(
        name="mod_arith",
        description="modular arithmetic without brackets, mod 5, * before + and -",
        input_symbols=tuple(str(v) for v in range(MOD)) + OPERATORS,
        answer_symbols=tuple(str(v) for v in range(MOD)),
        automaton=_mod_arith_automaton(),
        sampler=_mod_arith_sampler,
        train_max_len=40,
        id_min_len=1,
        version=2,
        odd_lengths_only=True,
    )


WORD_PROBLEM_TRAIN_MAX_LEN = 32  # Schöne et al. train S5 at length 32 and test extrapolation to 128 (4x)

_BUILDERS: dict[str, Callable[[], TaskSpec]] = {
    "s5": lambda: _word_problem("s5", WORD_PROBLEM_TRAIN_MAX_LEN, "S5 word problem (non-solvable, 120)"),
    "a5": lambda: _word_problem("a5", WORD_PROBLEM_TRAIN_MAX_LEN, "A5 word problem (non-solvable, 60)"),
    "s3": lambda: _word_problem("s3", WORD_PROBLEM_TRAIN_MAX_LEN, "S3 word problem (solvable, 6)"),
    "z60": lambda: _word_problem("z60", WORD_PROBLEM_TRAIN_MAX_LEN, "Z60 word problem (abelian, 60)"),
    "a4xz5": lambda: _word_problem("a4xz5", WORD_PROBLEM_TRAIN_MAX_LEN, "A4 x Z5 word problem (solvable, 60)"),
    "a5xm": _a5xm,
    "parity": _parity,
    "even_pairs": _even_pairs,
    "cycle_nav": _cycle_nav,
    "mod_arith": _mod_arith,
}


@cache
def get_spec(task_name: str) -> TaskSpec:
    if task_name not in _BUILDERS:
        raise ValueError(f"unknown state-tracking task {task_name!r}; valid tasks are {list(_BUILDERS)}")
    return _BUILDERS[task_name]()


class _SpecRegistry(Mapping):
    """``TASKS[name]`` builds a spec on first use, so importing the package stays cheap."""

    def __getitem__(self, key: str) -> TaskSpec:
        if key not in _BUILDERS:
            raise KeyError(f"unknown state-tracking task {key!r}; valid tasks are {list(_BUILDERS)}")
        return get_spec(key)

    def __iter__(self) -> Iterator[str]:
        return iter(_BUILDERS)

    def __len__(self) -> int:
        return len(_BUILDERS)


TASK_NAMES = tuple(_BUILDERS)
TASKS: Mapping[str, TaskSpec] = _SpecRegistry()
