"""A tiny offline task family for the adapter tests: random words over {a, b, c}."""

import random

import datasets


def load(**kwargs):
    rng = random.Random(0)
    rows = []
    for _ in range(int(kwargs.get("tiny_num_docs", 20))):
        text = " ".join(rng.choice("abc") for _ in range(rng.randint(1, 30)))
        rows.append({"text": text, "target": rng.choice("abc"), "label": rng.randint(0, 2)})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
