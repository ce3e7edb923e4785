"""The pydoc family in the task registry: language modelling on held-out Python documentation.

  tasks   pydoc_ppl_<bucket>    bits per byte of windows of K*L corpus tokens (loglikelihood_rolling)
          pydoc_cloze_<bucket>  LAMBADA-style last-word accuracy with K*L tokens of context
  groups  pydoc_ppl, pydoc_cloze, pydoc
  buckets id, ood2x, ood4x, ood8x (K = 1, 2, 4, 8; L = 256 corpus tokens, the training context)

Its tokenizer is the corpus's byte-level BPE; its training data are the packed training tokens (``packing.py``).
"""

from __future__ import annotations

from ..common import BUCKET_MULTIPLIERS
from ..registry import BucketInfo, Family, no_chance
from .heldout import BUCKETS, FAMILY_NAME, TASKS, TRAIN_CONTEXT, bucket_lengths, cloze_chance
from .packing import training_batches
from .shipped import corpus_tokenizer

_DESCRIPTIONS = {
    "ppl": "held-out windows of {k} times the training context",
    "cloze": "the last word of a held-out paragraph after {k} times the training context",
}


def bucket_infos(task: str) -> tuple[BucketInfo, ...]:
    lengths = bucket_lengths()
    return tuple(BucketInfo(b, lengths[b], float(BUCKET_MULTIPLIERS[b]), None,
                            _DESCRIPTIONS[task].format(k=BUCKET_MULTIPLIERS[b])) for b in BUCKETS)  # fmt: skip


def chance_of(task: str) -> float:
    """ppl: NaN (no accuracy); cloze: 1 / the number of distinct target words of the test split."""
    return no_chance(task) if task == "ppl" else cloze_chance("test")


FAMILY = Family(
    name=FAMILY_NAME,
    prefix="pydoc",
    group="pydoc",
    tasks=TASKS,
    options_prefix="pydoc_",
    num_docs_option="pydoc_num_docs",
    describe_buckets=bucket_infos,
    chance_of=chance_of,
    train_max_len_of=lambda task: TRAIN_CONTEXT,
    make_tokenizer=lambda task: corpus_tokenizer(),
    make_batches=training_batches,
)
