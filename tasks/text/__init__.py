"""Text tasks: perplexity on a local text file (``ppl_local_text``, family ``text``) and the pydoc corpus
(family ``pydoc``: ``pydoc_ppl_*`` and ``pydoc_cloze_*`` on held-out Python documentation, its tokenizer and
its training data; built by ``python -m implicit_ssm_eval.tasks.text.corpus``). See README.md."""
