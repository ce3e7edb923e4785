"""Fixtures of the task tests: an independent bAbI reader that parses the text and replays the world.

The reader shares no code with the generator (only the surface grammar), so agreement checks the simulator.
"""

from __future__ import annotations

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
    reader, words, inline = Reader(), text.split(" "), []
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
