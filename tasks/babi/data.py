"""Evaluation documents, training batches and the tokenizer of the bAbI-style tasks.

Seeds: evaluation document i of (task, bucket, seed) uses ``derive_seed("babi/eval", task, bucket, seed,
i)``, training example j of batch b uses ``derive_seed("babi/train", task, seed, b)``: different
namespaces, so never the same random stream. Stories are also split by the held-out partition of their
first statements (``stories.KEY_STATEMENTS``), so no evaluation story can occur in training data.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from ..common import (
    IGNORE_INDEX,
    PAD_ID,
    as_int,
    data_hash,
    derive_seed,
    save_tokenizer,
    word_level_tokenizer,
)
from .stories import MAX_PATH_EDGES, TASKS, BabiTask, generate
from .vocabulary import ANSWERS, vocabulary

if TYPE_CHECKING:
    import torch

FAMILY_NAME = "babi"
BUCKETS = ("id", "ood2x", "ood4x")
HASHED_FIELDS = ("input", "target", "length")


def get_task(task_name: str) -> BabiTask:
    if task_name not in TASKS:
        raise ValueError(f"unknown bAbI task {task_name!r}; valid tasks are {list(TASKS)}")
    return TASKS[task_name]


def bucket_lengths(task_name: str, train_max_len: int | None = None) -> dict[str, tuple[int, int]]:
    """Inclusive length ranges: id = [id_min_len, L], ood2x = [L+1, 2L], ood4x = [2L+1, 4L]."""
    task = get_task(task_name)
    longest = task.train_max_len if train_max_len is None else train_max_len
    return {
        "id": (min(task.id_min_len, longest), longest),
        "ood2x": (longest + 1, 2 * longest),
        "ood4x": (2 * longest + 1, 4 * longest),
    }


def check_lengths(task_name: str, lo: int, hi: int) -> None:
    """qa19 maps are trees over distinct rooms, so their statement count is bounded."""
    if task_name == "qa19" and not (2 <= lo <= hi <= MAX_PATH_EDGES):
        raise ValueError(f"qa19 lengths must lie in [2, {MAX_PATH_EDGES}] map statements, got [{lo}, {hi}]")


def make_docs(
    task_name: str,
    bucket: str,
    *,
    seed: int = 0,
    num_docs: int = 100,
    lengths: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Evaluation documents of one bucket; document i depends only on (task, bucket, seed, i, lengths).

    Each document: ``input`` (story and question), ``target`` (one-token answer), ``length``,
    ``question_kind``, ``family``, ``task``, ``bucket``, ``index``, ``chance`` and ``data_hash``.
    """
    if bucket not in BUCKETS:
        raise ValueError(f"unknown bucket {bucket!r}; valid buckets are {list(BUCKETS)}")
    task = get_task(task_name)
    lo, hi = lengths if lengths is not None else bucket_lengths(task_name)[bucket]
    check_lengths(task_name, lo, hi)
    docs = []
    for index in range(num_docs):
        rng = random.Random(derive_seed("babi/eval", task.name, bucket, seed, index))
        docs.append(_doc(task, bucket, index, rng.randint(lo, hi), rng))
    fingerprint = data_hash(docs, HASHED_FIELDS)
    for doc in docs:
        doc["data_hash"] = fingerprint
    return docs


def _doc(task: BabiTask, bucket: str, index: int, length: int, rng: random.Random) -> dict[str, Any]:
    generated = generate(task, length, rng, split="eval")
    return {
        "family": FAMILY_NAME,
        "task": task.name,
        "bucket": bucket,
        "index": index,
        **generated,
        "length": length,
        "chance": 1 / len(ANSWERS[generated["question_kind"]]),
    }


@cache
def _tokenizer_json() -> str:
    return word_level_tokenizer(vocabulary()).to_str()


def tokenizer_for(task_name: str) -> Tokenizer:
    """The tokenizer of a bAbI task: one WordLevel vocabulary shared by all (<pad>=0, <unk>=1, <eos>=2).

    A fresh object per call, so a caller enabling padding or truncation does not change anyone else's.
    """
    get_task(task_name)
    return Tokenizer.from_str(_tokenizer_json())


def write_tokenizer(task_name: str, path: str | Path) -> Path:
    """Write the task's tokenizer as ``tokenizer.json`` at ``path``; returns the path."""
    return save_tokenizer(tokenizer_for(task_name), path)


def training_examples(
    task_name: str, *, seed: int, min_len: int | None = None, max_len: int | None = None, start: int = 0
) -> Iterator[dict[str, str]]:
    """Endless training documents {"input", "target", "question_kind"}; lengths default to the id bucket.

    Example j depends only on (task, seed, j, lengths); the iterator begins at example ``start``.
    """
    task = get_task(task_name)
    id_lo, id_hi = bucket_lengths(task_name)["id"]
    lo = as_int("min_len", id_lo if min_len is None else min_len, minimum=1)
    hi = as_int("max_len", id_hi if max_len is None else max_len, minimum=lo)
    check_lengths(task_name, lo, hi)
    example = as_int("start", start, minimum=0)
    while True:
        rng = random.Random(derive_seed("babi/train", task.name, seed, example))
        yield generate(task, rng.randint(lo, hi), rng, split="train")
        example += 1


def training_batches(
    task_name: str,
    *,
    batch_size: int,
    seed: int,
    min_len: int | None = None,
    max_len: int | None = None,
    start: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches {"input_ids": (B, L), "labels": (B, L)} of story-and-question token ids.

    labels[b, t] is the answer's token id where token t is a "?" (the model answers right after the
    question mark; in ``cat`` that includes the inline answers), -100 elsewhere and on padding.
    Batch j holds examples j*B ... (j+1)*B - 1; ``start`` skips to batch ``start`` at no cost.
    """
    batch_size = as_int("batch_size", batch_size, minimum=1)
    start = as_int("start", start, minimum=0)
    vocab = tokenizer_for(task_name).get_vocab()
    examples = training_examples(task_name, seed=seed, min_len=min_len, max_len=max_len, start=start * batch_size)
    while True:
        yield _collate([next(examples) for _ in range(batch_size)], vocab)


def _collate(examples: list[dict[str, str]], vocab: dict[str, int]) -> dict[str, torch.Tensor]:
    import torch

    rows = [_ids_and_labels(ex, vocab) for ex in examples]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for b, (ids, labs) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        labels[b, : len(labs)] = torch.tensor(labs)
    return {"input_ids": input_ids, "labels": labels}


def _ids_and_labels(example: dict[str, str], vocab: dict[str, int]) -> tuple[list[int], list[int]]:
    words = example["input"].split()
    answers = [*words[1:], example["target"]]  # the token after each position; after the last: the answer
    ids = [vocab[w] for w in words]
    labels = [vocab[nxt] if w == "?" else IGNORE_INDEX for w, nxt in zip(words, answers, strict=True)]
    return ids, labels
