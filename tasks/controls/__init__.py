"""Control tasks: Delétang et al.'s context-free tasks and Zoology's multi-query associative recall.

They separate state tracking from what else a model can or cannot do: the context-free tasks need a stack or
unbounded memory rather than a finite state, MQAR needs recall rather than state tracking.

Public API:
  TASKS                 task name -> ControlTask (.chance, .train_max_len, .sample(length, rng))
  BUCKETS               ("id", "ood2x", "ood4x", "ood8x")
  bucket_lengths(task, train_max_len=None) -> {bucket: (min_len, max_len)}
  make_docs(task, bucket, *, seed, num_docs, lengths, positions) -> evaluation documents
  request_arguments(doc) -> the document's (context, continuation) loglikelihood requests
  training_batches(task, *, min_len, max_len, batch_size, seed, start=0) -> Iterator[dict]
  tokenizer_for(task) -> tokenizers.Tokenizer;  write_tokenizer(task, path) -> Path
"""

from .data import (
    BUCKETS,
    bucket_lengths,
    make_docs,
    request_arguments,
    scored_positions,
    tokenizer_for,
    training_batches,
    write_tokenizer,
)
from .generators import TASK_NAMES, TASKS, ControlTask, Example

__all__ = [
    "BUCKETS",
    "TASKS",
    "TASK_NAMES",
    "ControlTask",
    "Example",
    "bucket_lengths",
    "make_docs",
    "request_arguments",
    "scored_positions",
    "tokenizer_for",
    "training_batches",
    "write_tokenizer",
]
