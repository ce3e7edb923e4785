"""Training batches of the pydoc family: the training tokens packed into fixed rows, indexed by step.

The token stream (``runs/text/train_tokens.bin``, written by ``python -m implicit_ssm_eval.tasks.text.corpus``)
holds every training page preceded by <eos>. A row is L + 1 consecutive tokens (L = ``max_len``, the training
context): ``input_ids`` its first L, ``labels`` its last L, so every position predicts the next token and no
label is -100; rows run across page boundaries (the <eos> between pages is predicted, and predicts the next
page's first token, as lm-eval's rolling windows begin with it).

Epoch e cuts the stream into R = (T - L) // L rows starting at offset o_e in [0, L) and visits them in an
order shuffled with ``random.Random(derive_seed("pydoc/train", seed, L, e))``, which also draws o_e (so row
boundaries move between epochs). Batch j holds rows j*B ... (j+1)*B - 1 of the epochs laid end to end:
it depends only on (tokens, seed, L, B, j), and ``start`` skips to batch ``start`` at no cost.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common import as_int, derive_seed
from .corpus import TRAIN_DIR, CorpusError
from .shipped import manifest

if TYPE_CHECKING:
    import numpy as np
    import torch

TOKENS_FILE = TRAIN_DIR / "train_tokens.bin"
BUILD_COMMAND = "python -m implicit_ssm_eval.tasks.text.corpus --download"


@cache
def load_tokens(path: Path = TOKENS_FILE) -> np.ndarray:
    """The training token stream, checked against the SHA-256 and count in the shipped MANIFEST.json."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"training tokens {path} not found: build them with `{BUILD_COMMAND}` (or pass "
                          "tokens_path); they are not shipped")  # fmt: skip
    raw = path.read_bytes()
    record = manifest()["train_tokens"]
    if hashlib.sha256(raw).hexdigest() != record["sha256"]:
        raise CorpusError(f"{path} is not the training stream of the shipped tokenizer (its SHA-256 differs from "
                          f"MANIFEST.json's); rebuild it with `{BUILD_COMMAND}`")  # fmt: skip
    return np.frombuffer(raw, dtype="<u2")


class _Epochs:
    """Row starts of each epoch; the latest epoch's are kept (batches move through epochs in order)."""

    def __init__(self, n_tokens: int, length: int, seed: int) -> None:
        self.rows = (n_tokens - length) // length
        if self.rows < 1:
            raise CorpusError(f"{n_tokens} training tokens hold no row of {length + 1}")
        self.length, self.seed = length, seed
        self._epoch = -1
        self._starts: list[int] = []

    def row_start(self, row: int) -> int:
        epoch, position = divmod(row, self.rows)
        if epoch != self._epoch:
            rng = random.Random(derive_seed("pydoc/train", self.seed, self.length, epoch))
            offset = rng.randrange(self.length)
            order = list(range(self.rows))
            rng.shuffle(order)
            self._epoch, self._starts = epoch, [offset + r * self.length for r in order]
        return self._starts[position]


def training_batches(task: str, *, min_len: int, max_len: int, batch_size: int, seed: int, start: int = 0,
                     tokens_path: str | Path | None = None, **options: Any) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches {"input_ids": (B, L), "labels": (B, L)} with L = ``max_len`` (``min_len`` must be <= it:
    every row is full). ``task`` ("ppl" or "cloze") does not change them: both are the same language model."""
    if options:
        raise ValueError(f"pydoc training takes only the option tokens_path, got {sorted(options)}")
    length = as_int("max_len", max_len, minimum=1)
    as_int("min_len", min_len, minimum=1)
    if min_len > length:
        raise ValueError(f"min_len ({min_len}) must be <= max_len ({length}): pydoc rows all hold max_len tokens")
    batch_size = as_int("batch_size", batch_size, minimum=1)
    batch = as_int("start", start, minimum=0)
    tokens = load_tokens(TOKENS_FILE if tokens_path is None else Path(tokens_path))
    return _batches(tokens, length, batch_size, seed, batch)


def _batches(tokens: np.ndarray, length: int, batch_size: int, seed: int, batch: int) -> Iterator[dict]:
    import numpy as np
    import torch

    epochs = _Epochs(len(tokens), length, seed)
    while True:
        starts = [epochs.row_start(batch * batch_size + b) for b in range(batch_size)]
        rows = torch.from_numpy(np.stack([tokens[s : s + length + 1] for s in starts]).astype(np.int64))
        yield {"input_ids": rows[:, :-1].contiguous(), "labels": rows[:, 1:].contiguous()}
        batch += 1
