"""The shipped pydoc corpus files (``tasks/text/data``): held-out text, tokenizer and manifest, checked on load.

Every file is checked against the SHA-256 that ``MANIFEST.json`` records (of the uncompressed text for the
splits), so a changed file is an error naming it rather than silently different results.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from functools import cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from .corpus import DATA_DIR, SHIPPED_SPLITS, CorpusError


@cache
def manifest(data_dir: Path = DATA_DIR) -> dict[str, Any]:
    path = data_dir / "MANIFEST.json"
    if not path.is_file():
        raise CorpusError(f"{path} is missing: build the corpus with `python -m implicit_ssm_eval.tasks.text.corpus "
                          "--download`")
    return json.loads(path.read_text())


@cache
def held_out(split: str, data_dir: Path = DATA_DIR) -> tuple[dict[str, str], ...]:
    """The documents ({"name", "text"}) of a shipped split, in name order, checked against the manifest."""
    if split not in SHIPPED_SPLITS:
        raise CorpusError(f"the shipped splits are {list(SHIPPED_SPLITS)}, got {split!r}")
    record = manifest(data_dir)["splits"][split]
    raw = lzma.decompress((data_dir / record["file"]).read_bytes())
    if hashlib.sha256(raw).hexdigest() != record["sha256"]:
        raise CorpusError(f"{data_dir / record['file']} does not match the SHA-256 in MANIFEST.json; rebuild it")
    return tuple(json.loads(line) for line in raw.decode("utf-8").splitlines())


@cache
def _tokenizer_json(data_dir: Path = DATA_DIR) -> str:
    record = manifest(data_dir)["tokenizer"]
    raw = (data_dir / record["file"]).read_bytes()
    if hashlib.sha256(raw).hexdigest() != record["sha256"]:
        raise CorpusError(f"{data_dir / record['file']} does not match the SHA-256 in MANIFEST.json; rebuild it")
    return raw.decode("utf-8")


def corpus_tokenizer(data_dir: Path = DATA_DIR) -> Tokenizer:
    """The corpus's byte-level BPE tokenizer (<pad>=0, <unk>=1, <eos>=2); a fresh object per call."""
    return Tokenizer.from_str(_tokenizer_json(data_dir))


def tokenizer_sha256(data_dir: Path = DATA_DIR) -> str:
    return manifest(data_dir)["tokenizer"]["sha256"]
