"""The YAMLs through lm-eval itself: every task loads offline; trivial models score as they must."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

import implicit_ssm_eval.tasks
from implicit_ssm_eval.tasks import babi, state_tracking
from implicit_ssm_eval.tasks.babi import make_yamls as babi_yamls
from implicit_ssm_eval.tasks.configs import regenerate
from implicit_ssm_eval.tasks.state_tracking import make_yamls as st_yamls

TASKS_DIR = Path(implicit_ssm_eval.tasks.__file__).parent
NUM_DOCS = 4


class ScriptedLM(LM):
    """Greedy continuation ``answer(task_name, context)``; rolling log-likelihood of 1 bit per byte."""

    def __init__(self, answer) -> None:
        super().__init__()
        self.answer = answer

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        results = []
        for request in requests:
            context, continuation = request.args
            greedy = continuation.strip() == self.answer(request.task_name, context)
            results.append((0.0 if greedy else -5.0, greedy))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return [-len(request.args[0].encode()) * math.log(2) for request in requests]

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the task suite only scores log-likelihoods")


def _state_tracking_oracle(task_name: str, context: str) -> str:
    task = task_name.removeprefix("st_").rsplit("_", 1)[0]
    return state_tracking.TASKS[task].states_of(context.split(" "))[-1]


def _manager(**metadata) -> TaskManager:
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)


def _run(answer, task_names: list[str], **metadata) -> dict:
    return simple_evaluate(model=ScriptedLM(answer), tasks=task_names, task_manager=_manager(**metadata))


def test_generated_yamls_and_fingerprints_are_fresh():
    for module in (st_yamls, babi_yamls):
        problems = regenerate(
            module.YAML_DIR, module.FINGERPRINTS, module.yaml_files(), module.fingerprints(),
            module=module.MODULE, check=True,
        )  # fmt: skip
        assert not problems, "\n".join(problems)


def test_every_yaml_loads_through_the_task_manager(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("one paragraph.\n\nanother one.\n")
    manager = _manager(st_num_docs=2, babi_num_docs=2, ppl_text_path=str(text), pretrained="ignored")
    expected = {Path(name).stem for name in [*st_yamls.yaml_files(), *babi_yamls.yaml_files()]}
    expected = {name for name in expected if not name.startswith("_")} | {"ppl_local_text"}
    assert expected <= set(manager.all_tasks)
    loaded = manager.load(["state_tracking", "babi_gen", "ppl_local_text"])
    assert len(loaded["tasks"]) == 10 * 4 + 8 * 3 + 1
    for name, task in loaded["tasks"].items():
        assert len(task.test_docs()) >= 1, name
        assert task.VERSION == 1, name


def test_oracle_and_constant_models_on_state_tracking():
    results = _run(_state_tracking_oracle, ["state_tracking"], st_num_docs=NUM_DOCS)
    for task, spec in state_tracking.TASKS.items():
        for bucket in state_tracking.BUCKETS:
            metrics = results["results"][f"st_{task}_{bucket}"]
            assert metrics["acc,none"] == 1.0 and metrics["scaled_acc,none"] == pytest.approx(1.0)
            assert metrics["chance,none"] == pytest.approx(spec.chance)
            expected_hash = state_tracking.make_docs(task, bucket, num_docs=NUM_DOCS)[0]["data_hash"]
            assert metrics["data_hash,none"] == expected_hash
        assert results["groups"][f"st_{task}"]["acc,none"] == 1.0
    assert results["groups"]["state_tracking"]["scaled_acc,none"] == pytest.approx(1.0)

    parity = _run(lambda task_name, context: "even", ["st_parity"], st_num_docs=NUM_DOCS)["results"]
    for bucket in state_tracking.BUCKETS:
        docs = state_tracking.make_docs("parity", bucket, num_docs=NUM_DOCS)
        share = sum(d["target"] == "even" for d in docs) / len(docs)
        assert parity[f"st_parity_{bucket}"]["acc,none"] == pytest.approx(share)
        assert parity[f"st_parity_{bucket}"]["scaled_acc,none"] == pytest.approx((share - 0.5) / 0.5)


def test_metadata_reaches_the_generator():
    results = _run(
        _state_tracking_oracle, ["st_a5xm_ood2x"], st_num_docs=2, st_seed=5, st_lengths={"ood2x": 20},
        st_p_identity=0.5,
    )["results"]  # fmt: skip
    docs = state_tracking.make_docs("a5xm", "ood2x", seed=5, num_docs=2, lengths=(20, 20), p_identity=0.5)
    assert results["st_a5xm_ood2x"]["data_hash,none"] == docs[0]["data_hash"]


def test_oracle_on_babi(babi_replay):
    results = _run(lambda task_name, context: babi_replay(context)[0], ["babi_gen"], babi_num_docs=NUM_DOCS)
    for task in babi.TASKS:
        for bucket in babi.BUCKETS:
            metrics = results["results"][f"babi_gen_{task}_{bucket}"]
            assert metrics["acc,none"] == 1.0 and metrics["scaled_acc,none"] == pytest.approx(1.0)
            assert metrics["data_hash,none"] == babi.make_docs(task, bucket, num_docs=NUM_DOCS)[0]["data_hash"]
    assert results["groups"]["babi_gen"]["acc,none"] == 1.0


def test_local_text_perplexity(tmp_path):
    text = "the cat sat.\n\nthe dog ran far away.\n"
    path = tmp_path / "text.txt"
    path.write_text(text)
    results = _run(None, ["ppl_local_text"], ppl_text_path=str(path), ppl_split="paragraphs")
    metrics = results["results"]["ppl_local_text"]
    assert metrics["bits_per_byte,none"] == pytest.approx(1.0)  # the model spends one bit per byte
    assert metrics["byte_perplexity,none"] == pytest.approx(2.0)
    # documents "the cat sat." and "the dog ran far away.\n"; lm-eval counts re.split(r"\s+") pieces as words
    n_bytes, n_words = 12 + 22, 3 + 6
    assert metrics["word_perplexity,none"] == pytest.approx(2.0 ** (n_bytes / n_words))
    assert len(metrics["data_hash,none"]) == 16


def test_local_text_needs_a_path():
    with pytest.raises(ValueError, match="ppl_text_path"):
        _manager().load(["ppl_local_text"])
