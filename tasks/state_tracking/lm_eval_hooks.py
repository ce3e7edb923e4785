"""Functions the state-tracking YAMLs name with ``!function``.

``make_dataset`` receives lm-eval's task metadata merged with model_args and the YAML's
``dataset_kwargs`` (``st_task``, ``st_bucket``). User options, all optional, passed with
``--metadata '{"st_num_docs": 20, ...}'``:

  st_seed           int >= 0, default 0: evaluation seed (documents differ per seed)
  st_num_docs       int >= 1, default 100: documents per bucket
  st_train_max_len  int >= 1: training length L; buckets become id=[1, L], oodKx=K*L, shifted 2L
  st_lengths        {"bucket": n or [lo, hi]}: explicit lengths of some buckets (wins over the above);
                    a bucket only some tasks have applies to those
  st_p_identity     float in [0, 1]: identity probability of the group part (word problems, a5xm) in the
                    length buckets; ignored by shifted buckets (they fix their own symbols) and by the
                    regular-language tasks, which have no group part
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..common import as_int, parse_length_overrides, split_options, user_options, yaml_task_and_bucket
from ..scoring import process_greedy_answer
from .data import BUCKETS, bucket_lengths, buckets_of, make_docs
from .specs import TASK_NAMES, get_spec

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

USER_OPTIONS = ("st_seed", "st_num_docs", "st_train_max_len", "st_lengths", "st_p_identity")
YAML_OPTIONS = ("st_task", "st_bucket")  # set by each task's YAML through dataset_kwargs
DEFAULT_NUM_DOCS = 100

__all__ = ["make_dataset", "process_results"]

process_results = process_greedy_answer


@user_options
def make_dataset(**metadata: Any) -> datasets.DatasetDict:
    """lm-eval ``custom_dataset``: a DatasetDict with one ``test`` split holding the bucket's documents."""
    import datasets

    options = split_options(metadata, "st_", (*USER_OPTIONS, *YAML_OPTIONS), "state-tracking")
    task, bucket = yaml_task_and_bucket(options, "st", buckets_of)
    docs = make_docs(
        task,
        bucket,
        seed=as_int("st_seed", options.get("st_seed", 0), minimum=0),
        num_docs=as_int("st_num_docs", options.get("st_num_docs", DEFAULT_NUM_DOCS), minimum=1),
        lengths=_bucket_range(task, bucket, options),
        p_identity=_p_identity(task, bucket, options.get("st_p_identity")),
    )
    logger.info("st_%s_%s: %d documents, data hash %s", task, bucket, len(docs), docs[0]["data_hash"])
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def _bucket_range(task: str, bucket: str, options: dict[str, Any]) -> tuple[int, int]:
    train_max_len = options.get("st_train_max_len")
    if train_max_len is not None:
        train_max_len = as_int("st_train_max_len", train_max_len, minimum=1)
    ranges = bucket_lengths(task, train_max_len)
    # one metadata reaches every task of a run: a bucket of another task (parity's ones10) is not an error here
    every_bucket = dict.fromkeys(b for name in TASK_NAMES for b in buckets_of(name))
    overrides = parse_length_overrides("st_lengths", options.get("st_lengths", {}), every_bucket)
    ranges.update({b: lengths for b, lengths in overrides.items() if b in ranges})
    return ranges[bucket]


def _p_identity(task: str, bucket: str, value: Any) -> float | None:
    # lm-eval passes one metadata to every task of a run, so an option that does not apply is ignored
    if value is None:
        return None
    if not get_spec(task).supports_p_identity:
        logger.info("st_p_identity does not apply to %s (no group part); ignored", task)
        return None
    if bucket not in BUCKETS:
        logger.info("st_p_identity does not apply to the shifted bucket st_%s_%s; ignored", task, bucket)
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"st_p_identity must be a number in [0, 1], got {value!r}") from None
