"""The state-tracking family in the task registry (``implicit_ssm_eval.tasks.registry``)."""

from __future__ import annotations

from ..common import BUCKET_MULTIPLIERS
from ..registry import BucketInfo, Family
from .data import (
    BUCKETS,
    FAMILY_NAME,
    bucket_lengths,
    tokenizer_for,
    training_batches,
)
from .shifts import shifts_of
from .specs import TASK_NAMES, get_spec

_LENGTH_DESCRIPTIONS = {
    "id": "in distribution: the training lengths",
    "ood2x": "twice the longest training length",
    "ood4x": "four times the longest training length",
    "ood8x": "eight times the longest training length",
}


def bucket_infos(task: str) -> tuple[BucketInfo, ...]:
    """The length buckets, then the shifted buckets (multiplier None, length 2L) of one task."""
    lengths = bucket_lengths(task)
    infos = [BucketInfo(b, lengths[b], float(BUCKET_MULTIPLIERS[b]), None, _LENGTH_DESCRIPTIONS[b]) for b in BUCKETS]
    infos += [BucketInfo(s.bucket, lengths[s.bucket], None, s.label, s.description) for s in shifts_of(task).values()]
    return tuple(infos)


FAMILY = Family(
    name=FAMILY_NAME,
    prefix="st",
    group="state_tracking",
    tasks=TASK_NAMES,
    options_prefix="st_",
    num_docs_option="st_num_docs",
    describe_buckets=bucket_infos,
    chance_of=lambda task: get_spec(task).chance,
    train_max_len_of=lambda task: get_spec(task).train_max_len,
    make_tokenizer=tokenizer_for,
    make_batches=training_batches,
)
