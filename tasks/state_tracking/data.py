"""Evaluation documents, training batches and tokenizers of the state-tracking tasks.

Buckets: the length buckets BUCKETS of every task, then the task's shifted buckets (``shifts.py``).

Seeds: evaluation document i of (task, bucket, seed) uses ``derive_seed("state_tracking/eval", task,
bucket, seed, i)``; training batch j of (task, seed) uses ``derive_seed("state_tracking/train", task,
seed, j)``. The namespaces differ, so the two never share a random stream. Beyond that, sequences of
length >= KEY_LEN are split by the held-out partition of their first KEY_LEN symbols (``tasks/common.py``):
evaluation accepts only reserved prefixes, training rejects them, so no evaluation sequence of length
>= KEY_LEN can occur in training data whatever the seeds. Shorter sequences may coincide by chance.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
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
from .shifts import SHIFT_MULTIPLIER, identity_of, identity_run, shifts_of
from .specs import TASKS, Plan, TaskSpec, get_spec

if TYPE_CHECKING:
    import torch

FAMILY_NAME = "state_tracking"
BUCKETS = tuple(BUCKET_MULTIPLIERS)  # the length buckets, shared by every task
HASHED_FIELDS = ("input", "target", "states", "length")  # what defines the data, hashed in this order


def buckets_of(task_name: str) -> tuple[str, ...]:
    """Every bucket of a task: the length buckets, then its shifted buckets."""
    return (*BUCKETS, *shifts_of(task_name))


def resolve_spec(task_name: str, p_identity: float | None = None) -> TaskSpec:
    """The task's spec with ``p_identity`` applied (None keeps the task's default)."""
    return get_spec(task_name).with_p_identity(p_identity)


def bucket_lengths(task_name: str, train_max_len: int | None = None) -> dict[str, tuple[int, int]]:
    """Inclusive (min, max) length per bucket: id = [id_min_len, L], oodKx = K*L, shifted buckets 2L.

    L is the training length (the task's own unless ``train_max_len`` is given).
    """
    spec = get_spec(task_name)
    longest = spec.train_max_len if train_max_len is None else train_max_len
    # a task evaluated in-distribution at one fixed length (A5 x M) keeps doing so at a new length
    fixed_id = spec.id_min_len == spec.train_max_len
    lengths = default_buckets(longest, longest if fixed_id else spec.id_min_len)
    for bucket in shifts_of(task_name):
        lengths[bucket] = (SHIFT_MULTIPLIER * longest, SHIFT_MULTIPLIER * longest)
    return lengths


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
    ``states`` (state after every prefix), ``length``, ``family``, ``task``, ``bucket``, ``index``,
    ``chance`` and ``data_hash`` (of all documents of the bucket). ``p_identity`` applies to length
    buckets only: a shifted bucket fixes its own symbol distribution.
    """
    valid = buckets_of(task_name)
    if bucket not in valid:
        raise ValueError(f"unknown bucket {bucket!r} of task {task_name!r}; valid buckets are {list(valid)}")
    plan = _shift_plan(task_name, bucket, p_identity)
    spec = resolve_spec(task_name, p_identity)
    lo, hi = lengths if lengths is not None else bucket_lengths(task_name)[bucket]
    docs = [_make_doc(spec, bucket, seed, i, lo, hi, plan) for i in range(num_docs)]
    fingerprint = data_hash(docs, HASHED_FIELDS)
    for doc in docs:
        doc["data_hash"] = fingerprint
    return docs


def _shift_plan(task_name: str, bucket: str, p_identity: float | None) -> Plan | None:
    """The symbol plan of a shifted bucket; None for a length bucket (the task's own distribution)."""
    shift = shifts_of(task_name).get(bucket)
    if shift is not None and p_identity is not None:
        raise ValueError(f"p_identity does not apply to the shifted bucket {bucket!r}: it fixes its own symbols")
    return None if shift is None else shift.plan


def _make_doc(spec: TaskSpec, bucket: str, seed: int, index: int, lo: int, hi: int,
              plan: Plan | None) -> dict[str, Any]:
    rng = random.Random(derive_seed("state_tracking/eval", spec.name, bucket, seed, index))
    symbols, states = spec.sample(rng.randint(lo, hi), rng, split="eval", plan=plan)
    return {
        "family": FAMILY_NAME,
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
    p_identity_mix: Sequence[float] | None = None,
    p_identity_run: float = 0.0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches {"input_ids": (B, L), "labels": (B, L)}, deterministic given ``seed``.

    Batch j depends only on (task, seed, j and the other arguments); ``start`` skips to batch ``start`` at
    no cost, so a resumed training run sees exactly the batches an uninterrupted one would.

    labels[b, t] is the token id of the state after symbol t; each sequence's length is uniform in
    [min_len, max_len]; sequences are right-padded to the batch's longest with input id 0 and label -100.

    Options of the tasks with an identity (word problems, a5xm), to train for the shifted buckets:
      p_identity      every symbol is the identity with this probability, else uniform (identity included)
      p_identity_mix  each sequence draws its p_identity uniformly from this tuple, e.g. (0, 0.25, 0.5, 0.75)
      p_identity_run  probability that a sequence gets one run of identities, of length uniform in
                      [1, max(1, n // 2)], starting after the first 13 symbols where the length allows
    Unset options draw nothing from the random stream, so batches without them are unchanged.
    """
    if task_name not in TASKS:
        raise ValueError(f"unknown state-tracking task {task_name!r}; valid tasks are {list(TASKS)}")
    min_len = as_int("min_len", min_len, minimum=1)
    max_len = as_int("max_len", max_len, minimum=min_len)
    batch_size = as_int("batch_size", batch_size, minimum=1)
    specs = _training_specs(task_name, p_identity, p_identity_mix)
    run_plans = _identity_run_plans(task_name, specs, p_identity_run)
    vocab = tokenizer_for(task_name).get_vocab()
    batch_index = as_int("start", start, minimum=0)
    while True:
        rng = random.Random(derive_seed("state_tracking/train", task_name, seed, batch_index))
        pairs = [_training_sequence(specs, run_plans, p_identity_run, min_len, max_len, rng)
                 for _ in range(batch_size)]  # fmt: skip
        yield _collate(pairs, vocab)
        batch_index += 1


def _training_sequence(specs: list[TaskSpec], run_plans: list[Plan] | None, p_identity_run: float, min_len: int,
                       max_len: int, rng: random.Random) -> tuple[list[str], list[str]]:
    # the order of draws (length, mixture, run) is part of the data: keep it
    length = rng.randint(min_len, max_len)
    choice = rng.randrange(len(specs)) if len(specs) > 1 else 0
    with_run = run_plans is not None and rng.random() < p_identity_run
    plan = run_plans[choice] if with_run and run_plans is not None else None  # with_run implies run_plans
    return specs[choice].sample(length, rng, split="train", plan=plan)


def _training_specs(task_name: str, p_identity: float | None,
                    p_identity_mix: Sequence[float] | None) -> list[TaskSpec]:
    """One spec per mixture component (a single one without a mixture)."""
    if p_identity_mix is None:
        return [resolve_spec(task_name, p_identity)]
    if p_identity is not None:
        raise ValueError("give p_identity or p_identity_mix, not both")
    if isinstance(p_identity_mix, (str, bytes)) or not isinstance(p_identity_mix, Sequence) or not p_identity_mix:
        raise ValueError(f"p_identity_mix must be a non-empty tuple of numbers in [0, 1], got {p_identity_mix!r}")
    return [resolve_spec(task_name, p) for p in p_identity_mix]


def _identity_run_plans(task_name: str, specs: list[TaskSpec], p_identity_run: float) -> list[Plan] | None:
    if isinstance(p_identity_run, bool) or not isinstance(p_identity_run, (int, float)) or not (
        0.0 <= p_identity_run <= 1.0
    ):
        raise ValueError(f"p_identity_run must be a number in [0, 1], got {p_identity_run!r}")
    if p_identity_run == 0:
        return None
    identity = identity_of(task_name)
    return [identity_run(identity, spec.draw) for spec in specs]


def _collate(pairs: list[tuple[list[str], list[str]]], vocab: dict[str, int]) -> dict[str, torch.Tensor]:
    import torch

    width = max(len(symbols) for symbols, _ in pairs)
    input_ids = torch.full((len(pairs), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for b, (symbols, states) in enumerate(pairs):
        input_ids[b, : len(symbols)] = torch.tensor([vocab[s] for s in symbols])
        labels[b, : len(states)] = torch.tensor([vocab[s] for s in states])
    return {"input_ids": input_ids, "labels": labels}
