"""Every word the bAbI generators can emit, in a fixed order: the shared vocabulary of all bAbI tasks.

Answers are single tokens: places, yes/no, counts, a list of carried objects as one comma-joined token
in alphabetical order ("apple,milk", or "nothing"), and a two-step path as one token ("n,e").
"""

from __future__ import annotations

import itertools

ACTORS = ("mary", "john", "sandra", "daniel")
PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
# qa19 lays out up to 24 rooms, so it draws from a larger pool that starts with PLACES
EXTRA_PLACES = (
    "attic", "balcony", "cellar", "closet", "den", "foyer", "garage", "gallery", "laundry",
    "library", "lobby", "nursery", "pantry", "parlor", "patio", "porch", "studio", "workshop",
)  # fmt: skip
PATH_PLACES = PLACES + EXTRA_PLACES
OBJECTS = ("apple", "book", "football", "milk")
MAX_CARRIED = 3  # keeps the list and count answer sets small: none..three

MOVE_VERBS = ("went to", "moved to", "journeyed to", "travelled to", "went back to")
GET_VERBS = ("got", "grabbed", "took", "picked up")
DROP_VERBS = ("dropped", "discarded", "left", "put down")
GIVE_VERBS = ("gave", "handed", "passed")

DIRECTIONS = {"n": (0, 1), "s": (0, -1), "e": (1, 0), "w": (-1, 0)}
DIRECTION_WORDS = {"n": "north", "s": "south", "e": "east", "w": "west"}
OPPOSITE = {"n": "s", "s": "n", "e": "w", "w": "e"}

COUNT_WORDS = ("none", "one", "two", "three")
YES_NO = ("yes", "no")


def list_answer(objects: list[str] | set[str]) -> str:
    """The qa8 answer token: carried objects sorted and comma-joined, or "nothing"."""
    return ",".join(sorted(objects)) if objects else "nothing"


LIST_ANSWERS = tuple(
    list_answer(set(combo)) for size in range(MAX_CARRIED + 1) for combo in itertools.combinations(OBJECTS, size)
)
# a tree path of two steps never turns back, so 4 x 3 answers
PATH_ANSWERS = tuple(f"{a},{b}" for a in DIRECTIONS for b in DIRECTIONS if b != OPPOSITE[a])

# question kind -> its possible answers; chance level = 1 / len(answers)
ANSWERS = {
    "where_actor": PLACES,
    "where_object": PLACES,
    "where_before": PLACES,
    "yes_no": YES_NO,
    "count": COUNT_WORDS,
    "list": LIST_ANSWERS,
    "path": PATH_ANSWERS,
}

_FUNCTION_WORDS = (
    ".", "?", "the", "to", "where", "is", "was", "before", "in", "how", "many", "objects", "carrying",
    "what", "do", "you", "go", "from", "of", "back", "up", "down", "put", "picked",
)  # fmt: skip


def vocabulary() -> tuple[str, ...]:
    """All words in a fixed order (duplicates are dropped by the tokenizer, keeping the first id)."""
    verbs = tuple(w for phrase in (*MOVE_VERBS, *GET_VERBS, *DROP_VERBS, *GIVE_VERBS) for w in phrase.split())
    words = (
        *_FUNCTION_WORDS,
        *ACTORS,
        *PATH_PLACES,
        *OBJECTS,
        *verbs,
        *DIRECTION_WORDS.values(),
        *YES_NO,
        *COUNT_WORDS,
        *LIST_ANSWERS,
        *PATH_ANSWERS,
    )
    return tuple(dict.fromkeys(words))
