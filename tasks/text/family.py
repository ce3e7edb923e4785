"""The local-text perplexity family in the task registry: one task, ``ppl_local_text``, no buckets.

It has one pseudo task, ``local_text``, so that ``lm_eval_name("local_text") == "ppl_local_text"``; no
buckets, no chance level (NaN: it reports perplexities), no tokenizer (models bring their own) and no
training data.
"""

from __future__ import annotations

from ..registry import Family, no_chance
from .lm_eval_hooks import FAMILY_NAME, TASK

FAMILY = Family(
    name=FAMILY_NAME,
    prefix="ppl",
    group=f"ppl_{TASK}",
    tasks=(TASK,),
    options_prefix="ppl_",
    num_docs_option=None,
    describe_buckets=lambda task: (),
    chance_of=no_chance,
    train_max_len_of=None,
    make_tokenizer=None,
    make_batches=None,
)
