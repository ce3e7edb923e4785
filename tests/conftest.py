"""Shared test set-up: offline hubs, deterministic CPU threads, the gpu mark skipping without CUDA."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # helper modules of the tests (e.g. lm_eval_adapters/by_hand.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
