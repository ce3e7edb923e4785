"""The controls family in the task registry (``implicit_ssm_eval.tasks.registry``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..common import BUCKET_MULTIPLIERS
from ..registry import BucketInfo, Family
from .data import BUCKETS, FAMILY_NAME, bucket_lengths, tokenizer_for, training_batches
from .generators import TASK_NAMES, get_task

_DESCRIPTIONS = {
    "id": "in distribution: the training lengths",
    "ood2x": "twice the longest training length",
    "ood4x": "four times the longest training length",
    "ood8x": "eight times the longest training length",
}


def bucket_infos(task: str) -> tuple[BucketInfo, ...]:
    lengths = bucket_lengths(task)
    return tuple(BucketInfo(b, lengths[b], float(BUCKET_MULTIPLIERS[b]), None, _DESCRIPTIONS[b]) for b in BUCKETS)


def batches(task: str, *, min_len: int, max_len: int, batch_size: int, seed: int, start: int = 0,
            **options: Any) -> Iterator[dict]:
    if options:
        raise ValueError(f"controls training takes no options, got {sorted(options)}")
    return training_batches(task, min_len=min_len, max_len=max_len, batch_size=batch_size, seed=seed, start=start)


FAMILY = Family(
    name=FAMILY_NAME,
    prefix="ctl",
    group="controls",
    tasks=TASK_NAMES,
    options_prefix="ctl_",
    num_docs_option="ctl_num_docs",
    describe_buckets=bucket_infos,
    chance_of=lambda task: get_task(task).chance,
    train_max_len_of=lambda task: get_task(task).train_max_len,
    make_tokenizer=tokenizer_for,
    make_batches=batches,
)
