"""bAbI-style task generators (Weston et al. 2015): tasks 1, 2, 3, 6, 7, 8, 19 and a catbAbI-like stream.

A document is a story (statements ending with " .") followed by one question (ending with " ?"); the
answer is one token. Length is counted in statements (qa1-qa8), in map statements (qa19), or in story
segments (cat). In ``cat`` one world runs through all segments; every segment ends with a question
whose answer follows inline, and only the last question is scored, so its answer may rest on facts
from any earlier segment (state must carry across stories, as in catbAbI, Schlag et al. 2021).

Held-out partition: the first KEY_STATEMENTS statements of a story (all of them in qa19) decide
whether it may appear in training or in evaluation data (``implicit_ssm_eval.tasks.common.accepts_key``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import cast

from ..common import accepts_key, bounded_attempts
from .vocabulary import (
    ACTORS,
    ANSWERS,
    DIRECTION_WORDS,
    DIRECTIONS,
    OBJECTS,
    OPPOSITE,
    PATH_PLACES,
    PLACES,
    YES_NO,
)
from .world import World, render

KEY_STATEMENTS = 4
CAT_SEGMENT_STATEMENTS = (2, 6)  # statements per catbAbI segment, inclusive
CAT_QUESTIONS = ("where_actor", "where_object", "where_before", "yes_no", "count", "list")
ALL_ACTIONS = ("move", "get", "drop", "give")


@dataclass(frozen=True)
class BabiTask:
    name: str
    description: str
    actions: tuple[str, ...]  # action kinds in the story
    question: str  # question kind; "mixed" for cat
    train_max_len: int  # longest in-distribution length L (in ``unit``)
    id_min_len: int
    unit: str
    version: int  # bump when the generator's output for a fixed seed changes (checked by a test)

    @property
    def chance(self) -> float:
        """Uniform guessing among the question kind's answers (cat: varies per document)."""
        if self.question == "mixed":
            return sum(1 / len(ANSWERS[k]) for k in CAT_QUESTIONS) / len(CAT_QUESTIONS)
        return 1 / len(ANSWERS[self.question])


MOVES, OBJ = ("move",), ALL_ACTIONS[:3]
# name: (description, actions, question, in-distribution lengths [id_min_len, train_max_len], unit, version)
_TABLE = {
    "qa1": ("single supporting fact: where is <actor>", MOVES, "where_actor", (2, 10), "statements", 1),
    "qa2": ("two facts: where is <object>", OBJ, "where_object", (4, 16), "statements", 1),
    "qa3": ("three facts: where was <object> before <place>", OBJ, "where_before", (6, 20), "statements", 1),
    "qa6": ("yes/no: is <actor> in <place>", MOVES, "yes_no", (2, 10), "statements", 1),
    "qa7": ("counting: how many objects is <actor> carrying", ALL_ACTIONS, "count", (4, 16), "statements", 1),
    "qa8": ("lists: what is <actor> carrying", ALL_ACTIONS, "list", (4, 16), "statements", 1),
    "qa19": ("path finding: how do you go from <room> to <room>", (), "path", (2, 5), "map statements", 1),
    "cat": ("catbAbI-like stream, questions answered inline", ALL_ACTIONS, "mixed", (2, 8), "segments", 1),
}  # fmt: skip
TASKS: dict[str, BabiTask] = {
    name: BabiTask(name, description, actions, question, hi, lo, unit, version)
    for name, (description, actions, question, (lo, hi), unit, version) in _TABLE.items()
}
MAX_PATH_EDGES = len(PATH_PLACES) - 1  # a qa19 map is a tree over distinct rooms


def generate(task: BabiTask, length: int, rng: random.Random, split: str | None = None) -> dict[str, str]:
    """One document: {"input": story and question, "target": answer, "question_kind": kind}."""
    if task.name == "qa19":
        return _path_doc(task, length, rng, split)
    if task.name == "cat":
        return _cat_doc(task, length, rng, split)
    return _story_doc(task, length, rng, split)


def _accepts(task: BabiTask, sentences: list[str], split: str | None, final: bool) -> bool:
    """Held-out gate, checked once: when the key's statements exist, or at the end of a shorter story."""
    if len(sentences) == KEY_STATEMENTS or (final and len(sentences) < KEY_STATEMENTS):
        return accepts_key(task.name + "|" + " ".join(sentences[:KEY_STATEMENTS]), split)
    return True


def _story_doc(task: BabiTask, length: int, rng: random.Random, split: str | None) -> dict[str, str]:
    for _ in bounded_attempts(f"generate an answerable {task.name} story of {length} statements"):
        world, sentences = World.initial(rng), []
        for i in range(length):
            action = world.random_action(rng, task.actions)
            world.apply(action)
            sentences.append(render(action, rng))
            if not _accepts(task, sentences, split, final=i == length - 1):
                break
        else:
            asked = ask(world, task.question, rng)
            if asked is not None:  # e.g. qa2 needs an object someone has picked up
                question, answer = asked
                return {
                    "input": " ".join([*sentences, question]),
                    "target": answer,
                    "question_kind": task.question,
                }
    raise AssertionError("unreachable: bounded_attempts raises")


