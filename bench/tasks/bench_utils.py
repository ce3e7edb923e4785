"""Random-word documents for bench_ll; sizes from BENCH_DOCS and BENCH_CONTEXT (environment)."""

import os
import random

import datasets


def load(**kwargs):
    rng = random.Random(0)
    docs, context = int(os.environ.get("BENCH_DOCS", 512)), int(os.environ.get("BENCH_CONTEXT", 1024))

    def words(n):
        return " ".join(f"w{rng.randrange(1, 50277)}" for _ in range(n))

    rows = [{"context": words(context), "continuation": words(8)} for _ in range(docs)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
