"""Offline, seeded evaluation tasks for lm-eval: state tracking, bAbI-style reasoning, local-text perplexity,
language modelling on held-out Python documentation (pydoc), and controls (context-free tasks, associative recall).

Every data set is generated in Python when lm-eval loads the task (``custom_dataset: !function ...``),
so nothing is downloaded. Point lm-eval at this folder with ``--include_path tasks/``. Each family
(state_tracking, babi, text, pydoc, controls) registers its lm-eval names, buckets, chance levels, tokenizers and
training data in one place: ``implicit_ssm_eval.tasks.registry``.
"""
