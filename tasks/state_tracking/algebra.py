"""Finite groups and monoids as Cayley tables over named elements.

Product convention (used by every task): a word x_1 x_2 ... x_t denotes the product x_1 * x_2 * ... * x_t,
read left to right, and the state after t symbols is s_t = s_{t-1} * x_t with s_0 the identity.
For permutations ``p * q`` means "apply p, then q": in one-line notation (p[i] is the image of i),
(p * q)[i] = q[p[i]]. So the state of a word is the permutation obtained by applying x_1 first and x_t last.
This matches the reference implementation of Schöne et al. (``targets[j] = op(targets[j-1], x[j])``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

Permutation = tuple[int, ...]


@dataclass(frozen=True)
class FiniteMonoid:
    """A finite monoid: element names and a Cayley table, ``table[a][b]`` = index of a * b."""

    name: str
    elements: tuple[str, ...]
    table: tuple[tuple[int, ...], ...]
    identity: int

    @property
    def order(self) -> int:
        return len(self.elements)

    def multiply(self, a: int, b: int) -> int:
        return self.table[a][b]

    def product(self, word: Sequence[int]) -> int:
        """x_1 * ... * x_t by a left fold (the empty product is the identity)."""
        state = self.identity
        for x in word:
            state = self.table[state][x]
        return state

    def index(self, element: str) -> int:
        return self.elements.index(element)


def compose(first: Permutation, then: Permutation) -> Permutation:
    """The permutation "apply ``first``, then ``then``" in one-line notation."""
    return tuple(then[i] for i in first)


def is_even(p: Permutation) -> bool:
    inversions = sum(1 for i, j in itertools.combinations(range(len(p)), 2) if p[i] > p[j])
    return inversions % 2 == 0


def permutation_name(p: Permutation) -> str:
    """One-line notation as a digit string: "10234" swaps 0 and 1 (elements of S_n, n <= 10)."""
    return "".join(str(i) for i in p)


def _from_operation(name: str, values: Sequence, op: Callable, names: Sequence[str], identity) -> FiniteMonoid:
    position = {v: i for i, v in enumerate(values)}
    table = tuple(tuple(position[op(a, b)] for b in values) for a in values)
    return FiniteMonoid(name, tuple(names), table, position[identity])


def permutation_group(name: str, n: int, even_only: bool) -> FiniteMonoid:
    """S_n (or A_n when ``even_only``), elements in lexicographic order so the identity comes first."""
    perms = [p for p in itertools.permutations(range(n)) if not even_only or is_even(p)]
    names = [permutation_name(p) for p in perms]
    return _from_operation(name, perms, compose, names, tuple(range(n)))


def cyclic_group(n: int) -> FiniteMonoid:
    """Z_n: integers mod n under addition, named "0" ... str(n - 1)."""
    values = list(range(n))
    return _from_operation(f"Z{n}", values, lambda a, b: (a + b) % n, [str(v) for v in values], 0)


def direct_product(left: FiniteMonoid, right: FiniteMonoid, name: str) -> FiniteMonoid:
    """left x right with componentwise product; element (a, b) is named "a_b" and has index a*|right|+b."""
    pairs = list(itertools.product(range(left.order), range(right.order)))
    names = [f"{left.elements[a]}_{right.elements[b]}" for a, b in pairs]

    def op(x: tuple[int, int], y: tuple[int, int]) -> tuple[int, int]:
        return left.table[x[0]][y[0]], right.table[x[1]][y[1]]

    return _from_operation(name, pairs, op, names, (left.identity, right.identity))


def aperiodic_monoid() -> FiniteMonoid:
    """The 4-element aperiodic monoid M = {E, A, B, X} of Schöne et al.'s A5 x M task.

    E is the identity and X is absorbing; A*A = A*B = X, B*A = A, B*B = B. It is aperiodic (x^2 = x^3
    for every x: A^2 = X), so it adds no group structure, only a star-free "has an A been followed by
    A or B" memory. Rows are the left operand, as in the reference code.
    """
    names = ("E", "A", "B", "X")
    rows = (
        "EABX",  # E * .
        "AXXX",  # A * .
        "BABX",  # B * .
        "XXXX",  # X * .
    )
    table = tuple(tuple(names.index(c) for c in row) for row in rows)
    return FiniteMonoid("M", names, table, 0)


@cache
def named_algebra(name: str) -> FiniteMonoid:
    """The algebra behind a word problem: ``s5``, ``a5``, ``s3``, ``z60``, ``a4xz5``, ``a5xm`` or ``m``."""
    builders: dict[str, Callable[[], FiniteMonoid]] = {
        "s5": lambda: permutation_group("S5", 5, even_only=False),
        "a5": lambda: permutation_group("A5", 5, even_only=True),
        "s3": lambda: permutation_group("S3", 3, even_only=False),
        "a4": lambda: permutation_group("A4", 4, even_only=True),
        "z5": lambda: cyclic_group(5),
        "z60": lambda: cyclic_group(60),
        "a4xz5": lambda: direct_product(named_algebra("a4"), named_algebra("z5"), "A4xZ5"),
        "m": aperiodic_monoid,
        "a5xm": lambda: direct_product(named_algebra("a5"), named_algebra("m"), "A5xM"),
    }
    if name not in builders:
        raise ValueError(f"unknown algebra {name!r}; valid names are {sorted(builders)}")
    return builders[name]()
