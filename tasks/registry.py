"""The task families and the one place each registers: names, buckets, chance, tokenizers, training data.

A family is a set of tasks generated offline and evaluated through lm-eval YAMLs under one name prefix:

  family           prefix     lm-eval tasks                    groups                          options
  state_tracking   st         st_<task>_<bucket>               st_<task>, state_tracking       st_*
  babi             babi_gen   babi_gen_<task>_<bucket>         babi_gen_<task>, babi_gen       babi_*
  text             ppl        ppl_local_text (no buckets)      -                               ppl_*
  pydoc            pydoc      pydoc_<task>_<bucket>            pydoc_<task>, pydoc             pydoc_*
  controls         ctl        ctl_<task>_<bucket>              ctl_<task>, controls            ctl_*

Bucket names never contain "_", so ``<prefix>_<task>_<bucket>`` splits unambiguously even though task
names may (``even_pairs``). Importing this module is cheap: the built-in families are imported on the
first call that needs them (``families()`` and everything built on it).

    from implicit_ssm_eval.tasks.registry import family_of, family_for_task
    family, task, bucket = family_of("st_a5_ident50")      # (state_tracking, "a5", "ident50")
    family_for_task("qa1").training_batches("qa1", min_len=2, max_len=10, batch_size=8, seed=0)
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Modules whose ``FAMILY`` is registered on first use, in this order.
BUILTIN_FAMILY_MODULES = (
    "implicit_ssm_eval.tasks.state_tracking.family",
    "implicit_ssm_eval.tasks.babi.family",
    "implicit_ssm_eval.tasks.text.family",
    "implicit_ssm_eval.tasks.text.pydoc_family",
    "implicit_ssm_eval.tasks.controls.family",
)


class UnknownTaskError(ValueError):
    """A task, bucket or lm-eval name that no registered family knows."""


@dataclass(frozen=True)
class BucketInfo:
    """One bucket of one task."""

    name: str  # "id", "ood2x", ... or a shifted bucket's name ("ident50", ...)
    lengths: tuple[int, int]  # inclusive (min, max) length of its documents under the default options
    multiplier: float | None  # length relative to the training length for length buckets (id=1, ood2x=2, ...),
    #                           None for shifted buckets (their length is in ``lengths``)
    shift: str | None  # None for a plain length bucket; a short label of a distribution shift
    description: str  # one line


@dataclass(frozen=True)
class Family:
    """A task family: its lm-eval names and the functions that describe and generate its tasks.

    The last five fields are the family's own functions, each taking a task name already checked to be one
    of ``tasks``; ``make_tokenizer`` and ``make_batches`` are None for a family without them (text).
    """

    name: str  # "state_tracking", "babi", "text"
    prefix: str  # lm-eval name prefix: tasks <prefix>_<task>_<bucket>, groups <prefix>_<task>
    group: str  # the family's top lm-eval group (text: its one task)
    tasks: tuple[str, ...]  # the family's task names ("a5", "parity", ...)
    options_prefix: str  # metadata option namespace ("st_", "babi_", "ppl_")
    num_docs_option: str | None  # "st_num_docs", "babi_num_docs", None for text
    describe_buckets: Callable[[str], tuple[BucketInfo, ...]] = field(repr=False, compare=False)
    chance_of: Callable[[str], float] = field(repr=False, compare=False)
    train_max_len_of: Callable[[str], int] | None = field(repr=False, compare=False)
    make_tokenizer: Callable[[str], Tokenizer] | None = field(repr=False, compare=False)
    make_batches: Callable[..., Iterator[dict]] | None = field(repr=False, compare=False)

    @property
    def seed_option(self) -> str | None:
        """The metadata option choosing the evaluation data's seed (``st_seed``, ``babi_seed``, ``ctl_seed``; default
        0 everywhere); None for a family that generates no data (text). A leaderboard at several seeds sets it."""
        return None if self.num_docs_option is None else f"{self.options_prefix}seed"

    def check_task(self, task: str) -> str:
        """``task`` if it is one of the family's tasks, else an UnknownTaskError listing the valid ones."""
        if task not in self.tasks:
            raise UnknownTaskError(f"unknown {self.name} task {task!r}; valid tasks are {list(self.tasks)}")
        return task

    def lm_eval_name(self, task: str, bucket: str | None = None) -> str:
        """The lm-eval name of a task's group (bucket None) or of one of its buckets: ``st_a5``, ``st_a5_id``."""
        self.check_task(task)
        if bucket is None:
            return f"{self.prefix}_{task}"
        self.bucket_info(task, bucket)
        return f"{self.prefix}_{task}_{bucket}"

    def parse(self, lm_eval_name: str) -> tuple[str, str | None] | None:
        """(task, bucket) of one of our lm-eval task names, (task, None) for a task's group, None otherwise.

        The family's top group (``state_tracking``) names no task: None (compare with ``group``).
        """
        for task in self.tasks:
            stem = f"{self.prefix}_{task}"
            if lm_eval_name == stem:
                return task, None
            bucket = lm_eval_name.removeprefix(stem + "_")
            if bucket != lm_eval_name and bucket in self.buckets(task):
                return task, bucket
        return None

    def buckets(self, task: str) -> tuple[str, ...]:
        """Every bucket of the task, length buckets first (empty for text)."""
        return tuple(info.name for info in self.describe_buckets(self.check_task(task)))

    def length_buckets(self, task: str) -> tuple[str, ...]:
        """The buckets that differ from training only in length (multiplier set)."""
        return tuple(info.name for info in self.describe_buckets(self.check_task(task)) if info.shift is None)

    def shift_buckets(self, task: str) -> tuple[str, ...]:
        """The distribution-shift buckets (``shift`` set)."""
        return tuple(info.name for info in self.describe_buckets(self.check_task(task)) if info.shift is not None)

    def bucket_info(self, task: str, bucket: str) -> BucketInfo:
        infos = {info.name: info for info in self.describe_buckets(self.check_task(task))}
        if bucket not in infos:
            raise UnknownTaskError(f"unknown bucket {bucket!r} of {self.name} task {task!r}; "
                                   f"valid buckets are {list(infos)}")  # fmt: skip
        return infos[bucket]

    def chance(self, task: str) -> float:
        """Accuracy of uniform guessing among the answers; NaN for a task without accuracy (text)."""
        return self.chance_of(self.check_task(task))

    def train_max_len(self, task: str) -> int:
        """The training length L the length buckets are multiples of."""
        self.check_task(task)
        if self.train_max_len_of is None:
            raise ValueError(f"the {self.name} family has no training length")
        return self.train_max_len_of(task)

    def tokenizer_for(self, task: str) -> Tokenizer:
        """The task's tokenizer: <pad>=0, <unk>=1, <eos>=2, then the task's symbols (pydoc: bytes and BPE merges)."""
        self.check_task(task)
        if self.make_tokenizer is None:
            raise ValueError(f"the {self.name} family has no task tokenizer: models bring their own")
        return self.make_tokenizer(task)

    def write_tokenizer(self, task: str, path: str | Path) -> Path:
        """Write the task's tokenizer as a ``tokenizers`` ``tokenizer.json`` at ``path``; returns the path."""
        from .common import save_tokenizer

        return save_tokenizer(self.tokenizer_for(task), path)

    def training_batches(self, task: str, *, min_len: int, max_len: int, batch_size: int, seed: int,
                         start: int = 0, **options: Any) -> Iterator[dict]:
        """Endless batches {"input_ids": (B, L) long, "labels": (B, L) long, -100 on padding}.

        Deterministic given ``seed``; ``start`` skips to batch ``start``. ``options`` are the family's
        (state tracking: p_identity, p_identity_mix, p_identity_run; bAbI: none).
        """
        self.check_task(task)
        if self.make_batches is None:
            raise ValueError(f"the {self.name} family has no training data")
        return self.make_batches(task, min_len=min_len, max_len=max_len, batch_size=batch_size, seed=seed,
                                 start=start, **options)  # fmt: skip


