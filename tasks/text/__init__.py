"""Perplexity on a local text file (``ppl_local_text``): word/byte perplexity and bits per byte."""
