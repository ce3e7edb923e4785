"""The YAMLs through lm-eval itself: every task loads offline; trivial models score as they must.

Only scores are metrics; the per-document fields (family, task, bucket, length, chance, data_hash) reach
the model inside each request's ``doc``, which the scripted model records.
"""

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
from implicit_ssm_eval.tasks.registry import families, family_of
from implicit_ssm_eval.tasks.state_tracking import make_yamls as st_yamls
from implicit_ssm_eval.tasks.yaml_writer import regenerate

TASKS_DIR = Path(implicit_ssm_eval.tasks.__file__).parent
NUM_DOCS = 4
DOC_FIELDS = ("family", "task", "bucket", "length", "chance", "data_hash")


class ScriptedLM(LM):
    """Greedy continuation ``answer(task_name, context)``; rolling log-likelihood of 1 bit per byte.

    ``docs[task_name]`` keeps the documents of the requests it was sent, as an adapter would see them.
    """

    def __init__(self, answer) -> None:
        super().__init__()
        self.answer = answer
        self.docs: dict[str, list[dict]] = {}

    def _seen(self, request) -> None:
        self.docs.setdefault(request.task_name, []).append(request.doc)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        results = []
        for request in requests:
            self._seen(request)
            context, continuation = request.args
            greedy = continuation.strip() == self.answer(request.task_name, context)
            results.append((0.0 if greedy else -5.0, greedy))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        for request in requests:
            self._seen(request)
        return [-len(request.args[0].encode()) * math.log(2) for request in requests]

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the task suite only scores log-likelihoods")


def _state_tracking_oracle(task_name: str, context: str) -> str:
    _, task, _ = family_of(task_name)
    return state_tracking.TASKS[task].states_of(context.split())[-1]


def _manager(**metadata) -> TaskManager:
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)


def _run(answer, task_names: list[str], **metadata) -> tuple[dict, ScriptedLM]:
    model = ScriptedLM(answer)
    return simple_evaluate(model=model, tasks=task_names, task_manager=_manager(**metadata)), model


def _metric_names(metrics: dict) -> set[str]:
    """The metrics of one task in lm-eval's results (its table rows), without their stderr entries."""
    return {key.split(",")[0] for key in metrics if key.endswith(",none") and "_stderr," not in key}


def _check_doc_fields(model: ScriptedLM, lm_eval_name: str, expected_docs: list[dict]) -> None:
    """The model saw the bucket's documents with their fields, and nothing else of the bucket is a metric."""
    seen = sorted(model.docs[lm_eval_name], key=lambda doc: doc["index"])
    assert [{f: d[f] for f in DOC_FIELDS} for d in seen] == [{f: d[f] for f in DOC_FIELDS} for d in expected_docs]


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
    st = families()["state_tracking"]
    n_state_tracking = sum(len(st.buckets(task)) for task in st.tasks)
    assert n_state_tracking == 10 * 4 + 5 * 4 + 1 + 2 + 1 + 2 + 2  # length buckets + the shifted ones
    assert len(loaded["tasks"]) == n_state_tracking + 8 * 3 + 1
    for name, task in loaded["tasks"].items():
        assert len(task.test_docs()) >= 1, name
        version = task.VERSION  # state tracking is at 2 since its shifted buckets were added
        assert version == (2 if family_of(name)[0].name == "state_tracking" else 1), name


