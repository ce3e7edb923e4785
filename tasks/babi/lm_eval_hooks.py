"""Functions the bAbI YAMLs name with ``!function``.

``make_dataset`` receives lm-eval's task metadata merged with model_args and the YAML's
``dataset_kwargs`` (``babi_task``, ``babi_bucket``). User options, all optional, passed with
``--metadata '{"babi_num_docs": 20, ...}'``:

  babi_seed           int >= 0, default 0: evaluation seed
  babi_num_docs       int >= 1, default 100: documents per bucket
  babi_train_max_len  int >= 1: in-distribution story length L (statements; segments for cat);
                      buckets become id=[min, L], ood2x=[L+1, 2L], ood4x=[2L+1, 4L]
  babi_lengths        {"bucket": n or [lo, hi]}: explicit lengths of some buckets (wins over the above)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..common import as_int, parse_length_overrides, split_options, user_options, yaml_task_and_bucket
from ..scoring import process_greedy_answer
from .data import BUCKETS, bucket_lengths, get_task, make_docs

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

USER_OPTIONS = ("babi_seed", "babi_num_docs", "babi_train_max_len", "babi_lengths")
YAML_OPTIONS = ("babi_task", "babi_bucket")
DEFAULT_NUM_DOCS = 100

__all__ = ["make_dataset", "process_results"]

process_results = process_greedy_answer


@user_options
def make_dataset(**metadata: Any) -> datasets.DatasetDict:
    """lm-eval ``custom_dataset``: a DatasetDict with one ``test`` split holding the bucket's documents."""
    import datasets

    options = split_options(metadata, "babi_", (*USER_OPTIONS, *YAML_OPTIONS), "bAbI")
    task, bucket = yaml_task_and_bucket(options, "babi", _buckets_of)
    train_max_len = options.get("babi_train_max_len")
    if train_max_len is not None:
        train_max_len = as_int("babi_train_max_len", train_max_len, minimum=1)
    ranges = bucket_lengths(task, train_max_len)
    ranges.update(parse_length_overrides("babi_lengths", options.get("babi_lengths", {}), BUCKETS))
    docs = make_docs(
        task,
        bucket,
        seed=as_int("babi_seed", options.get("babi_seed", 0), minimum=0),
        num_docs=as_int("babi_num_docs", options.get("babi_num_docs", DEFAULT_NUM_DOCS), minimum=1),
        lengths=ranges[bucket],
    )
    logger.info("babi_gen_%s_%s: %d documents, data hash %s", task, bucket, len(docs), docs[0]["data_hash"])
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def _buckets_of(task: str) -> tuple[str, ...]:
    get_task(task)  # a clear error for an unknown task
    return BUCKETS
