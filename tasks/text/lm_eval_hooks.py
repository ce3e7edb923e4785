"""Functions the ``ppl_local_text`` YAML names with ``!function``.

Options, passed with ``--metadata '{"ppl_text_path": "/path/to/file.txt"}'``:

  ppl_text_path  required: a UTF-8 text file
  ppl_split      "file" (default: the whole file is one document, scored in rolling windows),
                 "paragraphs" (blank-line separated) or "lines"; empty pieces are dropped
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common import data_hash, read_utf8, split_options, user_options

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

FAMILY_NAME, TASK = "text", "local_text"  # the registry's names: family "text", task ppl_local_text
OPTIONS = ("ppl_text_path", "ppl_split")
SPLITTERS = {
    "file": lambda text: [text],
    "paragraphs": lambda text: re.split(r"\n\s*\n", text),
    "lines": lambda text: text.splitlines(),
}


@user_options
def make_dataset(**metadata: Any) -> datasets.DatasetDict:
    """lm-eval ``custom_dataset``: the file's documents as a DatasetDict with one ``test`` split."""
    import datasets

    options = split_options(metadata, "ppl_", OPTIONS, "local-text perplexity")
    docs = read_docs(options.get("ppl_text_path"), options.get("ppl_split", "file"))
    logger.info("ppl_local_text: %d documents, data hash %s", len(docs), docs[0]["data_hash"])
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def read_docs(path: Any, split: str = "file") -> list[dict[str, Any]]:
    """Documents of a text file cut by ``split``.

    Each: ``text``, ``family`` ("text"), ``task`` ("local_text"), ``bucket`` (None: no buckets), ``length``
    (UTF-8 bytes, the unit of bits_per_byte), ``chance`` (None: no accuracy) and ``data_hash`` (of the texts).
    """
    if path is None:
        raise ValueError('ppl_local_text needs a file: pass --metadata \'{"ppl_text_path": "/path/to/file.txt"}\'')
    if split not in SPLITTERS:
        raise ValueError(f"ppl_split must be one of {list(SPLITTERS)}, got {split!r}")
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise ValueError(f"ppl_text_path {str(path)!r} is not a readable file")
    texts = [t for t in SPLITTERS[split](read_utf8(file, "ppl_text_path")) if t.strip()]
    if not texts:
        raise ValueError(f"ppl_text_path {str(path)!r} holds no text")
    fingerprint = data_hash([{"text": t} for t in texts], ("text",))
    return [{"text": t, "family": FAMILY_NAME, "task": TASK, "bucket": None, "length": len(t.encode("utf-8")),
             "chance": None, "data_hash": fingerprint} for t in texts]  # fmt: skip


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["text"]


def process_results(doc: dict[str, Any], results: tuple[float]) -> dict[str, tuple[float, int]]:
    """Per-document sums lm-eval's weighted aggregations turn into perplexities and bits per byte."""
    (loglikelihood,) = results
    text = doc["text"]
    words = len(re.split(r"\s+", text))  # lm-eval's own word count for word_perplexity
    n_bytes = len(text.encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }
