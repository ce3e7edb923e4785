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

from implicit_ssm_eval.tasks.common import data_hash, split_options
from implicit_ssm_eval.tasks.scoring import same_string

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

OPTIONS = ("ppl_text_path", "ppl_split")
SPLITTERS = {
    "file": lambda text: [text],
    "paragraphs": lambda text: re.split(r"\n\s*\n", text),
    "lines": lambda text: text.splitlines(),
}

aggregate_hash = same_string


def make_dataset(**metadata: Any) -> datasets.DatasetDict:
    """lm-eval ``custom_dataset``: the file's documents as a DatasetDict with one ``test`` split."""
    import datasets

    options = split_options(metadata, "ppl_", OPTIONS, "local-text perplexity")
    docs = read_docs(options.get("ppl_text_path"), options.get("ppl_split", "file"))
    logger.info("ppl_local_text: %d documents, data hash %s", len(docs), docs[0]["data_hash"])
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def read_docs(path: Any, split: str = "file") -> list[dict[str, str]]:
    """Documents {"text", "data_hash"} of a text file cut by ``split``."""
    if path is None:
        raise ValueError('ppl_local_text needs a file: pass --metadata \'{"ppl_text_path": "/path/to/file.txt"}\'')
    if split not in SPLITTERS:
        raise ValueError(f"ppl_split must be one of {list(SPLITTERS)}, got {split!r}")
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise ValueError(f"ppl_text_path {str(path)!r} is not a readable file")
    texts = [t for t in SPLITTERS[split](file.read_text(encoding="utf-8")) if t.strip()]
    if not texts:
        raise ValueError(f"ppl_text_path {str(path)!r} holds no text")
    docs = [{"text": t} for t in texts]
    fingerprint = data_hash(docs, ("text",))
    return [{**doc, "data_hash": fingerprint} for doc in docs]


def doc_to_target(doc: dict[str, str]) -> str:
    return doc["text"]


def process_results(doc: dict[str, str], results: tuple[float]) -> dict[str, Any]:
    """Per-document sums lm-eval's weighted aggregations turn into perplexities and bits per byte."""
    (loglikelihood,) = results
    text = doc["text"]
    words = len(re.split(r"\s+", text))  # lm-eval's own word count for word_perplexity
    n_bytes = len(text.encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
        "data_hash": doc["data_hash"],
    }