def test_oracle_and_constant_models_on_state_tracking():
    results, model = _run(_state_tracking_oracle, ["state_tracking"], st_num_docs=NUM_DOCS)
    st = families()["state_tracking"]
    for task in st.tasks:
        for bucket in st.buckets(task):
            name = st.lm_eval_name(task, bucket)
            metrics = results["results"][name]
            assert _metric_names(metrics) == {"acc", "scaled_acc"}, name  # chance, data_hash are doc fields
            assert metrics["acc,none"] == 1.0 and metrics["scaled_acc,none"] == pytest.approx(1.0)
            docs = state_tracking.make_docs(task, bucket, num_docs=NUM_DOCS)
            assert {d["family"] for d in docs} == {"state_tracking"}
            _check_doc_fields(model, name, docs)
        assert results["groups"][f"st_{task}"]["acc,none"] == 1.0
    assert results["groups"]["state_tracking"]["scaled_acc,none"] == pytest.approx(1.0)

    parity, _ = _run(lambda task_name, context: "even", ["st_parity"], st_num_docs=NUM_DOCS)
    for bucket in st.buckets("parity"):
        docs = state_tracking.make_docs("parity", bucket, num_docs=NUM_DOCS)
        share = sum(d["target"] == "even" for d in docs) / len(docs)
        assert parity["results"][f"st_parity_{bucket}"]["acc,none"] == pytest.approx(share)
        assert parity["results"][f"st_parity_{bucket}"]["scaled_acc,none"] == pytest.approx((share - 0.5) / 0.5)


def test_metadata_reaches_the_generator():
    metadata = {"st_num_docs": 2, "st_seed": 5, "st_lengths": {"ood2x": 20, "gen2": 30}, "st_p_identity": 0.5}
    _, model = _run(_state_tracking_oracle, ["st_a5xm_ood2x", "st_a5_gen2", "st_a5_ident50"], **metadata)
    docs = state_tracking.make_docs("a5xm", "ood2x", seed=5, num_docs=2, lengths=(20, 20), p_identity=0.5)
    _check_doc_fields(model, "st_a5xm_ood2x", docs)
    _check_doc_fields(model, "st_a5_gen2", state_tracking.make_docs("a5", "gen2", seed=5, num_docs=2, lengths=(30, 30)))
    # st_p_identity does not apply to a shifted bucket: it keeps its own identity share
    _check_doc_fields(model, "st_a5_ident50", state_tracking.make_docs("a5", "ident50", seed=5, num_docs=2))


def test_oracle_on_babi(babi_replay):
    results, model = _run(lambda task_name, context: babi_replay(context)[0], ["babi_gen"], babi_num_docs=NUM_DOCS)
    for task in babi.TASKS:
        for bucket in babi.BUCKETS:
            metrics = results["results"][f"babi_gen_{task}_{bucket}"]
            assert _metric_names(metrics) == {"acc", "scaled_acc"}
            assert metrics["acc,none"] == 1.0 and metrics["scaled_acc,none"] == pytest.approx(1.0)
            docs = babi.make_docs(task, bucket, num_docs=NUM_DOCS)
            assert {d["family"] for d in docs} == {"babi"}
            _check_doc_fields(model, f"babi_gen_{task}_{bucket}", docs)
    assert results["groups"]["babi_gen"]["acc,none"] == 1.0


def test_local_text_perplexity(tmp_path):
    text = "the cät sat.\n\nthe dog ran far away.\n"  # ä: two bytes
    path = tmp_path / "text.txt"
    path.write_text(text)
    results, model = _run(None, ["ppl_local_text"], ppl_text_path=str(path), ppl_split="paragraphs")
    metrics = results["results"]["ppl_local_text"]
    assert _metric_names(metrics) == {"word_perplexity", "byte_perplexity", "bits_per_byte"}
    assert metrics["bits_per_byte,none"] == pytest.approx(1.0)  # the model spends one bit per byte
    assert metrics["byte_perplexity,none"] == pytest.approx(2.0)
    # documents "the cät sat." and "the dog ran far away.\n"; lm-eval counts re.split(r"\s+") pieces as words
    n_bytes, n_words = 13 + 22, 3 + 6
    assert metrics["word_perplexity,none"] == pytest.approx(2.0 ** (n_bytes / n_words))
    docs = model.docs["ppl_local_text"]
    assert [(d["family"], d["task"], d["bucket"], d["length"], d["chance"]) for d in docs] == [
        ("text", "local_text", None, 13, None), ("text", "local_text", None, 22, None)]  # length in bytes
    assert len({d["data_hash"] for d in docs}) == 1 and len(docs[0]["data_hash"]) == 16


def test_local_text_needs_a_path():
    with pytest.raises(ValueError, match="ppl_text_path"):
        _manager().load(["ppl_local_text"])
