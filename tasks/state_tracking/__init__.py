"""State-tracking tasks (regular languages): group word problems, A5 x M, Delétang et al.'s regular tasks.

Public API:
  TASKS                 task name -> TaskSpec (.chance, .train_max_len, .sample(length, rng))
  BUCKETS               ("id", "ood2x", "ood4x", "ood8x"): the length buckets of every task
  buckets_of(task)      the task's buckets: BUCKETS, then its shifted buckets (shifts.py)
  bucket_lengths(task, train_max_len=None) -> {bucket: (min_len, max_len)}
  make_docs(task, bucket, *, seed, num_docs, lengths, p_identity) -> evaluation documents
  training_batches(task, *, min_len, max_len, batch_size, seed, p_identity=None, start=0,
                   p_identity_mix=None, p_identity_run=0.0) -> Iterator[dict]
  tokenizer_for(task) -> tokenizers.Tokenizer;  write_tokenizer(task, path) -> Path
"""

from .data import (
    BUCKETS,
    bucket_lengths,
    buckets_of,
    make_docs,
    tokenizer_for,
    training_batches,
    write_tokenizer,
)
from .specs import TASK_NAMES, TASKS, TaskSpec

__all__ = [
    "BUCKETS",
    "TASKS",
    "TASK_NAMES",
    "TaskSpec",
    "bucket_lengths",
    "buckets_of",
    "make_docs",
    "tokenizer_for",
    "training_batches",
    "write_tokenizer",
]
