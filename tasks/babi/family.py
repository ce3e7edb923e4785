"""The bAbI-style family in the task registry (``implicit_ssm_eval.tasks.registry``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..registry import BucketInfo, Family
from .data import BUCKETS, FAMILY_NAME, bucket_lengths, tokenizer_for, training_batches
from .stories import TASKS

# Story lengths vary naturally, so the out-of-distribution buckets are bands: (L, 2L], (2L, 4L].
_MULTIPLIERS = {"id": 1.0, "ood2x": 2.0, "ood4x": 4.0}
_DESCRIPTIONS = {
    "id": "in distribution: the training story lengths",
    "ood2x": "stories longer than training, up to twice the longest",
    "ood4x": "stories two to four times the longest training story",
}


def bucket_infos(task: str) -> tuple[BucketInfo, ...]:
    lengths = bucket_lengths(task)
    return tuple(BucketInfo(b, lengths[b], _MULTIPLIERS[b], None, _DESCRIPTIONS[b]) for b in BUCKETS)


def batches(task: str, *, min_len: int, max_len: int, batch_size: int, seed: int, start: int = 0,
            **options: Any) -> Iterator[dict]:
    if options:
        raise ValueError(f"bAbI training takes no options, got {sorted(options)}")
    return training_batches(task, min_len=min_len, max_len=max_len, batch_size=batch_size, seed=seed, start=start)


FAMILY = Family(
    name=FAMILY_NAME,
    prefix="babi_gen",
    group="babi_gen",
    tasks=tuple(TASKS),
    options_prefix="babi_",
    num_docs_option="babi_num_docs",
    describe_buckets=bucket_infos,
    chance_of=lambda task: TASKS[task].chance,
    train_max_len_of=lambda task: TASKS[task].train_max_len,
    make_tokenizer=tokenizer_for,
    make_batches=batches,
)
