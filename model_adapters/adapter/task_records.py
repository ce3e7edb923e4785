"""What the requests say about their tasks, and the policy for a task the tokenizer cannot read.

Per lm-eval task, a TaskRecord (records.py) keeps the fields its documents carry (family, task, bucket, length,
data hash, chance) and how many of its tokens the tokenizer does not know. A task with more than UNREADABLE_FRACTION
unknown tokens is refused before anything is scored (unknown_tokens=refuse, the default) or scored and marked
(unknown_tokens=flag): a model cannot be judged on text it cannot read.
"""

from __future__ import annotations

import logging

from ..errors import ConfigError
from .records import TaskRecord
from .requests import task_of

UNREADABLE_FRACTION = 0.01  # a task with more unknown tokens than this is one the tokenizer cannot read
logger = logging.getLogger(__name__)


def observe(tasks: dict[str, TaskRecord], requests, tokenizer) -> list[list[int]]:
    """Record each request's task fields and unknown tokens; returns each request's text (its string arguments
    joined) encoded."""
    texts = ["".join(a for a in req.args if isinstance(a, str)) for req in requests]
    encoded = tokenizer.encode_batch_counting_unknown(texts)
    for req, (tokens, unknown) in zip(requests, encoded):
        record = tasks.setdefault(task_of(req), TaskRecord())
        record.observe(getattr(req, "doc_id", None), getattr(req, "doc", None), len(tokens), unknown)
    return [tokens for tokens, _ in encoded]


def check_readable(tasks: dict[str, TaskRecord], policy: str, checkpoint: str) -> None:
    """Refuse (policy "refuse") or flag ("flag") the tasks the tokenizer cannot read."""
    unreadable = {t: r for t, r in tasks.items() if r.unknown_fraction > UNREADABLE_FRACTION}
    if not unreadable:
        return
    detail = "; ".join(f"{t}: {r.unknown_fraction:.1%} of {r.tokens} tokens unknown (e.g. "
                       f"{', '.join(repr(w) for w in r.unknown_examples[:3])})" for t, r in sorted(unreadable.items()))
    message = (f"the tokenizer of {checkpoint} cannot read {len(unreadable)} task(s): {detail}. Evaluate these tasks "
               f"with a checkpoint whose vocabulary covers them (at most {UNREADABLE_FRACTION:.0%} unknown tokens)")
    if policy == "refuse":
        raise ConfigError(message + ", or pass unknown_tokens=flag to score them anyway (the results mark them)")
    logger.warning("%s; scoring anyway (unknown_tokens=flag): the results mark these tasks", message)
