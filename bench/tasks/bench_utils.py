"""Random-word documents for bench_ll; sizes from BENCH_DOCS and BENCH_CONTEXT (environment); with BENCH_VARY=1 each
context has a length drawn uniformly from BENCH_CONTEXT / 2 to BENCH_CONTEXT words, as a real task's would vary."""

import os
import random

import datasets


def load(**kwargs):
    rng = random.Random(0)
    docs, context = int(os.environ.get("BENCH_DOCS", 512)), int(os.environ.get("BENCH_CONTEXT", 1024))

    def words(n):
        return " ".join(f"w{rng.randrange(1, 50277)}" for _ in range(n))

    vary = os.environ.get("BENCH_VARY") == "1"
    sizes = [rng.randint(context // 2, context) if vary else context for _ in range(docs)]
    rows = [{"context": words(n), "continuation": words(8)} for n in sizes]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
