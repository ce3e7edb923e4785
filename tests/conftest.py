"""Shared test set-up: offline hubs, deterministic CPU threads, the gpu mark skipping without CUDA, and tiny
checkpoints (a word tokenizer over {a, b, c}) of both kinds."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # helper modules of the tests (e.g. lm_eval_adapters/by_hand.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from implicit_ssm_eval.model_adapters.formats import save  # noqa: E402
from implicit_ssm_eval.model_adapters.testing import tiny_model  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_tokenizer(path: Path) -> Path:
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>", "a", "b", "c"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    tok = write_tokenizer(root / "tokenizer.json")
    out = {}
    for kind in ("implicit", "explicit"):
        model = tiny_model(kind, contractive=kind == "implicit", vocab_size=6, pad_vocab_size_multiple=8)
        out[kind] = save(model, root / kind, tokenizer_path=tok)
    return out
