"""Evaluation documents, training batches and tokenizers of the state-tracking tasks.

Seeds: evaluation document i of (task, bucket, seed) uses ``derive_seed("state_tracking/eval", task,
bucket, seed, i)``; training batch j of (task, seed) uses ``derive_seed("state_tracking/train", task,
seed, j)``. The namespaces differ, so the two never share a random stream. Beyond that, sequences of
length >= KEY_LEN are split by the held-out partition of their first KEY_LEN symbols (``tasks/common.py``):
evaluation accepts only reserved prefixes, training rejects them, so no evaluation sequence of length
>= KEY_LEN can occur in training data whatever the seeds. Shorter sequences may coincide by chance.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from implicit_ssm_eval.tasks.common import (
    BUCKET_MULTIPLIERS,
    IGNORE_INDEX,
    PAD_ID,
    as_int,
    data_hash,
    default_buckets,
    derive_seed,
    save_tokenizer,
    word_level_tokenizer,
)
from implicit_ssm_eval.tasks.state_tracking.specs import TASKS, TaskSpec, get_spec

if TYPE_CHECKING:
    import torch

BUCKETS = tuple(BUCKET_MULTIPLIERS)
HASHED_FIELDS = ("input", "target", "states", "length")  # what defines the data, hashed in this order


def resolve_spec(task_name: str, p_identity: float | None = None) -> TaskSpec:
    """The task's spec with ``p_identity`` applied (None keeps the task's default)."""
    return get_spec(task_name).with_p_identity(p_identity)


def bucket_lengths(task_name: str, train_max_len: int | None = None) -> dict[str, tuple[int, int]]:
    """Inclusive (min, max) length per bucket: id = [id_min_len, L], oodKx = K*L, L the training length."""
    spec = get_spec(task_name)
    if train_max_len is None:
        return default_buckets(spec.train_max_len, spec.id_min_len)
    # a task evaluated in-distribution at one fixed length (A5 x M) keeps doing so at the new length
    fixed_id = spec.id_min_len == spec.train_max_len
    return default_buckets(train_max_len, train_max_len if fixed_id else spec.id_min_len)


def make_docs(
    task_name: str,
    bucket: str,
    *,
    seed: int = 0,
    num_docs: int = 100,
    lengths: tuple[int, int] | None = None,
    p_identity: float | None = None,
) -> list[dict[str, Any]]:
    """Evaluation documents of one bucket; document i depends only on (task, bucket, seed, i, lengths, p).

    Each document: ``input`` (symbols joined by spaces), ``target`` (state after the last symbol),
    ``states`` (state after every prefix), ``length``, ``bucket``, ``task``, ``index``, ``chance`` and
    ``data_hash`` (of all documents of the bucket).
    """
    if bucket not in BUCKETS:
        raise ValueError(f"unknown bucket {bucket!r}; valid buckets are {list(BUCKETS)}")
    spec = resolve_spec(task_name, p_identity)
    lo, hi = lengths if lengths is not None else bucket_lengths(task_name)[bucket]
    docs = [_make_doc(spec, bucket, seed, i, lo, hi) for i in range(num_docs)]
    fingerprint = data_hash(docs, HASHED_FIELDS)
    for doc in docs:
        doc["data_hash"] = fingerprint
    return docs


def _make_doc(spec: TaskSpec, bucket: str, seed: int, index: int, lo: int, hi: int) -> dict[str, Any]:
    rng = random.Random(derive_seed("state_tracking/eval", spec.name, bucket, seed, index))
    symbols, states = spec.sample(rng.randint(lo, hi), rng, split="eval")
    return {
        "task": spec.name,
        "bucket": bucket,
        "index": index,
        "input": " ".join(symbols),
        "target": states[-1],
        "states": states,
        "length": len(symbols),
        "chance": spec.chance,
    }


@cache
def _tokenizer_json(task_name: str) -> str:
    spec = get_spec(task_name)
    return word_level_tokenizer((*spec.input_symbols, *spec.answer_symbols)).to_str()


def tokenizer_for(task_name: str) -> Tokenizer:
    """The task's WordLevel tokenizer: <pad>=0, <unk>=1, <eos>=2, then input symbols, then answer symbols.

    A fresh object per call, so a caller enabling padding or truncation does not change anyone else's.
    """
    return Tokenizer.from_str(_tokenizer_json(task_name))


def write_tokenizer(task_name: str, path: str | Path) -> Path:
    """Write the task's tokenizer as a ``tokenizers`` ``tokenizer.json`` at ``path``; returns the path."""
    return save_tokenizer(tokenizer_for(task_name), path)


def training_batches(
    task_name: str,
    *,
    min_len: int,
    max_len: int,
    batch_size: int,
    seed: int,
    p_identity: float | None = None,
    start: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches {"input_ids": (B, L), "labels": (B, L)}, deterministic given ``seed``.

    Batch j depends only on (task, seed, j, lengths, p_identity); ``start`` skips to batch ``start`` at no
    cost, so a resumed training run sees exactly the batches an uninterrupted one would.

    labels[b, t] is the token id of the state after symbol t; each sequence's length is uniform in
    [min_len, max_len]; sequences are right-padded to the batch's longest with input id 0 and label -100.
    """
    if task_name not in TASKS:
        raise ValueError(f"unknown state-tracking task {task_name!r}; valid tasks are {list(TASKS)}")
    min_len = as_int("min_len", min_len, minimum=1)
    max_len = as_int("max_len", max_len, minimum=min_len)
    batch_size = as_int("batch_size", batch_size, minimum=1)
    spec = resolve_spec(task_name, p_identity)
    vocab = tokenizer_for(task_name).get_vocab()
    batch_index = as_int("start", start, minimum=0)
    while True:
        rng = random.Random(derive_seed("state_tracking/train", task_name, seed, batch_index))
        pairs = [spec.sample(rng.randint(min_len, max_len), rng, split="train") for _ in range(batch_size)]
        yield _collate(pairs, vocab)
        batch_index += 1


def _collate(pairs: list[tuple[list[str], list[str]]], vocab: dict[str, int]) -> dict[str, torch.Tensor]:
    import torch

    width = max(len(symbols) for symbols, _ in pairs)
    input_ids = torch.full((len(pairs), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for b, (symbols, states) in enumerate(pairs):
        input_ids[b, : len(symbols)] = torch.tensor([vocab[s] for s in symbols])
        labels[b, : len(states)] = torch.tensor([vocab[s] for s in states])
    return {"input_ids": input_ids, "labels": labels}
