"""bAbI-style reasoning tasks from a small world simulator: qa1, qa2, qa3, qa6, qa7, qa8, qa19 and cat.

Public API:
  TASKS                 task name -> BabiTask (.chance, .train_max_len, .unit, .version)
  BUCKETS               ("id", "ood2x", "ood4x")
  bucket_lengths(task, train_max_len=None) -> {bucket: (min_len, max_len)}
  make_docs(task, bucket, *, seed, num_docs, lengths) -> evaluation documents
  training_examples(task, *, seed, min_len=None, max_len=None) -> Iterator[dict]
  training_batches(task, *, batch_size, seed, min_len=None, max_len=None, start=0) -> Iterator[dict]
  tokenizer_for(task) -> tokenizers.Tokenizer (one vocabulary for all tasks);  write_tokenizer(task, path)
"""

from .data import (
    BUCKETS,
    bucket_lengths,
    make_docs,
    tokenizer_for,
    training_batches,
    training_examples,
    write_tokenizer,
)
from .stories import TASKS, BabiTask

__all__ = [
    "BUCKETS",
    "TASKS",
    "BabiTask",
    "bucket_lengths",
    "make_docs",
    "tokenizer_for",
    "training_batches",
    "training_examples",
    "write_tokenizer",
]
