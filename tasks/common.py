"""Helpers shared by the task families: stable seeds, the held-out partition, data hashes, options, buckets.

Determinism across machines rests on three rules kept here:
  * seeds are derived with SHA-256 from readable parts (Python's ``hash()`` is salted per process);
  * random draws use ``random.Random(int_seed)``, whose integer seeding and draws are stable across
    platforms and CPython 3 releases;
  * hashes are taken over canonical JSON (sorted keys, no whitespace).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers

SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>")  # ids 0, 1, 2 in every task tokenizer
PAD_ID = 0
IGNORE_INDEX = -100  # label of padding: torch's cross-entropy default ignore_index

# Buckets are named by their relation to the training length L: "id" is in-distribution, "oodKx" has
# length K*L. Their ids are static so result keys are stable; the lengths behind them are configurable.
BUCKET_MULTIPLIERS = {"id": 1, "ood2x": 2, "ood4x": 4, "ood8x": 8}

# One in HELDOUT_MODULUS keys is reserved for evaluation. Training generators reject keys in the
# reserved part, evaluation generators accept only those, so no evaluation item can equal a training item.
HELDOUT_MODULUS = 8


class TaskError(ValueError):
    """A task option, YAML setting or file that cannot be used; the message names it and what is valid. It ends an
    `implicit-eval` or `lm_eval` run in one line (its name is among model_adapters/errors.py's USER_ERRORS)."""


def user_options(make_dataset: Callable[..., Any]) -> Callable[..., Any]:
    """For the ``custom_dataset`` functions: lm-eval calls them with the user's --metadata and the YAML's
    dataset_kwargs, so a ValueError raised while building the documents is a bad option or setting (a misspelt
    ``st_num_doc``, a missing ``ppl_text_path``), told as a TaskError: one line instead of a traceback."""

    @functools.wraps(make_dataset)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return make_dataset(*args, **kwargs)
        except TaskError:
            raise
        except ValueError as exc:
            raise TaskError(str(exc)) from exc

    return checked


def read_utf8(path: Path, what: str) -> str:
    """A file's UTF-8 text; other bytes are a TaskError naming the file and the first bad byte."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); {what} must "
                        "be UTF-8") from None


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from readable parts, e.g. ``derive_seed("state_tracking/eval", "s5", "id", 0, 17)``."""
    payload = json.dumps([str(p) for p in parts], separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "big")


def in_heldout_partition(key: str) -> bool:
    """Whether ``key`` (a canonical text of an item or of its prefix) belongs to the evaluation-only part."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HELDOUT_MODULUS == 0


def bounded_attempts(what: str, limit: int = 10_000) -> Iterator[int]:
    """Attempt numbers for a rejection-sampling loop; a clear error instead of looping forever.

    Rejection loops run about HELDOUT_MODULUS times on average; only a degenerate request (a story too
    short to answer its question, an almost deterministic sequence distribution) exhausts the limit.
    """
    yield from range(limit)
    raise ValueError(f"gave up after {limit} attempts to {what}; the requested lengths or options are too narrow")


def accepts_key(key: str, split: str | None) -> bool:
    """Whether a generator producing ``split`` ("train", "eval" or None for unrestricted) may emit ``key``."""
    if split is None:
        return True
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train', 'eval' or None, got {split!r}")
    return in_heldout_partition(key) == (split == "eval")


def data_hash(docs: Sequence[Mapping[str, Any]], fields: Iterable[str]) -> str:
    """SHA-256 (first 16 hex digits) of the listed fields of ``docs``, in order: the data's fingerprint."""
    fields = tuple(fields)
    canonical = [[doc[f] for f in fields] for doc in docs]
    payload = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def word_level_tokenizer(symbols: Iterable[str]) -> Tokenizer:
    """A WordLevel tokenizer over whitespace-split symbols: specials (ids 0-2), then ``symbols`` in order.

    Duplicates keep their first id, so the ids depend only on the order of ``symbols``.
    """
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *symbols):
        if not token or any(ch.isspace() for ch in token):
            raise ValueError(f"vocabulary symbols must be non-empty and free of whitespace, got {token!r}")
        vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def split_options(kwargs: Mapping[str, Any], prefix: str, valid: Iterable[str], family: str) -> dict[str, Any]:
    """The ``prefix``-namespaced entries of lm-eval's merged metadata, rejecting unknown ones.

    lm-eval passes all metadata merged with model_args (``pretrained=...``) to ``custom_dataset``; keys
    outside our namespace belong to someone else and are ignored, but a misspelt key of ours is an error.
    """
    valid = sorted(valid)
    ours = {k: v for k, v in kwargs.items() if k.startswith(prefix)}
    unknown = sorted(set(ours) - set(valid))
    if unknown:
        raise ValueError(f"unknown {family} option(s) {unknown}; valid options are {valid}")
    return ours


def as_int(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def default_buckets(train_max_len: int, id_min_len: int) -> dict[str, tuple[int, int]]:
    """Length range per bucket: ``id`` samples [id_min_len, L]; ``oodKx`` is the single length K*L."""
    buckets = {"id": (min(id_min_len, train_max_len), train_max_len)}
    for bucket, k in BUCKET_MULTIPLIERS.items():
        if bucket != "id":
            buckets[bucket] = (k * train_max_len, k * train_max_len)
    return buckets


def parse_length_overrides(name: str, value: Any, buckets: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Parse ``{"ood2x": 64, "id": [1, 16]}``: per bucket a single length or an inclusive [lo, hi] range."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f'{name} must be a mapping such as {{"ood2x": [33, 64]}}, got {value!r}') from None
    if not isinstance(value, Mapping):
        raise ValueError(f'{name} must be a mapping such as {{"ood2x": [33, 64]}}, got {value!r}')
    buckets = list(buckets)
    parsed = {}
    for bucket, spec in value.items():
        if bucket not in buckets:
            raise ValueError(f"{name} has unknown bucket {bucket!r}; valid buckets are {buckets}")
        parsed[bucket] = _length_range(f"{name}[{bucket!r}]", spec)
    return parsed


def _length_range(name: str, spec: Any) -> tuple[int, int]:
    if isinstance(spec, (list, tuple)) and len(spec) == 2:
        lo, hi = as_int(name, spec[0], minimum=1), as_int(name, spec[1], minimum=1)
        if lo > hi:
            raise ValueError(f"{name} must be [lo, hi] with lo <= hi, got {list(spec)}")
        return lo, hi
    length = as_int(name, spec, minimum=1)
    return length, length


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write ``tokenizer`` as a ``tokenizers`` ``tokenizer.json`` at ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def yaml_task_and_bucket(options: Mapping[str, Any], prefix: str,
                         buckets_of: Callable[[str], Sequence[str]]) -> tuple[str, str]:
    """The ``<prefix>_task`` and ``<prefix>_bucket`` every task YAML sets through dataset_kwargs.

    ``buckets_of(task)`` lists the task's buckets (and raises for an unknown task).
    """
    task, bucket = options.get(f"{prefix}_task"), options.get(f"{prefix}_bucket")
    if task is None:
        raise ValueError(f"the task YAML must set dataset_kwargs {prefix}_task and {prefix}_bucket")
    valid = list(buckets_of(task))
    if bucket not in valid:
        raise ValueError(f"the task YAML must set dataset_kwargs {prefix}_bucket to one of {valid}, got {bucket!r}")
    return task, bucket