_FAMILIES: dict[str, Family] = {}
_builtins_loaded = False


def register_family(family: Family) -> Family:
    """Add ``family``; its name, prefix, group and task names must not clash with a registered family's."""
    _load_builtins()
    return _add(family)


def _add(family: Family) -> Family:
    if "_" in "".join(b for task in family.tasks for b in family.buckets(task)):
        raise ValueError(f"bucket names of family {family.name!r} must not contain '_'")
    for other in _FAMILIES.values():
        clashes = {
            "name": family.name == other.name,
            "prefix": family.prefix == other.prefix,
            "group": family.group == other.group,
            "task names": bool(set(family.tasks) & set(other.tasks)),
        }
        for what, clash in clashes.items():
            if clash:
                raise ValueError(f"family {family.name!r} has the same {what} as the registered {other.name!r}")
    _FAMILIES[family.name] = family
    return family


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in BUILTIN_FAMILY_MODULES:
        _add(importlib.import_module(module).FAMILY)


def families() -> dict[str, Family]:
    """Every registered family, by name (the built-ins first)."""
    _load_builtins()
    return dict(_FAMILIES)


def family_of(lm_eval_name: str) -> tuple[Family, str, str | None] | None:
    """(family, task, bucket) of an lm-eval task name, (family, task, None) of a task group, else None."""
    for family in families().values():
        parsed = family.parse(lm_eval_name)
        if parsed is not None:
            return family, *parsed
    return None


def family_for_task(task: str) -> Family:
    """The family of a task name ("a5", "qa1"); an UnknownTaskError listing every valid task otherwise."""
    for family in families().values():
        if task in family.tasks:
            return family
    valid = {family.name: list(family.tasks) for family in families().values()}
    raise UnknownTaskError(f"unknown task {task!r}; valid tasks are {valid}")


def no_chance(task: str) -> float:
    """The chance level of a task scored without accuracy (perplexity)."""
    return math.nan
