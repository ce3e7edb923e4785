"""Functions the pydoc YAMLs name with ``!function``.

``make_dataset`` receives lm-eval's task metadata merged with model_args and the YAML's ``dataset_kwargs``
(``pydoc_task``, ``pydoc_bucket``). User options, all optional, passed with ``--metadata '{"pydoc_num_docs": 100}'``:

  pydoc_num_docs       int >= 1, default 8: documents per bucket (fewer if the split holds fewer: logged)
  pydoc_seed           int >= 0, default 0: which documents, in which order
  pydoc_split          "test" (default) or "validation"
  pydoc_train_max_len  int > 32: the training context L in corpus tokens (default 256); buckets are K*L tokens
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..common import as_int, split_options, user_options, yaml_task_and_bucket
from ..scoring import scaled_accuracy
from .corpus import SHIPPED_SPLITS
from .heldout import BUCKETS, DEFAULT_NUM_DOCS, TASKS, make_docs
from .lm_eval_hooks import process_results as process_window  # word/byte perplexity, bits per byte

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

__all__ = ["cloze_context", "cloze_target", "make_dataset", "process_cloze", "process_window", "window_text"]

USER_OPTIONS = ("pydoc_seed", "pydoc_num_docs", "pydoc_split", "pydoc_train_max_len")
YAML_OPTIONS = ("pydoc_task", "pydoc_bucket")


@user_options
def make_dataset(**metadata: Any) -> datasets.DatasetDict:
    """lm-eval ``custom_dataset``: a DatasetDict with one ``test`` split holding the bucket's documents."""
    import datasets

    options = split_options(metadata, "pydoc_", (*USER_OPTIONS, *YAML_OPTIONS), "pydoc")
    task, bucket = yaml_task_and_bucket(options, "pydoc", _buckets_of)
    split = options.get("pydoc_split", "test")
    if split not in SHIPPED_SPLITS:
        raise ValueError(f"pydoc_split must be one of {list(SHIPPED_SPLITS)}, got {split!r}")
    train_max_len = options.get("pydoc_train_max_len")
    docs = make_docs(
        task,
        bucket,
        seed=as_int("pydoc_seed", options.get("pydoc_seed", 0), minimum=0),
        num_docs=as_int("pydoc_num_docs", options.get("pydoc_num_docs", DEFAULT_NUM_DOCS), minimum=1),
        split=split,
        train_max_len=None if train_max_len is None else as_int("pydoc_train_max_len", train_max_len, minimum=33),
    )
    logger.info("pydoc_%s_%s: %d documents, data hash %s", task, bucket, len(docs), docs[0]["data_hash"])
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def _buckets_of(task: str) -> tuple[str, ...]:
    if task not in TASKS:
        raise ValueError(f"unknown pydoc task {task!r}; valid tasks are {list(TASKS)}")
    return BUCKETS


def window_text(doc: dict[str, Any]) -> str:
    return doc["text"]


def cloze_context(doc: dict[str, Any]) -> str:
    return doc["input"]


def cloze_target(doc: dict[str, Any]) -> str:
    """The target word with the space before it, as LAMBADA's: a BPE tokenizer reads " word" as one piece."""
    return " " + doc["target"]


def process_cloze(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, float]:
    """acc: the target is the model's greedy continuation (LAMBADA's acc); perplexity: of the target."""
    loglikelihood, is_greedy = results[0]
    acc = float(is_greedy)
    return {"acc": acc, "scaled_acc": scaled_accuracy(acc, float(doc["chance"])), "perplexity": loglikelihood}
