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


README = Path(__file__).parents[2] / "README.md"


def readme_command(starts: str, contains: str = "") -> list[str]:
    """The README's command that starts with `starts` (and contains `contains`), its continuation lines joined and
    its comment dropped, split as a shell would: tests run the commands the README shows."""
    import shlex

    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.startswith(starts):
            continue
        command = line
        while command.rstrip().endswith("\\"):
            i += 1
            command = command.rstrip()[:-1] + " " + lines[i].strip()
        words = shlex.split(command, comments=True)
        if contains in words or contains in command:
            return words
    raise AssertionError(f"README.md has no command starting {starts!r} with {contains!r}")


@pytest.fixture
def readme():
    """readme_command, for tests (a fixture: test modules cannot import this conftest by name)."""
    return readme_command
