"""Distribution-shift buckets of the state-tracking tasks: the task's automaton, another symbol distribution.

A length bucket draws its symbols as the task does in training (uniform, or A5 x M's identity share);
a shifted bucket keeps the automaton, so the answers mean the same, and changes only how the symbols are
drawn. Every shifted bucket sits at exactly SHIFT_MULTIPLIER * L, the length of ``ood2x``, so comparing
it with ``ood2x`` isolates the distribution shift from the length shift.

Word problems (s5, a5, s3, z60, a4xz5):
  ident50     each symbol is the identity with probability 0.5, else a uniform non-identity element
  identrun16  uniform symbols with one run of 16 identities inserted
  genclass    only symbols of one generating class (3-cycles for A5, transpositions for S5 and S3, ...)
  gen2        only two fixed symbols that generate the group
A5 x M: ident50 (the A5 part; Schöne et al. test 0.5 after training with 0.9). Regular languages: one
symbol drawn with a fixed share (``ones10`` ...), the others uniform with the rest.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from .algebra import named_algebra
from .specs import KEY_LEN, MOD, OPERATORS, Draw, Plan, get_spec

SHIFT_MULTIPLIER = 2  # shifted buckets have length 2L by default, as ood2x
IDENTITY_RUN = 16  # identities in the identrun16 bucket's run
WORD_PROBLEMS = ("s5", "a5", "s3", "z60", "a4xz5")


@dataclass(frozen=True)
class Shift:
    """One shifted bucket of one task."""

    bucket: str  # bucket name, free of "_" so that lm-eval names st_<task>_<bucket> split unambiguously
    label: str  # short human label, e.g. "identity share 0.5"
    description: str  # one line: what the bucket tests
    plan: Plan  # (length, rng) -> the draw of one sequence's symbols


# --- draws ---------------------------------------------------------------------------------------------


def share_or_uniform(symbol: int, share: float, others: Sequence[int]) -> Draw:
    """``symbol`` with probability ``share``, else uniform over ``others``: its expected share is exactly ``share``."""
    others = tuple(others)

    def draw(position: int, rng: random.Random) -> int:
        return symbol if rng.random() < share else others[rng.randrange(len(others))]

    return draw


def uniform_over(symbols: Sequence[int]) -> Draw:
    symbols = tuple(symbols)
    return lambda position, rng: symbols[rng.randrange(len(symbols))]


def fixed(draw: Draw) -> Plan:
    """A plan that draws every sequence the same way, whatever its length."""
    return lambda length, rng: draw


def identity_run(identity: int, base: Draw, run: int | None = None) -> Plan:
    """A plan inserting one run of ``identity`` into symbols drawn by ``base``.

    The run has ``run`` symbols (None: uniform in [1, max(1, n // 2)] per sequence, the training option's
    choice) and starts uniformly in [min(KEY_LEN, n - run), n - run]: after the first KEY_LEN symbols
    whenever the length allows, because those decide the held-out partition and must stay random.
    """

    def plan(length: int, rng: random.Random) -> Draw:
        size = run if run is not None else rng.randint(1, max(1, length // 2))
        if size >= length and run is not None:
            raise ValueError(f"an identity run of {size} needs sequences longer than {size}, got length {length}")
        begin = rng.randint(min(KEY_LEN, length - size), length - size)

        def draw(position: int, rng: random.Random) -> int:
            return identity if begin <= position < begin + size else base(position, rng)

        return draw

    return plan


# --- word problems -------------------------------------------------------------------------------------


def _moved_points(permutation: str) -> int:
    return sum(image != str(point) for point, image in enumerate(permutation))


# The generating class of each group, as a predicate on element names, and its label.
GENERATING_CLASSES: dict[str, tuple[str, Callable[[str], bool]]] = {
    "a5": ("3-cycles only (20 symbols)", lambda e: _moved_points(e) == 3),
    "s5": ("transpositions only (10 symbols)", lambda e: _moved_points(e) == 2),
    "s3": ("transpositions only (3 symbols)", lambda e: _moved_points(e) == 2),
    "z60": ("generators of Z60 only (the 16 units k, gcd(k, 60) = 1)", lambda e: _is_unit_mod_60(int(e))),
    "a4xz5": ("A4 part a 3-cycle only (40 symbols)", lambda e: _moved_points(e.split("_")[0]) == 3),
}
# Two fixed elements that generate the whole group (tests/tasks check it).
GENERATOR_PAIRS: dict[str, tuple[str, str]] = {
    "a5": ("12340", "12034"),  # the 5-cycle (0 1 2 3 4) and the 3-cycle (0 1 2)
    "s5": ("12340", "10234"),  # (0 1 2 3 4) and the transposition (0 1)
    "s3": ("120", "102"),  # (0 1 2) and (0 1)
    "z60": ("4", "15"),  # orders 15 and 4: neither alone generates Z60, together they do
    "a4xz5": ("1203_1", "1032_0"),  # (0 1 2) with 1 in Z5, and (0 1)(2 3)
}


def _is_unit_mod_60(k: int) -> bool:
    return all(k % p for p in (2, 3, 5))


def _word_problem_shifts(task: str) -> list[Shift]:
    algebra = named_algebra(task)
    identity, everything = algebra.identity, range(algebra.order)
    others = [e for e in everything if e != identity]
    class_label, in_class = GENERATING_CLASSES[task]
    generators = GENERATOR_PAIRS[task]
    return [
        Shift("ident50", "identity share 0.5",
              "each symbol is the identity with probability 0.5, else a uniform non-identity element",
              fixed(share_or_uniform(identity, 0.5, others))),
        Shift("identrun16", f"run of {IDENTITY_RUN} identities",
              f"uniform symbols with one run of {IDENTITY_RUN} identities starting after the first {KEY_LEN}",
              identity_run(identity, uniform_over(everything), IDENTITY_RUN)),
        Shift("genclass", class_label, f"uniform over one generating class: {class_label}",
              fixed(uniform_over([e for e in everything if in_class(algebra.elements[e])]))),
        Shift("gen2", f"two generators {' '.join(generators)}", f"uniform over the two generators {generators}",
              fixed(uniform_over([algebra.index(g) for g in generators]))),
    ]  # fmt: skip


def _a5xm_shifts() -> list[Shift]:
    a5, m = named_algebra("a5"), named_algebra("m")
    group_part = share_or_uniform(a5.identity, 0.5, [g for g in range(a5.order) if g != a5.identity])

    def draw(position: int, rng: random.Random) -> int:
        return group_part(position, rng) * m.order + rng.randrange(m.order)  # index layout of direct_product

    return [Shift("ident50", "A5 identity share 0.5",
                  "the A5 part is the identity with probability 0.5 (training: 0.9), else uniform non-identity; "
                  "M part uniform", fixed(draw))]  # fmt: skip


# --- regular languages ---------------------------------------------------------------------------------


def _skew(task: str, bucket: str, symbol: str, share: float, why: str) -> Shift:
    spec = get_spec(task)
    index = spec.input_symbols.index(symbol)
    others = [i for i in range(len(spec.input_symbols)) if i != index]
    label = f"{share:.0%} '{symbol}'"
    return Shift(bucket, label, f"'{symbol}' drawn with probability {share}, the others uniform: {why}",
                 fixed(share_or_uniform(index, share, others)))


def _mod_arith_skew(bucket: str, operator: str, why: str) -> Shift:
    index = MOD + OPERATORS.index(operator)
    operator_draw = share_or_uniform(index, 0.9, [MOD + i for i in range(len(OPERATORS)) if MOD + i != index])

    def draw(position: int, rng: random.Random) -> int:
        # even positions hold numbers (uniform, as in training), odd positions operators (skewed)
        return rng.randrange(MOD) if position % 2 == 0 else operator_draw(position, rng)

    return Shift(bucket, f"90% '{operator}' operators",
                 f"operators are '{operator}' with probability 0.9, the others uniform: {why}", fixed(draw))


def _regular_shifts(task: str) -> list[Shift]:
    if task == "parity":
        return [_skew(task, "ones10", "1", 0.1, "long runs of 0s, the state rarely changes"),
                _skew(task, "ones90", "1", 0.9, "the state flips at almost every symbol")]
    if task == "even_pairs":  # swapping a and b keeps every answer, so 10% 'a' would test the same
        return [_skew(task, "a90", "a", 0.9, "long runs of 'a' between rare 'b'")]
    if task == "cycle_nav":
        return [_skew(task, "stay90", "+0", 0.9, "mostly no move (the identity)"),
                _skew(task, "fwd90", "+1", 0.9, "a steady drift around the cycle")]
    if task == "mod_arith":
        return [_mod_arith_skew("plus90", "+", "long sums"),
                _mod_arith_skew("times90", "*", "long products, where precedence matters")]
    raise ValueError(f"no shifted buckets are defined for {task!r}")


@cache
def shifts_of(task: str) -> dict[str, Shift]:
    """The task's shifted buckets by name (in the order the YAMLs list them)."""
    get_spec(task)  # a clear error for unknown tasks
    if task in WORD_PROBLEMS:
        shifts = _word_problem_shifts(task)
    elif task == "a5xm":
        shifts = _a5xm_shifts()
    else:
        shifts = _regular_shifts(task)
    return {shift.bucket: shift for shift in shifts}


def identity_of(task: str) -> int:
    """Index of the identity element among a word problem's (or A5 x M's) input symbols."""
    if not get_spec(task).supports_p_identity:
        raise ValueError(f"{task!r} has no identity element; identity options apply to "
                         f"{[*WORD_PROBLEMS, 'a5xm']}")  # fmt: skip
    return named_algebra(task).identity
