"""The four control tasks: how one example of each is drawn, and what its answers are.

An example is one token sequence: the input, then its answers in place. Every answer is one symbol; the
model reads the true symbols before each answer (teacher forcing), as a language model would be scored.

  mod_arith_brackets  ( 3 - ( - 2 ) ) =  0               an expression mod 5, one answer after "="
  reverse_string      0 1 1 = 1 1 0                       the input reversed, after "="
  stack_manipulation  0 1 push1 pop pop = 0 end           the final stack top to bottom, then "end"
  mqar                k5 v9 k2 v7 k2 v7 k5 v9             key-value pairs, then queries each followed
                                                          by its value (the answers: the values queried)

The first three are Delétang et al.'s deterministic context-free tasks (ICLR 2023; their generators define
lengths the same way: the number of input symbols), the last is Zoology's multi-query associative recall
(Arora et al. 2023), whose length is the number of key-value pairs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache

from ..common import accepts_key, bounded_attempts

SEPARATOR = "="  # ends the input of the tasks whose answers follow it
BLANK = "_"  # the training label of a position that answers nothing (see data.py)
KEY_LEN = 13  # inputs at least this long are split between training and evaluation by their first symbols
MODULUS = 5
OPERATORS = ("+", "-", "*")
ACTIONS = ("pop", "push0", "push1")
END = "end"  # the end of the stack in stack_manipulation's answer
NUM_KEYS = 512  # MQAR keys k0..k511 and values v0..v511: at most 512 pairs per document
MAX_QUERIES = 16  # MQAR queries per document: every key up to 16 pairs, 16 distinct random keys beyond
KEY_PAIRS = 4  # MQAR examples are split between training and evaluation by their first four pairs


@dataclass(frozen=True)
class Example:
    """One sequence: ``symbols[i]`` for i in ``answer_positions`` are the answers, the rest is input."""

    symbols: tuple[str, ...]
    answer_positions: tuple[int, ...]
    length: int  # in the task's unit: input symbols, or key-value pairs for MQAR

    @property
    def answers(self) -> tuple[str, ...]:
        return tuple(self.symbols[p] for p in self.answer_positions)

    @property
    def contiguous(self) -> bool:
        """Whether the answers are the last symbols, one block: then one request scores the whole answer."""
        first = self.answer_positions[0]
        return self.answer_positions == tuple(range(first, len(self.symbols)))


@dataclass(frozen=True)
class ControlTask:
    """One control task. ``draw(length, rng)`` is its generator; ``key_symbols(length)`` how many leading symbols
    decide the held-out partition (0: too short to split)."""

    name: str
    description: str
    unit: str  # what the length counts
    input_symbols: tuple[str, ...]
    answer_symbols: tuple[str, ...]
    train_max_len: int  # longest training length L: the id bucket's upper end, oodKx is K*L
    id_min_len: int
    version: int  # bump when the generator's output for a fixed seed changes (checked by a test)
    draw: Callable[[int, random.Random], Example]
    key_symbols: Callable[[int], int]
    max_len: int | None = None  # the longest length the task can generate (MQAR: its key vocabulary)

    @property
    def chance(self) -> float:
        """Accuracy of guessing one answer position uniformly among the answer symbols."""
        return 1.0 / len(self.answer_symbols)

    def check_length(self, length: int) -> int:
        if length < 1 or (self.max_len is not None and length > self.max_len):
            upper = "" if self.max_len is None else f" and <= {self.max_len}"
            raise ValueError(f"{self.name} lengths ({self.unit}) must be >= 1{upper}, got {length}")
        return length

    def sample(self, length: int, rng: random.Random, split: str | None = None) -> Example:
        """One example of ``length``; ``split`` ("train", "eval", None) restricts it to a side of the partition."""
        self.check_length(length)
        head = self.key_symbols(length)
        for _ in bounded_attempts(f"draw a {self.name} example of length {length} in the {split} split"):
            example = self.draw(length, rng)
            if head == 0 or accepts_key(self.partition_key(example.symbols[:head]), split):
                return example
        raise AssertionError("unreachable: bounded_attempts raises")

    def partition_key(self, head: tuple[str, ...]) -> str:
        return self.name + "|" + " ".join(head)


def _bits(n: int, rng: random.Random) -> list[str]:
    return [str(rng.randrange(2)) for _ in range(n)]


def _answered(inputs: list[str], answers: list[str], length: int) -> Example:
    """Input, separator, answers."""
    symbols = (*inputs, SEPARATOR, *answers)
    return Example(symbols, tuple(range(len(inputs) + 1, len(symbols))), length)


def _leading_input(length: int) -> int:
    # short inputs cannot be split (there are only 2^12 bit strings of length 12): they are not partitioned
    return KEY_LEN if length >= KEY_LEN else 0


# --- Delétang et al.: deterministic context-free tasks ------------------------------------------------


def expression(length: int, rng: random.Random) -> tuple[list[str], int]:
    """A bracketed expression of exactly ``length`` symbols and its value mod 5 (Delétang et al.'s grammar).

    1: d, 2: - d, 3: ( d ), 4: ( - d ); longer: ( left op right ) with the left length uniform in
    [1, length - 4]. Every binary operation is bracketed, so no precedence is involved.
    """
    if length <= 4:
        digit = rng.randrange(MODULUS)
        negate = length in (2, 4)
        body = ["-", str(digit)] if negate else [str(digit)]
        return (["(", *body, ")"] if length >= 3 else body), (-digit if negate else digit) % MODULUS
    left_length = rng.randint(1, length - 4)
    left, left_value = expression(left_length, rng)
    right, right_value = expression(length - left_length - 3, rng)
    op = rng.choice(OPERATORS)
    value = {"+": left_value + right_value, "-": left_value - right_value, "*": left_value * right_value}[op]
    return ["(", *left, op, *right, ")"], value % MODULUS


def _mod_arith_brackets(length: int, rng: random.Random) -> Example:
    symbols, value = expression(length, rng)
    return _answered(symbols, [str(value)], length)


def _reverse_string(length: int, rng: random.Random) -> Example:
    bits = _bits(length, rng)
    return _answered(bits, bits[::-1], length)


def _stack_manipulation(length: int, rng: random.Random) -> Example:
    """A stack (bottom to top) then actions, ``length`` symbols in all; the answer is the final stack top to
    bottom, then ``end``. A pop on an empty stack does nothing. As Delétang et al.: the stack's length is
    uniform in [1, length - 1] (1 when length is 1), actions uniform."""
    stack = _bits(1 if length == 1 else rng.randint(1, length - 1), rng)
    actions = [rng.choice(ACTIONS) for _ in range(length - len(stack))]
    final = list(stack)
    for action in actions:
        if action != "pop":
            final.append(action[-1])
        elif final:
            final.pop()
    return _answered(stack + actions, [*reversed(final), END], length)


# --- Zoology: multi-query associative recall ----------------------------------------------------------


def _mqar(pairs: int, rng: random.Random) -> Example:
    """``pairs`` distinct keys with distinct values, then min(pairs, 16) distinct keys queried in random order,
    each followed by its value. Zoology puts every key once among the queries; beyond 16 pairs we query 16, so
    every document's answers are all scored (see README)."""
    keys = rng.sample(range(NUM_KEYS), pairs)
    values = rng.sample(range(NUM_KEYS), pairs)
    queried = rng.sample(range(pairs), min(pairs, MAX_QUERIES))
    symbols = [s for k, v in zip(keys, values) for s in (f"k{k}", f"v{v}")]
    symbols += [s for i in queried for s in (f"k{keys[i]}", f"v{values[i]}")]
    answers = tuple(2 * pairs + 2 * q + 1 for q in range(len(queried)))
    return Example(tuple(symbols), answers, pairs)


DIGITS = tuple(str(d) for d in range(MODULUS))
KEYS = tuple(f"k{i}" for i in range(NUM_KEYS))
VALUES = tuple(f"v{i}" for i in range(NUM_KEYS))


def _deletang(name: str, description: str, input_symbols: tuple[str, ...], answer_symbols: tuple[str, ...],
              draw: Callable[[int, random.Random], Example]) -> ControlTask:
    # Delétang et al. train on lengths 1 to 40 (and test on 41 to 500)
    return ControlTask(name=name, description=description, unit="input symbols", input_symbols=input_symbols,
                       answer_symbols=answer_symbols, train_max_len=40, id_min_len=1, version=1, draw=draw,
                       key_symbols=_leading_input)


_BUILDERS: dict[str, Callable[[], ControlTask]] = {
    "mod_arith_brackets": lambda: _deletang(
        "mod_arith_brackets", "modular arithmetic with brackets: an expression's value mod 5 (+ - *, unary -)",
        (*DIGITS, *OPERATORS, "(", ")", SEPARATOR), DIGITS, _mod_arith_brackets),
    "reverse_string": lambda: _deletang(
        "reverse_string", "string reversal: a binary string, then the string reversed",
        ("0", "1", SEPARATOR), ("0", "1"), _reverse_string),
    "stack_manipulation": lambda: _deletang(
        "stack_manipulation", "stack manipulation: a stack and pop/push actions, then the final stack and end",
        ("0", "1", *ACTIONS, SEPARATOR), ("0", "1", END), _stack_manipulation),
    # Zoology varies 4 to 64 pairs in sequences of 64 to 512 tokens: L = 16 pairs puts ood8x at 128 pairs,
    # 512 tokens; keys and values are 512 symbols each, so a document holds at most 512 pairs
    "mqar": lambda: ControlTask(
        name="mqar", description="multi-query associative recall: key-value pairs, then queries answered by value",
        unit="key-value pairs", input_symbols=(*KEYS, *VALUES), answer_symbols=VALUES, train_max_len=16,
        id_min_len=1, version=1, draw=_mqar, key_symbols=lambda pairs: 2 * min(pairs, KEY_PAIRS),
        max_len=NUM_KEYS),
}


TASK_NAMES = tuple(_BUILDERS)


@cache
def get_task(name: str) -> ControlTask:
    if name not in _BUILDERS:
        raise ValueError(f"unknown controls task {name!r}; valid tasks are {list(TASK_NAMES)}")
    return _BUILDERS[name]()


class _TaskTable(Mapping):
    """``TASKS[name]`` builds a task on first use."""

    def __getitem__(self, key: str) -> ControlTask:
        if key not in TASK_NAMES:
            raise KeyError(f"unknown controls task {key!r}; valid tasks are {list(TASK_NAMES)}")
        return get_task(key)

    def __iter__(self) -> Iterator[str]:
        return iter(TASK_NAMES)

    def __len__(self) -> int:
        return len(TASK_NAMES)


TASKS: Mapping[str, ControlTask] = _TaskTable()
