"""Tiny checkpoints (word tokenizer over {a, b, c}) and a helper that runs lm-eval's Python API on them."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from implicit_ssm_eval.model_adapters.formats import save
from implicit_ssm_eval.model_adapters.testing import tiny_model

TASKS = Path(__file__).parent / "tasks"


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


@pytest.fixture
def evaluate():
    """lm-eval's simple_evaluate on the tiny tasks: evaluate(model, model_args, tasks, **kwargs)."""
    return run_lm_eval


def run_lm_eval(model: str, model_args: dict, tasks: list[str], **kwargs) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=manager,
                                   bootstrap_iters=0, **kwargs)
