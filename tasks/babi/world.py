"""A small bAbI-style world: actors move between places and get, drop and give objects.

The simulator keeps the true state and what a reader of the story can know. Objects start lying in
hidden places; an actor can only get an object lying where the actor is, so the reader learns an
object's place when someone picks it up (and keeps knowing it while it is carried or dropped). An
actor's first action is always a move, so every actor in the story has a known place.

``trail[obj]`` is the object's known places in order, consecutive repeats collapsed: it answers
"where was the X before the Y ?" = the place just before the object's latest arrival in Y.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .vocabulary import (
    ACTORS,
    COUNT_WORDS,
    DROP_VERBS,
    GET_VERBS,
    GIVE_VERBS,
    MAX_CARRIED,
    MOVE_VERBS,
    OBJECTS,
    PLACES,
    list_answer,
)

# relative frequency of each action kind when it is possible
ACTION_WEIGHTS = {"move": 0.4, "get": 0.3, "drop": 0.15, "give": 0.15}

# Action: (kind, actor, target) with target a place (move), an object (get, drop) or (object, receiver)
Action = tuple


@dataclass
class World:
    actor_place: dict[str, str] = field(default_factory=dict)  # actors that have appeared
    carried: dict[str, list[str]] = field(default_factory=lambda: {a: [] for a in ACTORS})
    lying_at: dict[str, str] = field(default_factory=dict)  # true place of objects not carried
    known_lying: set[str] = field(default_factory=set)  # lying objects whose place the reader knows
    trail: dict[str, list[str]] = field(default_factory=lambda: {o: [] for o in OBJECTS})

    @classmethod
    def initial(cls, rng: random.Random) -> World:
        return cls(lying_at={obj: rng.choice(PLACES) for obj in OBJECTS})

    # --- what the reader knows ---------------------------------------------------------------------

    def holder(self, obj: str) -> str | None:
        return next((a for a, objs in self.carried.items() if obj in objs), None)

    def object_place(self, obj: str) -> str | None:
        """The object's place as the reader knows it, or None if the story has not revealed it."""
        holder = self.holder(obj)
        if holder is not None:
            return self.actor_place[holder]
        return self.lying_at[obj] if obj in self.known_lying else None

    # --- actions -----------------------------------------------------------------------------------

    def possible_actions(self, kinds: tuple[str, ...]) -> dict[str, list[Action]]:
        """Possible actions per kind, in a deterministic order."""
        placed = [a for a in ACTORS if a in self.actor_place]
        actions: dict[str, list[Action]] = {
            "move": [("move", a, p) for a in ACTORS for p in PLACES if self.actor_place.get(a) != p],
            "get": [
                ("get", a, o)
                for a in placed
                for o in OBJECTS
                if len(self.carried[a]) < MAX_CARRIED and self.lying_at.get(o) == self.actor_place[a]
            ],
            "drop": [("drop", a, o) for a in placed for o in self.carried[a]],
            "give": [
                ("give", a, (o, b))
                for a in placed
                for o in self.carried[a]
                for b in placed
                if b != a and self.actor_place[b] == self.actor_place[a] and len(self.carried[b]) < MAX_CARRIED
            ],
        }
        return {kind: actions[kind] for kind in kinds if actions[kind]}

    def random_action(self, rng: random.Random, kinds: tuple[str, ...]) -> Action:
        possible = self.possible_actions(kinds)
        names = list(possible)
        kind = rng.choices(names, weights=[ACTION_WEIGHTS[k] for k in names])[0]
        return rng.choice(possible[kind])

    def apply(self, action: Action) -> None:
        kind, actor, target = action
        if kind == "move":
            self.actor_place[actor] = target
        elif kind == "get":
            del self.lying_at[target]
            self.known_lying.discard(target)
            self.carried[actor].append(target)
        elif kind == "drop":
            self.carried[actor].remove(target)
            self.lying_at[target] = self.actor_place[actor]
            self.known_lying.add(target)
        elif kind == "give":
            obj, receiver = target
            self.carried[actor].remove(obj)
            self.carried[receiver].append(obj)
        else:
            raise ValueError(f"unknown action kind {kind!r}")
        self._extend_trails()

    def _extend_trails(self) -> None:
        for obj in OBJECTS:
            place = self.object_place(obj)
            if place is not None and (not self.trail[obj] or self.trail[obj][-1] != place):
                self.trail[obj].append(place)

    # --- answers -----------------------------------------------------------------------------------

    def count_answer(self, actor: str) -> str:
        return COUNT_WORDS[len(self.carried[actor])]

    def list_answer(self, actor: str) -> str:
        return list_answer(self.carried[actor])


def render(action: Action, rng: random.Random) -> str:
    """The sentence of an action, lower-case, space-separated, ending with " ."."""
    kind, actor, target = action
    if kind == "move":
        return f"{actor} {rng.choice(MOVE_VERBS)} the {target} ."
    if kind == "get":
        return f"{actor} {rng.choice(GET_VERBS)} the {target} ."
    if kind == "drop":
        return f"{actor} {rng.choice(DROP_VERBS)} the {target} ."
    obj, receiver = target
    return f"{actor} {rng.choice(GIVE_VERBS)} the {obj} to {receiver} ."
