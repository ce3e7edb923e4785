"""What the controls YAMLs name with ``!function``: the dataset, the task class and the metrics.

``make_dataset`` receives lm-eval's task metadata merged with model_args and the YAML's ``dataset_kwargs``
(``ctl_task``, ``ctl_bucket``). User options, all optional, passed with ``--metadata '{"ctl_num_docs": 20}'``:

  ctl_seed           int >= 0, default 0: evaluation seed (documents differ per seed)
  ctl_num_docs       int >= 1, default 100: documents per bucket
  ctl_train_max_len  int >= 1: training length L; buckets become id=[1, L], oodKx=K*L
  ctl_lengths        {"bucket": n or [lo, hi]}: explicit lengths of some buckets (wins over the above)
  ctl_positions      int >= 0, default 16: answer positions token_acc scores per document (evenly spaced, the
                     first and last included; 0: all). MQAR always scores all its (at most 16) answers.

Scoring. A document has several answer positions; lm-eval's loglikelihood request answers one question,
"is this continuation the greedy one?", for any model. ``ControlsTask`` therefore sends several requests per
document (``data.request_arguments``): the whole answer after the input (its greedy flag is sequence accuracy:
greedy decoding reproduces the whole answer), and one request per scored position with every true symbol
before it as context (its flag says whether that one symbol is the model's prediction).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask

from ..common import as_int, parse_length_overrides, split_options, user_options, yaml_task_and_bucket
from ..scoring import scaled_accuracy
from .data import BUCKETS, DEFAULT_POSITIONS, METRICS, bucket_lengths, make_docs, request_arguments
from .generators import get_task

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

USER_OPTIONS = ("ctl_seed", "ctl_num_docs", "ctl_train_max_len", "ctl_lengths", "ctl_positions")
YAML_OPTIONS = ("ctl_task", "ctl_bucket")  # set by each task's YAML through dataset_kwargs
DEFAULT_NUM_DOCS = 100

__all__ = ["METRICS", "ControlsTask", "make_dataset", "process_results"]


@user_options
def make_dataset(**metadata: Any) -> datasets.DatasetDict:
    """lm-eval ``custom_dataset``: a DatasetDict with one ``test`` split holding the bucket's documents."""
    import datasets

    options = split_options(metadata, "ctl_", (*USER_OPTIONS, *YAML_OPTIONS), "controls")
    task, bucket = yaml_task_and_bucket(options, "ctl", _buckets_of)
    train_max_len = options.get("ctl_train_max_len")
    if train_max_len is not None:
        train_max_len = as_int("ctl_train_max_len", train_max_len, minimum=1)
    ranges = bucket_lengths(task, train_max_len)
    ranges.update(parse_length_overrides("ctl_lengths", options.get("ctl_lengths", {}), BUCKETS))
    docs = make_docs(
        task,
        bucket,
        seed=as_int("ctl_seed", options.get("ctl_seed", 0), minimum=0),
        num_docs=as_int("ctl_num_docs", options.get("ctl_num_docs", DEFAULT_NUM_DOCS), minimum=1),
        lengths=ranges[bucket],
        positions=as_int("ctl_positions", options.get("ctl_positions", DEFAULT_POSITIONS), minimum=0),
    )
    logger.info("ctl_%s_%s: %d documents, data hash %s", task, bucket, len(docs), docs[0]["data_hash"])
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def _buckets_of(task: str) -> tuple[str, ...]:
    get_task(task)  # a clear error for an unknown task
    return BUCKETS


def process_results(doc: dict[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """Metrics of one document from its requests' (logprob, greedy) pairs, in ``request_arguments`` order.

    token_acc: the share of scored answer positions whose symbol is the greedy prediction; seq_acc: the whole
    answer is (the whole-answer request's flag, or every position's when there is none); scaled_token_acc:
    token_acc rescaled by the document's chance of one position.
    """
    flags = [bool(greedy) for _, greedy in results]
    expected = len(request_arguments(doc))
    if len(flags) != expected:
        raise ValueError(f"ctl_{doc['task']}: {len(flags)} results for a document of {expected} requests")
    if doc["whole"]:
        sequence, positions = flags[0], flags[1:] or flags[:1]
    else:
        positions = flags
        sequence = all(positions)
    token_acc = sum(positions) / len(positions)
    return {"token_acc": token_acc, "seq_acc": float(sequence),
            "scaled_token_acc": scaled_accuracy(token_acc, float(doc["chance"]))}


class ControlsTask(ConfigurableTask):
    """A loglikelihood task that sends ``request_arguments(doc)``: several requests per document.

    Everything else (dataset, metrics, aggregation, groups) is lm-eval's ConfigurableTask read from the YAML.
    """

    def __init__(self, config: dict | None = None, **kwargs: Any) -> None:
        # lm-eval hands a YAML's `class:` task its whole config, `class` included, which TaskConfig rejects
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        super().__init__(config=config, **kwargs)

    def construct_requests(self, doc: dict, ctx: Any, **kwargs: Any) -> list[Instance]:
        kwargs.pop("apply_chat_template", None)  # the controls have no prompt to wrap: plain text only
        kwargs.pop("chat_template", None)
        return [Instance(request_type="loglikelihood", doc=doc, arguments=arguments, idx=i, **kwargs)
                for i, arguments in enumerate(request_arguments(doc))]
