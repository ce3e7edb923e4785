"""Fixtures of the task tests: independent answers computed without the generators' code.

* an independent bAbI reader that parses the text and replays the world; it shares no code with the
  generator (only the surface grammar), so agreement checks the simulator;
* brute-force state-tracking states: permutations applied point by point, sums, counts, Python's ``eval``,
  and the reference code's Cayley table of M written out; no Cayley table or automaton of ``tasks/``.
"""

from __future__ import annotations

import itertools
import re
from collections import deque

import pytest

MOVE = re.compile(r"^(\w+) (?:went|moved|journeyed|travelled|went back) to the (\w+)$")
GET = re.compile(r"^(\w+) (?:got|grabbed|took|picked up) the (\w+)$")
DROP = re.compile(r"^(\w+) (?:dropped|discarded|left|put down) the (\w+)$")
GIVE = re.compile(r"^(\w+) (?:gave|handed|passed) the (\w+) to (\w+)$")
MAP = re.compile(r"^the (\w+) is (north|south|east|west) of the (\w+)$")
STEP = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
LETTER = {(0, 1): "n", (0, -1): "s", (1, 0): "e", (-1, 0): "w"}
NUMBERS = ["none", "one", "two", "three"]


class Reader:
    def __init__(self) -> None:
        self.where: dict[str, str] = {}
        self.holding: dict[str, list[str]] = {}
        self.lying: dict[str, str] = {}
        self.history: dict[str, list[str]] = {}
        self.map: dict[str, dict[str, tuple[int, int]]] = {}

    def object_place(self, obj: str) -> str | None:
        for actor, objs in self.holding.items():
            if obj in objs:
                return self.where[actor]
        return self.lying.get(obj)

    def read(self, sentence: str) -> None:
        if m := MOVE.match(sentence):
            self.where[m[1]] = m[2]
        elif m := GET.match(sentence):
            self.lying.pop(m[2], None)
            self.holding.setdefault(m[1], []).append(m[2])
        elif m := DROP.match(sentence):
            self.holding[m[1]].remove(m[2])
            self.lying[m[2]] = self.where[m[1]]
        elif m := GIVE.match(sentence):
            self.holding[m[1]].remove(m[2])
            self.holding.setdefault(m[3], []).append(m[2])
        elif m := MAP.match(sentence):
            dx, dy = STEP[m[2]]  # m[1] = m[3] + step
            self.map.setdefault(m[3], {})[m[1]] = (dx, dy)
            self.map.setdefault(m[1], {})[m[3]] = (-dx, -dy)
        else:
            raise ValueError(f"unparsed sentence {sentence!r}")
        for obj in {o for objs in self.holding.values() for o in objs} | set(self.lying):
            place, seen = self.object_place(obj), self.history.setdefault(obj, [])
            if not seen or seen[-1] != place:
                seen.append(place)

    def answer(self, question: str) -> str:
        if m := re.match(r"^where is the (\w+)$", question):
            return self.object_place(m[1])
        if m := re.match(r"^where is (\w+)$", question):
            return self.where[m[1]]
        if m := re.match(r"^where was the (\w+) before the (\w+)$", question):
            seen = self.history[m[1]]
            last = max(i for i, p in enumerate(seen) if p == m[2])
            return seen[last - 1]
        if m := re.match(r"^is (\w+) in the (\w+)$", question):
            return "yes" if self.where[m[1]] == m[2] else "no"
        if m := re.match(r"^how many objects is (\w+) carrying$", question):
            return NUMBERS[len(self.holding.get(m[1], []))]
        if m := re.match(r"^what is (\w+) carrying$", question):
            return ",".join(sorted(self.holding.get(m[1], []))) or "nothing"
        if m := re.match(r"^how do you go from the (\w+) to the (\w+)$", question):
            return ",".join(LETTER[step] for step in self._path(m[1], m[2]))
        raise ValueError(f"unparsed question {question!r}")

    def _path(self, start: str, goal: str) -> list[tuple[int, int]]:
        queue, steps = deque([start]), {start: []}
        while queue:
            room = queue.popleft()
            for nxt, step in self.map[room].items():
                if nxt not in steps:
                    steps[nxt] = [*steps[room], step]
                    queue.append(nxt)
        return steps[goal]


def replay(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(answer to the final question, [(inline answer given, answer replayed)] for earlier questions)."""
    reader, words, inline = Reader(), text.split(), []
    sentence: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == ".":
            reader.read(" ".join(sentence))
            sentence = []
        elif word == "?":
            answer = reader.answer(" ".join(sentence))
            sentence = []
            if i == len(words) - 1:
                return answer, inline
            inline.append((words[i + 1], answer))
            i += 1  # skip the inline answer
        else:
            sentence.append(word)
        i += 1
    raise ValueError("text does not end with a question")


@pytest.fixture
def babi_replay():
    """``replay(text) -> (final answer, [(inline answer given, answer replayed)])``."""
    return replay


# --- state tracking ------------------------------------------------------------------------------------

M_REFERENCE = {"E": "EABX", "A": "AXXX", "B": "BABX", "X": "XXXX"}  # rows = left operand, columns E A B X


def apply_permutations(names: list[str]) -> list[str]:
    """Track where every point goes, applying each permutation in reading order (no Cayley table)."""
    points, states = list(range(len(names[0]))), []
    for name in names:
        points = [int(name[p]) for p in points]
        states.append("".join(map(str, points)))
    return states


def monoid_prefixes(names: list[str]) -> list[str]:
    state, states = "E", []
    for name in names:
        state = M_REFERENCE[state]["EABX".index(name)]
        states.append(state)
    return states


def brute_force_states(task: str, symbols: list[str]) -> list[str]:
    prefixes = [symbols[: t + 1] for t in range(len(symbols))]
    if task in ("s5", "a5", "s3"):
        return apply_permutations(symbols)
    if task == "z60":
        return [str(sum(map(int, p)) % 60) for p in prefixes]
    if task in ("a4xz5", "a5xm"):
        perms = apply_permutations([s.split("_")[0] for s in symbols])
        seconds = [s.split("_")[1] for s in symbols]
        if task == "a4xz5":
            other = [str(sum(int(s) for s in seconds[: t + 1]) % 5) for t in range(len(seconds))]
        else:
            other = monoid_prefixes(seconds)
        return [f"{g}_{x}" for g, x in zip(perms, other, strict=True)]
    if task == "parity":
        return ["even" if p.count("1") % 2 == 0 else "odd" for p in prefixes]
    if task == "even_pairs":
        pairs = [sum(a != b for a, b in itertools.pairwise(p)) for p in prefixes]
        return ["even" if n % 2 == 0 else "odd" for n in pairs]
    if task == "cycle_nav":
        return [str(sum(int(s) for s in p) % 5) for p in prefixes]
    if task == "mod_arith":
        # after an operator the state is the value without it; Python's eval has the usual precedence
        return [str(eval(" ".join(p if len(p) % 2 else p[:-1])) % 5) for p in prefixes]
    raise AssertionError(task)


@pytest.fixture(name="brute_force_states")
def brute_force_states_fixture():
    """``brute_force_states(task, symbols) -> states after every prefix``, computed without tasks/ code."""
    return brute_force_states