def _cat_doc(task: BabiTask, segments: int, rng: random.Random, split: str | None) -> dict[str, str]:
    for _ in bounded_attempts(f"generate a cat stream of {segments} segments"):
        world, parts, sentences, rejected = World.initial(rng), [], [], False
        for segment in range(segments):
            size = rng.randint(*CAT_SEGMENT_STATEMENTS)
            for i in range(size):
                action = world.random_action(rng, task.actions)
                world.apply(action)
                sentences.append(render(action, rng))
                parts.append(sentences[-1])
                final = segment == segments - 1 and i == size - 1
                if not _accepts(task, sentences, split, final):
                    rejected = True
                    break
            if rejected:
                break
            kind, (question, answer) = _any_question(world, rng)
            parts.append(question)
            if segment < segments - 1:
                parts.append(answer)  # answered inline; only the last question is scored
        if not rejected:
            return {"input": " ".join(parts), "target": answer, "question_kind": kind}
    raise AssertionError("unreachable: bounded_attempts raises")


def _any_question(world: World, rng: random.Random) -> tuple[str, tuple[str, str]]:
    # every segment moves someone or acts, so at least where_actor is always answerable
    for kind in rng.sample(CAT_QUESTIONS, len(CAT_QUESTIONS)):
        asked = ask(world, kind, rng)
        if asked is not None:
            return kind, asked
    raise AssertionError("no answerable question: the world has no placed actor")


def ask(world: World, kind: str, rng: random.Random) -> tuple[str, str] | None:
    """(question, answer) of ``kind`` about the world, or None if the story cannot answer one."""
    placed = [a for a in ACTORS if a in world.actor_place]
    if not placed:
        return None
    if kind == "where_actor":
        actor = rng.choice(placed)
        return f"where is {actor} ?", world.actor_place[actor]
    if kind == "where_object":
        known = [o for o in OBJECTS if world.object_place(o) is not None]
        if not known:
            return None
        obj = rng.choice(known)
        return f"where is the {obj} ?", cast(str, world.object_place(obj))  # known: placed
    if kind == "where_before":
        return _ask_where_before(world, rng)
    if kind == "yes_no":
        actor = rng.choice(placed)
        here = world.actor_place[actor]
        answer = rng.choice(YES_NO)  # balanced classes
        place = here if answer == "yes" else rng.choice([p for p in PLACES if p != here])
        return f"is {actor} in the {place} ?", answer
    if kind in ("count", "list"):
        # pick the number carried first, so "none"/"nothing" does not dominate the answers
        by_count: dict[int, list[str]] = {}
        for actor in placed:
            by_count.setdefault(len(world.carried[actor]), []).append(actor)
        actor = rng.choice(by_count[rng.choice(sorted(by_count))])
        if kind == "count":
            return f"how many objects is {actor} carrying ?", world.count_answer(actor)
        return f"what is {actor} carrying ?", world.list_answer(actor)
    raise ValueError(f"unknown question kind {kind!r}")


def _ask_where_before(world: World, rng: random.Random) -> tuple[str, str] | None:
    candidates = []
    for obj in OBJECTS:
        trail = world.trail[obj]
        for place in dict.fromkeys(trail):
            last = len(trail) - 1 - trail[::-1].index(place)
            if last > 0:
                candidates.append((obj, place, trail[last - 1]))
    if not candidates:
        return None
    obj, place, answer = rng.choice(candidates)
    return f"where was the {obj} before the {place} ?", answer


def _path_doc(task: BabiTask, edges: int, rng: random.Random, split: str | None) -> dict[str, str]:
    if not 2 <= edges <= MAX_PATH_EDGES:
        raise ValueError(f"qa19 needs 2..{MAX_PATH_EDGES} map statements, got {edges}")
    for _ in bounded_attempts(f"generate a qa19 map of {edges} statements"):
        sentences, tree = _random_map(edges, rng)
        start, middle, end = rng.choice(_two_step_paths(tree))
        question = f"how do you go from the {start} to the {end} ?"
        if accepts_key(task.name + "|" + " ".join(sentences), split):
            answer = f"{tree[start][middle]},{tree[middle][end]}"
            return {"input": " ".join([*sentences, question]), "target": answer, "question_kind": "path"}
    raise AssertionError("unreachable: bounded_attempts raises")


def _random_map(edges: int, rng: random.Random) -> tuple[list[str], dict[str, dict[str, str]]]:
    """A random tree of rooms on a grid; tree[a][b] is the direction from a to its neighbour b."""
    rooms = rng.sample(PATH_PLACES, edges + 1)
    cells = {rooms[0]: (0, 0)}
    occupied = {(0, 0)}
    tree: dict[str, dict[str, str]] = {rooms[0]: {}}
    sentences = []
    for room in rooms[1:]:
        free = [
            (anchor, d)
            for anchor, (x, y) in cells.items()
            for d, (dx, dy) in DIRECTIONS.items()
            if (x + dx, y + dy) not in occupied
        ]
        anchor, d = rng.choice(free)
        x, y = cells[anchor]
        cells[room] = (x + DIRECTIONS[d][0], y + DIRECTIONS[d][1])
        occupied.add(cells[room])
        tree[room] = {anchor: OPPOSITE[d]}
        tree[anchor][room] = d
        # "the room is <d> of the anchor", or the same fact stated from the other side
        if rng.random() < 0.5:
            sentences.append(f"the {room} is {DIRECTION_WORDS[d]} of the {anchor} .")
        else:
            sentences.append(f"the {anchor} is {DIRECTION_WORDS[OPPOSITE[d]]} of the {room} .")
    rng.shuffle(sentences)
    return sentences, tree


def _two_step_paths(tree: dict[str, dict[str, str]]) -> list[tuple[str, str, str]]:
    return [(a, m, b) for m, nbrs in tree.items() for a in nbrs for b in nbrs if a != b]
