"""Evaluation documents, training batches and tokenizers of the control tasks.

Seeds: evaluation document i of (task, bucket, seed) uses ``derive_seed("controls/eval", task, bucket, seed, i)``;
training batch j of (task, seed) uses ``derive_seed("controls/train", task, seed, j)``: different namespaces, so
never the same random stream. Examples whose input is at least KEY_LEN symbols long (MQAR: every example) are
also split by the held-out partition of their first symbols (``tasks/common.py``): evaluation keeps only
reserved keys, training rejects them, so no such evaluation example occurs in training data whatever the seeds.

Training sequences: every symbol of an example but the last; at position t the label is the symbol at t + 1
when that symbol is an answer, else the blank ``_``. Every position of a sequence has a label (the trainer
counts a sequence's length from its labels), so "nothing to answer here" is a label of its own; the answers are
then exactly what lm-eval scores: the next symbol after the true symbols before it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from ..common import (
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
from .generators import BLANK, TASK_NAMES, ControlTask, Example, get_task

if TYPE_CHECKING:
    import torch

FAMILY_NAME = "controls"
BUCKETS = tuple(BUCKET_MULTIPLIERS)  # id, ood2x, ood4x, ood8x
HASHED_FIELDS = ("symbols", "answer_positions", "length")  # what defines the data, hashed in this order
DEFAULT_POSITIONS = 16  # answer positions scored per document for token_acc (0: all)
METRICS = ("token_acc", "seq_acc", "scaled_token_acc")  # per document, from lm_eval_hooks.process_results


def bucket_lengths(task_name: str, train_max_len: int | None = None) -> dict[str, tuple[int, int]]:
    """Inclusive (min, max) length per bucket: id = [id_min_len, L], oodKx = K*L (L the task's own unless given)."""
    task = get_task(task_name)
    longest = task.train_max_len if train_max_len is None else train_max_len
    return default_buckets(longest, task.id_min_len)


def scored_positions(num_answers: int, positions: int) -> list[int]:
    """Which answers (indices into the answer list) token_acc scores: all when there are at most ``positions``
    (or ``positions`` is 0), else ``positions`` evenly spaced ones, the first and the last included."""
    if positions == 0 or num_answers <= positions:
        return list(range(num_answers))
    if positions == 1:
        return [num_answers - 1]
    span = positions - 1
    # rounded i * (n - 1) / span; consecutive values differ by (n - 1) / span > 1, so they are distinct
    return [(i * (num_answers - 1) + span // 2) // span for i in range(positions)]


def make_docs(
    task_name: str,
    bucket: str,
    *,
    seed: int = 0,
    num_docs: int = 100,
    lengths: tuple[int, int] | None = None,
    positions: int = DEFAULT_POSITIONS,
) -> list[dict[str, Any]]:
    """Evaluation documents of one bucket; document i depends only on (task, bucket, seed, i, lengths).

    Each document: ``symbols`` (the whole sequence), ``answer_positions`` (where its answers are), ``input``
    (the symbols before the first answer, joined by spaces), ``target`` (the answers, joined), ``whole`` (the
    answers are one final block, scored by one request), ``scored`` (the answers token_acc scores, from
    ``positions``), ``length``, ``family``, ``task``, ``bucket``, ``index``, ``chance`` (of one answer position)
    and ``data_hash`` (of the bucket's symbols, answer positions and lengths; ``positions`` is not data).
    """
    task = get_task(task_name)
    if bucket not in BUCKETS:
        raise ValueError(f"unknown bucket {bucket!r} of controls task {task_name!r}; valid buckets are {list(BUCKETS)}")
    lo, hi = lengths if lengths is not None else bucket_lengths(task_name)[bucket]
    task.check_length(lo), task.check_length(hi)
    positions = as_int("positions", positions, minimum=0)
    docs = [_make_doc(task, bucket, seed, i, lo, hi, positions) for i in range(num_docs)]
    fingerprint = data_hash(docs, HASHED_FIELDS)
    for doc in docs:
        doc["data_hash"] = fingerprint
    return docs


def _make_doc(task: ControlTask, bucket: str, seed: int, index: int, lo: int, hi: int,
              positions: int) -> dict[str, Any]:
    rng = random.Random(derive_seed("controls/eval", task.name, bucket, seed, index))
    example = task.sample(rng.randint(lo, hi), rng, split="eval")
    # MQAR's answers are interleaved with its queries: no single request covers them, so all are scored
    whole = example.contiguous
    return {
        "family": FAMILY_NAME,
        "task": task.name,
        "bucket": bucket,
        "index": index,
        "input": " ".join(example.symbols[: example.answer_positions[0]]),
        "target": " ".join(example.answers),
        "symbols": list(example.symbols),
        "answer_positions": list(example.answer_positions),
        "whole": whole,
        "scored": scored_positions(len(example.answer_positions), positions if whole else 0),
        "length": example.length,
        "chance": task.chance,
    }


def request_arguments(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The (context, continuation) loglikelihood requests of a document, in the order process_results reads.

    With ``whole``: first the whole answer after the input; then one request per scored answer position, its
    context every symbol before it (the true answers included). A one-symbol answer is one request. Contexts end
    in the space before the continuation, as in the other families' YAMLs.
    """
    symbols, where = doc["symbols"], doc["answer_positions"]
    requests = []
    if doc["whole"]:
        requests.append((" ".join(symbols[: where[0]]) + " ", " ".join(symbols[where[0]:])))
        if len(where) == 1:
            return requests
    for k in doc["scored"]:
        requests.append((" ".join(symbols[: where[k]]) + " ", symbols[where[k]]))
    return requests


# --- tokenizers and training data ---------------------------------------------------------------------


@cache
def _tokenizer_json(task_name: str) -> str:
    task = get_task(task_name)
    return word_level_tokenizer((*task.input_symbols, *task.answer_symbols, BLANK)).to_str()


def tokenizer_for(task_name: str) -> Tokenizer:
    """The task's WordLevel tokenizer: <pad>=0, <unk>=1, <eos>=2, input symbols, answer symbols, the blank ``_``.

    A fresh object per call, so a caller enabling padding or truncation does not change anyone else's.
    """
    return Tokenizer.from_str(_tokenizer_json(task_name))


def write_tokenizer(task_name: str, path: str | Path) -> Path:
    """Write the task's tokenizer as a ``tokenizers`` ``tokenizer.json`` at ``path``; returns the path."""
    return save_tokenizer(tokenizer_for(task_name), path)


def training_pair(example: Example) -> tuple[list[str], list[str]]:
    """(inputs, labels) of one training sequence: every symbol but the last (the final answer, which nothing
    follows), and per position the next symbol where it is an answer, else the blank.

    This is what a model reads when lm-eval scores the answer (context and continuation, less its last token),
    and the last label is the final answer symbol, so the trainer's last_acc reports on an answer.
    """
    answers = set(example.answer_positions)
    inputs = list(example.symbols[:-1])
    return inputs, [example.symbols[t + 1] if t + 1 in answers else BLANK for t in range(len(inputs))]


def training_batches(task_name: str, *, min_len: int, max_len: int, batch_size: int, seed: int,
                     start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches {"input_ids": (B, T), "labels": (B, T)}, deterministic given ``seed``.

    Lengths (in the task's unit: input symbols, or key-value pairs for MQAR) are uniform in [min_len, max_len];
    T is the longest sequence's token count (an example less its final answer symbol, see ``training_pair``).
    Batch j depends only on (task, seed, j, the lengths); ``start`` skips to batch ``start``. Sequences are
    right-padded with input id 0 and label -100.
    """
    task = get_task(task_name)
    min_len = as_int("min_len", min_len, minimum=1)
    max_len = as_int("max_len", max_len, minimum=min_len)
    task.check_length(max_len)
    batch_size = as_int("batch_size", batch_size, minimum=1)
    vocab = tokenizer_for(task_name).get_vocab()
    batch_index = as_int("start", start, minimum=0)
    while True:
        rng = random.Random(derive_seed("controls/train", task_name, seed, batch_index))
        examples = [task.sample(rng.randint(min_len, max_len), rng, split="train") for _ in range(batch_size)]
        yield _collate(examples, vocab)
        batch_index += 1


def _collate(examples: list[Example], vocab: dict[str, int]) -> dict[str, torch.Tensor]:
    import torch

    pairs = [training_pair(example) for example in examples]
    width = max(len(inputs) for inputs, _ in pairs)
    input_ids = torch.full((len(pairs), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for b, (inputs, targets) in enumerate(pairs):
        input_ids[b, : len(inputs)] = torch.tensor([vocab[s] for s in inputs])
        labels[b, : len(targets)] = torch.tensor([vocab[s] for s in targets])
    return {"input_ids": input_ids, "labels": labels}


__all__ = ["BUCKETS", "TASK_NAMES", "bucket_lengths", "make_docs", "request_arguments", "scored_positions",
           "tokenizer_for", "training_batches", "write_tokenizer"]
