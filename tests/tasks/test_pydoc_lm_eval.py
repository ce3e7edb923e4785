"""The pydoc YAMLs through lm-eval itself, offline: requests as lambada_openai's and wikitext's, lm-eval's metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

import implicit_ssm_eval.tasks
from implicit_ssm_eval.tasks.registry import families
from implicit_ssm_eval.tasks.text.heldout import BUCKETS, make_docs

TASKS_DIR = Path(implicit_ssm_eval.tasks.__file__).parent
DOC_FIELDS = ("family", "task", "bucket", "length", "chance", "data_hash", "source")


class ClozeOracle(LM):
    """Greedy on the true target (found from the context) unless ``wrong``; one bit per byte when rolling."""

    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.wrong = wrong
        self.requests: dict[str, list] = {}

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        results = []
        for request in requests:
            self.requests.setdefault(request.task_name, []).append(request)
            context, continuation = request.args
            greedy = not self.wrong and continuation == " " + request.doc["target"]
            results.append((0.0 if greedy else -3.0, greedy))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        for request in requests:
            self.requests.setdefault(request.task_name, []).append(request)
        return [-len(request.args[0].encode()) * math.log(2) for request in requests]

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def _run(model: LM, tasks: list[str], **metadata) -> dict:
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)
    return simple_evaluate(model=model, tasks=tasks, task_manager=manager)


def _fields(docs: list[dict]) -> list[dict]:
    return [{f: d[f] for f in DOC_FIELDS} for d in sorted(docs, key=lambda d: d["index"])]


def test_the_family_loads_through_the_task_manager():
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"pydoc_num_docs": 2})
    family = families()["pydoc"]
    names = {family.lm_eval_name(t, b) for t in family.tasks for b in family.buckets(t)}
    assert names | {"pydoc", "pydoc_ppl", "pydoc_cloze"} <= set(manager.all_tasks)
    loaded = manager.load(["pydoc"])["tasks"]
    assert set(loaded) == names
    for name, task in loaded.items():
        assert len(task.test_docs()) == 2 and task.VERSION == 1, name


def test_cloze_and_perplexity_metrics():
    model = ClozeOracle()
    results = _run(model, ["pydoc"], pydoc_num_docs=3)
    for bucket in BUCKETS:
        cloze = results["results"][f"pydoc_cloze_{bucket}"]
        assert cloze["acc,none"] == 1.0 and cloze["scaled_acc,none"] == pytest.approx(1.0)
        assert cloze["perplexity,none"] == pytest.approx(1.0)
        docs = make_docs("cloze", bucket, num_docs=3)
        requests = sorted(model.requests[f"pydoc_cloze_{bucket}"], key=lambda r: r.doc["index"])
        assert [r.args for r in requests] == [(d["input"], " " + d["target"]) for d in docs]  # as lambada_openai's
        assert _fields([r.doc for r in requests]) == _fields(docs)
        ppl = results["results"][f"pydoc_ppl_{bucket}"]
        assert ppl["bits_per_byte,none"] == pytest.approx(1.0) and ppl["byte_perplexity,none"] == pytest.approx(2.0)
        windows = make_docs("ppl", bucket, num_docs=3)
        requests = sorted(model.requests[f"pydoc_ppl_{bucket}"], key=lambda r: r.doc["index"])
        assert [r.args for r in requests] == [(d["text"],) for d in windows]
    assert results["groups"]["pydoc_cloze"]["acc,none"] == 1.0

    wrong = _run(ClozeOracle(wrong=True), ["pydoc_cloze_id"], pydoc_num_docs=3)["results"]["pydoc_cloze_id"]
    chance = families()["pydoc"].chance("cloze")
    assert wrong["acc,none"] == 0.0 and wrong["scaled_acc,none"] == pytest.approx(-chance / (1 - chance))
    assert wrong["perplexity,none"] == pytest.approx(math.exp(3.0))


def test_metadata_reaches_the_generator():
    model = ClozeOracle()
    _run(model, ["pydoc_ppl_ood2x", "pydoc_cloze_id"], pydoc_num_docs=2, pydoc_seed=4, pydoc_split="validation")
    expected = make_docs("ppl", "ood2x", num_docs=2, seed=4, split="validation")
    assert _fields([r.doc for r in model.requests["pydoc_ppl_ood2x"]]) == _fields(expected)
    expected = make_docs("cloze", "id", num_docs=2, seed=4, split="validation")
    assert _fields([r.doc for r in model.requests["pydoc_cloze_id"]]) == _fields(expected)
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"pydoc_num_doc": 2})
    with pytest.raises(ValueError, match=r"unknown pydoc option\(s\) \['pydoc_num_doc'\]"):
        manager.load(["pydoc_ppl_id"])
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"pydoc_split": "train"})
    with pytest.raises(ValueError, match="pydoc_split must be one of"):
        manager.load(["pydoc_ppl_id"])


@pytest.mark.slow
def test_an_hf_model_with_its_own_tokenizer(tmp_path):
    """A tiny random Llama built here, read by lm-eval's own `hf` model: the tasks need nothing of ours."""
    transformers = pytest.importorskip("transformers")
    import torch

    from implicit_ssm_eval.tasks.text.shipped import corpus_tokenizer

    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=corpus_tokenizer(), eos_token="<eos>",
                                                     pad_token="<pad>", unk_token="<unk>")  # fmt: skip
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=4096, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                                      bos_token_id=2, eos_token_id=2, pad_token_id=0)  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"pydoc_num_docs": 1})
    results = simple_evaluate(model="hf", model_args={"pretrained": str(tmp_path), "max_length": 2048,
                                                      "dtype": "float32"},
                              tasks=["pydoc_ppl_ood8x", "pydoc_cloze_id"], task_manager=manager, device="cpu")
    bpb = results["results"]["pydoc_ppl_ood8x"]["bits_per_byte,none"]
    uniform = 12 / 3.89  # log2(4096) bits per token over about 3.89 bytes per token
    assert abs(bpb - uniform) < 0.5  # an untrained model is about uniform
    assert results["results"]["pydoc_cloze_id"]["acc,none"] in (0.0, 1.0)
