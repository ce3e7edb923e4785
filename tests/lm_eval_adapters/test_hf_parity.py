"""explicit_ssm and lm-eval's own `hf` model score the same requests alike on the same checkpoint (a transformers
Mamba2 directory), request by request: the same tokenisation of context and continuation, the same truncation, the
same positions. This is what the bfloat16 gap against lm-eval's `mamba_ssm` model came down to (BENCHMARKS.md):
lm-eval 0.4.13 puts no delimiter between a loglikelihood context and its answer, a causal tokenizer then merges the
last context word with the first answer word, and our adapter used to encode the two separately (the base class's
`backend` attribute was shadowed). Both now read what a causal LM reads; a task written that way is also caught by
our unknown-token check."""

from pathlib import Path

import pytest
import torch

WORDS = [f"w{i}" for i in range(1, 40)]


def make_checkpoint(root: Path) -> Path:
    from transformers import Mamba2Config, Mamba2ForCausalLM

    from implicit_ssm_eval.model_adapters.testing import write_word_tokenizer

    torch.manual_seed(0)
    config = Mamba2Config(num_heads=8, head_dim=8, vocab_size=48, hidden_size=32, state_size=8, num_hidden_layers=2,
                          n_groups=1, expand=2, chunk_size=16, tie_word_embeddings=True, eos_token_id=0,
                          bos_token_id=0, pad_token_id=0)
    model = Mamba2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # perturbed so that every term counts
            scale = "norm" in name or name.endswith(".D")
            p.copy_(1 + 0.2 * torch.randn_like(p) if scale else 0.3 * torch.randn_like(p))
    model.save_pretrained(root)
    write_word_tokenizer(root, ["<eos>", *WORDS])
    return root


def make_task(root: Path, context_template: str) -> Path:
    root.mkdir(parents=True)
    (root / "parity_utils.py").write_text(
        "import random\nimport datasets\n\n\ndef load(**kwargs):\n    rng = random.Random(0)\n"
        f"    words = {WORDS!r}\n"
        "    rows = [{'context': ' '.join(rng.choice(words) for _ in range(rng.randint(3, 30))),\n"
        "             'continuation': ' '.join(rng.choice(words) for _ in range(4))} for _ in range(12)]\n"
        "    return datasets.DatasetDict({'test': datasets.Dataset.from_list(rows)})\n")
    (root / "parity_ll.yaml").write_text(
        "task: parity_ll\ncustom_dataset: !function parity_utils.load\ntest_split: test\noutput_type: loglikelihood\n"
        f"doc_to_text: \"{context_template}\"\ndoc_to_target: \"{{{{continuation}}}}\"\ntarget_delimiter: \" \"\n"
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 1\n")
    return root


def per_request(model: str, model_args: dict, tasks: Path) -> list[float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["parity_ll"], log_samples=True,
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                                  bootstrap_iters=0, batch_size=4)
    return [s["resps"][0][0][0] for s in sorted(res["samples"]["parity_ll"], key=lambda s: s["doc_id"])]


@pytest.mark.parametrize("template,extra", [("{{context}} ", {}), ("{{context}}", {"unknown_tokens": "flag"})])
def test_explicit_ssm_scores_like_lm_evals_hf_model(tmp_path, template, extra):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    tasks = make_task(tmp_path / "tasks", template)
    theirs = per_request("hf", {"pretrained": str(ckpt), "dtype": "float32", "device": "cpu"}, tasks)
    ours = per_request("explicit_ssm", {"pretrained": str(ckpt), "device": "cpu", **extra}, tasks)
    assert len(ours) == len(theirs) == 12
    assert ours == pytest.approx(theirs, abs=2e-4)


def test_a_context_glued_to_its_answer_is_caught(tmp_path):
    """Without the trailing space, every document's last context word and first answer word become one unknown
    token: the adapter refuses the task rather than scoring a silently different question."""
    from implicit_ssm_eval.model_adapters.config import ConfigError

    ckpt = make_checkpoint(tmp_path / "ckpt")
    tasks = make_task(tmp_path / "tasks", "{{context}}")
    with pytest.raises(ConfigError, match="cannot read 1 task"):
        per_request("explicit_ssm", {"pretrained": str(ckpt), "device": "cpu"}, tasks)
