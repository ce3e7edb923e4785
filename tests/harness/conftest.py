"""Tiny random parity checkpoints (with the task's tokenizer and training metadata) for sweep tests."""

from pathlib import Path

import pytest

from implicit_ssm_eval.model_adapters.formats import save
from implicit_ssm_eval.model_adapters.testing import tiny_model


def make_parity_checkpoints(root: Path, seed: int = 0) -> dict[str, Path]:
    from implicit_ssm_eval.tasks.state_tracking import write_tokenizer

    tok = write_tokenizer("parity", root / "tokenizer.json")
    out = {}
    for kind in ("implicit", "explicit"):
        model = tiny_model(kind, seed=seed, contractive=kind == "implicit", vocab_size=7, pad_vocab_size_multiple=8)
        out[kind] = save(model, root / f"parity-{kind}", tokenizer_path=tok, eos_token="<eos>",
                         training={"config": {"task": "parity"}})
    return out


@pytest.fixture(scope="session")
def parity_checkpoints(tmp_path_factory) -> dict[str, Path]:
    return make_parity_checkpoints(tmp_path_factory.mktemp("parity_ckpts"))
