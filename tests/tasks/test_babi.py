"""bAbI-style generators: answers by replaying the world, format, seeds, train/eval disjointness, batches."""

from __future__ import annotations

import pytest
import torch

from implicit_ssm_eval.tasks.babi import (
    BUCKETS,
    TASKS,
    bucket_lengths,
    make_docs,
    tokenizer_for,
    training_batches,
    training_examples,
)
from implicit_ssm_eval.tasks.babi.lm_eval_hooks import make_dataset
from implicit_ssm_eval.tasks.babi.vocabulary import ANSWERS


@pytest.mark.parametrize("task", list(TASKS))
def test_answers_match_an_independent_replay(task, babi_replay):
    for bucket in BUCKETS:
        for doc in make_docs(task, bucket, num_docs=25):
            final, inline = babi_replay(doc["input"])
            assert final == doc["target"], doc["input"]
            assert all(given == replayed for given, replayed in inline), doc["input"]
            assert (len(inline) == doc["length"] - 1) if task == "cat" else not inline


@pytest.mark.parametrize("task", list(TASKS))
def test_doc_format_and_lengths(task):
    tokenizer = tokenizer_for(task)
    for bucket in BUCKETS:
        lo, hi = bucket_lengths(task)[bucket]
        for doc in make_docs(task, bucket, num_docs=10):
            assert lo <= doc["length"] <= hi
            assert doc["input"].endswith(" ?") and doc["target"] in ANSWERS[doc["question_kind"]]
            assert doc["chance"] == 1 / len(ANSWERS[doc["question_kind"]])
            assert (doc["family"], doc["task"], doc["bucket"]) == ("babi", task, bucket)
            words = doc["input"].split(" ")
            assert (words.count("?") if task == "cat" else words.count(".")) == doc["length"]
            assert 1 not in tokenizer.encode(doc["input"]).ids  # no <unk>
            assert len(tokenizer.encode(doc["target"]).ids) == 1


def test_answers_vary():
    for task in TASKS:
        answers = {d["target"] for d in make_docs(task, "id", num_docs=60)}
        assert len(answers) >= 2, task


def test_shared_tokenizer_is_stable():
    vocab = tokenizer_for("qa1").get_vocab()
    assert vocab == tokenizer_for("cat").get_vocab()
    assert [vocab[t] for t in ("<pad>", "<unk>", "<eos>", ".", "?")] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="unknown bAbI task"):
        tokenizer_for("qa4")


def test_docs_are_deterministic():
    assert make_docs("qa3", "ood2x", seed=3, num_docs=5) == make_docs("qa3", "ood2x", seed=3, num_docs=5)
    assert make_docs("qa3", "ood2x", seed=3, num_docs=1)[0] != make_docs("qa3", "ood2x", seed=4, num_docs=1)[0]


@pytest.mark.parametrize("task", list(TASKS))
def test_no_eval_story_occurs_in_training(task):
    lo, hi = bucket_lengths(task)["id"][0], bucket_lengths(task)["id"][0] + 1  # shortest stories collide most
    evaluation = {d["input"] for d in make_docs(task, "id", num_docs=200, lengths=(lo, hi))}
    examples = training_examples(task, seed=0, min_len=lo, max_len=hi)
    training = {next(examples)["input"] for _ in range(3000)}
    assert not evaluation & training


def test_training_batches_label_the_answer_after_each_question_mark():
    vocab = tokenizer_for("cat").get_vocab()
    words = {i: w for w, i in vocab.items()}
    batch = next(training_batches("cat", batch_size=4, seed=1, min_len=2, max_len=3))
    examples = training_examples("cat", seed=1, min_len=2, max_len=3)
    for row, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        example = next(examples)
        tokens = example["input"].split()
        assert row[: len(tokens)] == [vocab[t] for t in tokens] and set(row[len(tokens) :]) <= {0}
        marked = [t for t, lab in enumerate(labels) if lab != -100]
        assert marked == [t for t, w in enumerate(tokens) if w == "?"]
        assert words[labels[marked[-1]]] == example["target"]
        assert all(words[labels[t]] == tokens[t + 1] for t in marked[:-1])
    assert batch["input_ids"].dtype == torch.long


def test_make_dataset_options():
    base = {"babi_task": "qa19", "babi_bucket": "id", "pretrained": "ignored"}
    assert len(make_dataset(**base, babi_num_docs=3)["test"]) == 3
    assert make_dataset(**base, babi_num_docs=2, babi_lengths={"id": 7})["test"]["length"] == [7, 7]
    with pytest.raises(ValueError, match="valid options are"):
        make_dataset(**base, babi_sed=1)
    with pytest.raises(ValueError, match="qa19 lengths must lie in"):
        make_dataset(**base, babi_lengths={"id": 40})
    with pytest.raises(ValueError, match="gave up .* answerable qa3 story of 1 statements"):
        make_docs("qa3", "id", num_docs=1, lengths=(1, 1))  # "before" needs two places
