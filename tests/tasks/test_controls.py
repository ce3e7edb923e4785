"""The controls family: answers against plainly written solvers, buckets, seeds, partition, training data, scoring.

The solvers here share no code with ``tasks/controls``: Python's ``eval`` for the bracketed expressions, a list
used as a stack (the initial stack read as pushes), slicing for reversal, a dict of first occurrences for MQAR.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
import torch

from implicit_ssm_eval.tasks.controls import (
    BUCKETS,
    TASKS,
    bucket_lengths,
    make_docs,
    request_arguments,
    scored_positions,
    tokenizer_for,
    training_batches,
)
from implicit_ssm_eval.tasks.controls.lm_eval_hooks import make_dataset, process_results
from implicit_ssm_eval.tasks.registry import families

DELETANG = ("mod_arith_brackets", "reverse_string", "stack_manipulation")


# --- independent solvers -------------------------------------------------------------------------------


def solve(task: str, inputs: list[str]) -> list[str]:
    """The answers to an input, computed without the generators."""
    if task == "mod_arith_brackets":
        return [str(eval("".join(inputs)) % 5)]  # every operation is bracketed: Python's precedence is moot
    if task == "reverse_string":
        return inputs[::-1]
    if task == "stack_manipulation":
        stack: list[str] = []
        for token in inputs:  # the initial stack, bottom to top, is the same as pushing its symbols in order
            if token in ("0", "1"):
                stack.append(token)
            elif token == "push0":
                stack.append("0")
            elif token == "push1":
                stack.append("1")
            elif token == "pop" and stack:
                stack.pop()
            elif token != "pop":
                raise AssertionError(token)
        return stack[::-1] + ["end"]
    raise AssertionError(task)


def mqar_answers(symbols: list[str]) -> dict[int, str]:
    """Position -> value for every repeated key: the value that followed the key's first occurrence."""
    memory: dict[str, str] = {}
    answers = {}
    for i in range(0, len(symbols), 2):
        key, value = symbols[i], symbols[i + 1]
        if key in memory:
            answers[i + 1] = memory[key]
        else:
            memory[key] = value
    return answers


def remaining_answer(task: str, context: str) -> list[str]:
    """What an oracle predicts after ``context``: the rest of the answer (MQAR: the queried key's value)."""
    tokens = context.split()
    if task == "mqar":
        first_values = {}
        for key, value in zip(tokens[0::2], tokens[1::2]):
            first_values.setdefault(key, value)
        return [first_values[tokens[-1]]]
    cut = tokens.index("=")
    full, done = solve(task, tokens[:cut]), tokens[cut + 1:]
    assert full[: len(done)] == done  # the context holds the true answers so far
    return full[len(done):]


def check_doc(task: str, doc: dict) -> None:
    symbols, where = doc["symbols"], doc["answer_positions"]
    if task == "mqar":
        expected = mqar_answers(symbols)
        assert sorted(expected) == where
        assert [symbols[p] for p in where] == [expected[p] for p in where]
    else:
        cut = symbols.index("=")
        assert solve(task, symbols[:cut]) == symbols[cut + 1:]
        assert where == list(range(cut + 1, len(symbols)))
    assert doc["input"] == " ".join(symbols[: where[0]])
    assert doc["target"] == " ".join(symbols[p] for p in where)


# --- answers, lengths, distributions ---------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_answers_match_the_independent_solvers_in_every_bucket(task):
    for bucket in BUCKETS:
        for doc in make_docs(task, bucket, num_docs=40 if bucket == "id" else 4):
            check_doc(task, doc)
    for doc in make_docs(task, "id", num_docs=40, lengths=(1, 6)):  # the short grammar cases
        check_doc(task, doc)


@pytest.mark.parametrize("task", list(TASKS))
def test_lengths_follow_the_buckets(task):
    for bucket in BUCKETS:
        lo, hi = bucket_lengths(task)[bucket]
        for doc in make_docs(task, bucket, num_docs=5):
            assert lo <= doc["length"] <= hi and doc["bucket"] == bucket
            assert doc["family"] == "controls" and doc["task"] == task
            n, symbols = doc["length"], doc["symbols"]
            if task == "mqar":  # n pairs, then min(n, 16) queries with their values
                assert len(symbols) == 2 * n + 2 * min(n, 16)
            else:  # n input symbols, "=", the answer
                assert symbols.index("=") == n


def test_default_buckets():
    assert BUCKETS == ("id", "ood2x", "ood4x", "ood8x")
    for task in DELETANG:  # Delétang et al. train on lengths up to 40
        assert bucket_lengths(task) == {"id": (1, 40), "ood2x": (80, 80), "ood4x": (160, 160), "ood8x": (320, 320)}
    assert bucket_lengths("mqar") == {"id": (1, 16), "ood2x": (32, 32), "ood4x": (64, 64), "ood8x": (128, 128)}
    assert bucket_lengths("reverse_string", train_max_len=10)["ood4x"] == (40, 40)
    ctl = families()["controls"]
    assert ctl.bucket_info("mqar", "ood8x").lengths == (128, 128) and ctl.bucket_info("mqar", "ood8x").multiplier == 8


def test_generator_distributions():
    stacks = make_docs("stack_manipulation", "id", num_docs=200, lengths=(2, 40))
    actions = Counter()
    for doc in stacks:
        inputs = doc["symbols"][: doc["length"]]
        depth = 0  # the leading stack bits
        while depth < len(inputs) and inputs[depth] in ("0", "1"):
            depth += 1
        assert 1 <= depth <= doc["length"] - 1  # Delétang: the stack is 1 to n - 1 symbols, the rest actions
        assert all(s not in ("0", "1") for s in inputs[depth:])
        actions.update(inputs[depth:])
    assert set(actions) == {"pop", "push0", "push1"} and min(actions.values()) > 0.25 * sum(actions.values())
    expressions = Counter(s for d in make_docs("mod_arith_brackets", "id", num_docs=100) for s in d["symbols"])
    assert all(expressions[s] > 0 for s in "+-*()01234")
    for doc in make_docs("mqar", "ood2x", num_docs=5) + make_docs("mqar", "id", num_docs=20):
        n, symbols = doc["length"], doc["symbols"]
        keys, values, queries = symbols[0: 2 * n: 2], symbols[1: 2 * n: 2], symbols[2 * n:: 2]
        assert len(set(keys)) == len(set(values)) == n  # distinct keys, distinct values (as Zoology)
        assert len(set(queries)) == len(queries) == min(n, 16) and set(queries) <= set(keys)
    # queries come in random order: every permutation of three keys occurs
    orders = {tuple(d["symbols"][0:6:2].index(q) for q in d["symbols"][6::2])
              for d in make_docs("mqar", "id", num_docs=60, lengths=(3, 3))}
    assert len(orders) == 6


def test_chance_levels():
    alphabet = {"mod_arith_brackets": "01234", "reverse_string": "01", "stack_manipulation": ["0", "1", "end"],
                "mqar": [f"v{i}" for i in range(512)]}
    assert {task: TASKS[task].chance for task in TASKS} == pytest.approx({t: 1 / len(a) for t, a in alphabet.items()})
    assert families()["controls"].chance("stack_manipulation") == pytest.approx(1 / 3)
    for task in TASKS:
        assert {doc["chance"] for doc in make_docs(task, "id", num_docs=3)} == {TASKS[task].chance}


def test_docs_are_deterministic_and_seeded():
    first = make_docs("reverse_string", "ood2x", seed=7, num_docs=4)
    assert first == make_docs("reverse_string", "ood2x", seed=7, num_docs=4)
    assert [d["symbols"] for d in first[:2]] == [d["symbols"] for d in make_docs("reverse_string", "ood2x", seed=7,
                                                                                 num_docs=2)]  # fmt: skip
    for task in TASKS:  # the three leaderboard seeds give three different data sets
        hashes = {make_docs(task, "id", seed=seed, num_docs=5)[0]["data_hash"] for seed in (0, 1, 2)}
        assert len(hashes) == 3, task
    # which positions token_acc scores is scoring, not data: the data hash stays
    assert make_docs("reverse_string", "id", num_docs=3, positions=2)[0]["data_hash"] == \
        make_docs("reverse_string", "id", num_docs=3)[0]["data_hash"]


def _eval_side(task: str, head: list[str]) -> bool:
    """The held-out partition recomputed: BLAKE2b-64 of "task|head", one value in 8 reserved for evaluation."""
    digest = hashlib.blake2b(f"{task}|{' '.join(head)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 8 == 0


def _training_examples(task: str, min_len: int, max_len: int, batches: int) -> list[list[str]]:
    vocab = {i: s for s, i in tokenizer_for(task).get_vocab().items()}
    stream = training_batches(task, min_len=min_len, max_len=max_len, batch_size=200, seed=0)
    examples = []
    for _ in range(batches):
        batch = next(stream)
        for row, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
            n = sum(1 for i in row if i != 0)
            examples.append([vocab[i] for i in row[:n]] + [vocab[labels[n - 1]]])  # the final answer is a label
    return examples


@pytest.mark.parametrize("task", list(TASKS))
def test_no_eval_example_occurs_in_training(task):
    lengths = (1, 3) if task == "mqar" else (13, 15)
    head = (lambda s: s[: 2 * min(len(s) // 4, 4)]) if task == "mqar" else (lambda s: s[:13])
    evaluation = [d["symbols"] for d in make_docs(task, "id", num_docs=100, lengths=lengths)]
    training = _training_examples(task, *lengths, batches=3)
    assert all(_eval_side(task, head(s)) for s in evaluation)
    assert not any(_eval_side(task, head(s)) for s in training)
    assert not {" ".join(s) for s in evaluation} & {" ".join(s) for s in training}
    if task == "reverse_string":  # the check has teeth: unpartitioned sampling collides at length 13
        rng = random.Random(0)
        unrestricted = {" ".join(TASKS[task].sample(13, rng).symbols) for _ in range(20_000)}
        assert {" ".join(s) for s in evaluation if len(s) == 27} & unrestricted


def test_short_inputs_are_not_partitioned():
    docs = make_docs("reverse_string", "id", num_docs=200, lengths=(4, 4))
    assert len({" ".join(d["symbols"]) for d in docs}) == 16  # every 4-bit string, training ones included


def test_lengths_beyond_the_key_vocabulary_are_refused():
    with pytest.raises(ValueError, match=r"mqar lengths \(key-value pairs\) must be >= 1 and <= 512, got 513"):
        make_docs("mqar", "ood8x", lengths=(513, 513))
    with pytest.raises(ValueError, match="unknown bucket 'ood3x'"):
        make_docs("mqar", "ood3x")
    with pytest.raises(ValueError, match="unknown controls task 'reverse'"):
        make_docs("reverse", "id")


# --- requests and metrics --------------------------------------------------------------------------------


@pytest.mark.parametrize(("answers", "positions", "expected"), [
    (5, 16, [0, 1, 2, 3, 4]), (40, 0, list(range(40))), (40, 16, [0, 3, 5, 8, 10, 13, 16, 18, 21, 23, 26, 29, 31,
                                                                   34, 36, 39]),
    (320, 4, [0, 106, 213, 319]), (17, 16, [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16]), (9, 1, [8]),
])  # fmt: skip
def test_scored_positions(answers, positions, expected):
    assert scored_positions(answers, positions) == expected


def test_scored_positions_are_distinct_and_span_the_answer():
    for answers in range(1, 60):
        for positions in range(2, 20):
            chosen = scored_positions(answers, positions)
            assert chosen == sorted(set(chosen)) and len(chosen) == min(answers, positions)
            assert chosen[0] == 0 and chosen[-1] == answers - 1


def test_request_arguments():
    doc = {"symbols": ["1", "1", "0", "=", "0", "1", "1"], "answer_positions": [4, 5, 6], "whole": True,
           "scored": [0, 2]}
    assert request_arguments(doc) == [("1 1 0 = ", "0 1 1"), ("1 1 0 = ", "0"), ("1 1 0 = 0 1 ", "1")]
    one = {"symbols": ["(", "2", ")", "=", "2"], "answer_positions": [4], "whole": True, "scored": [0]}
    assert request_arguments(one) == [("( 2 ) = ", "2")]  # one answer: the whole request is the position's
    mqar = {"symbols": ["k1", "v2", "k3", "v4", "k3", "v4", "k1", "v2"], "answer_positions": [5, 7], "whole": False,
            "scored": [0, 1]}
    assert request_arguments(mqar) == [("k1 v2 k3 v4 k3 ", "v4"), ("k1 v2 k3 v4 k3 v4 k1 ", "v2")]
    for task in TASKS:  # every continuation is what the independent oracle predicts next; whole: all that is left
        for doc in make_docs(task, "ood2x", num_docs=2):
            requests = request_arguments(doc)
            for i, (context, continuation) in enumerate(requests):
                expected = remaining_answer(task, context)
                assert context.endswith(" ") and continuation.split() == expected[: 1 if i or task == "mqar" else None]
            answers = len(doc["answer_positions"])
            expected_count = {"mod_arith_brackets": 1, "mqar": 16}.get(task, 1 + min(answers, 16))
            assert len(requests) == expected_count


def test_process_results():
    whole = {"whole": True, "chance": 0.5, "symbols": list("110=011"), "answer_positions": [4, 5, 6],
             "scored": [0, 1, 2], "task": "reverse_string"}
    assert process_results(whole, [(0.0, False), (0.0, True), (0.0, True), (0.0, False)]) == pytest.approx(
        {"token_acc": 2 / 3, "seq_acc": 0.0, "scaled_token_acc": 1 / 3})
    assert process_results(whole, [(0.0, True)] * 4) == {"token_acc": 1.0, "seq_acc": 1.0, "scaled_token_acc": 1.0}
    # seq_acc is the whole request's flag (the first), even when the scored positions are all right
    assert process_results(whole, [(0.0, False)] + [(0.0, True)] * 3)["seq_acc"] == 0.0
    assert process_results(whole, [(0.0, True)] + [(0.0, False)] * 3)["seq_acc"] == 1.0
    single = {**whole, "symbols": list("2=2"), "answer_positions": [2], "scored": [0], "chance": 0.2}
    assert process_results(single, [(-1.0, True)]) == pytest.approx(
        {"token_acc": 1, "seq_acc": 1, "scaled_token_acc": 1})
    assert process_results(single, [(-1.0, False)]) == pytest.approx(
        {"token_acc": 0, "seq_acc": 0, "scaled_token_acc": -0.25})
    interleaved = {**whole, "whole": False, "scored": [0, 1, 2]}
    assert process_results(interleaved, [(0.0, True), (0.0, True), (0.0, False)])["seq_acc"] == 0.0
    assert process_results(interleaved, [(0.0, True)] * 3)["seq_acc"] == 1.0
    with pytest.raises(ValueError, match="2 results for a document of 4 requests"):
        process_results(whole, [(0.0, True)] * 2)


# --- tokenizers and training data -----------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_tokenizer_reads_every_symbol_as_one_token(task):
    tokenizer = tokenizer_for(task)
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in ("<pad>", "<unk>", "<eos>")] == [0, 1, 2] and "_" in vocab
    for doc in make_docs(task, "ood2x", num_docs=2) + make_docs(task, "id", num_docs=5):
        ids = tokenizer.encode(" ".join(doc["symbols"])).ids
        assert len(ids) == len(doc["symbols"]) and 1 not in ids


@pytest.mark.parametrize("task", list(TASKS))
def test_training_labels_are_the_next_answer_or_blank(task):
    vocab = {i: s for s, i in tokenizer_for(task).get_vocab().items()}
    batch = next(training_batches(task, min_len=2, max_len=12, batch_size=16, seed=3))
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and ids.shape[0] == 16
    for row, lab in zip(ids.tolist(), labels.tolist()):
        n = sum(1 for i in row if i != 0)
        inputs, targets = [vocab[i] for i in row[:n]], [vocab[i] for i in lab[:n]]
        assert row[n:] == [0] * (len(row) - n) and lab[n:] == [-100] * (len(row) - n)
        assert (torch.tensor(lab) != -100).sum() == n  # the trainer counts a sequence's length from its labels
        symbols = inputs + [targets[-1]]  # the final answer is the last label, not an input
        if task == "mqar":
            answers = mqar_answers(symbols)
        else:
            cut = symbols.index("=")
            assert solve(task, symbols[:cut]) == symbols[cut + 1:]
            answers = {p: symbols[p] for p in range(cut + 1, n + 1)}
        assert targets == [answers.get(t + 1, "_") for t in range(n)] and targets[-1] != "_"


def test_training_batches_are_deterministic_resumable_and_checked():
    common = {"min_len": 1, "max_len": 9, "batch_size": 4, "seed": 1}
    stream = training_batches("stack_manipulation", **common)
    first, second = next(stream), next(stream)
    assert torch.equal(next(training_batches("stack_manipulation", **common, start=1))["input_ids"],
                       second["input_ids"])  # fmt: skip
    assert not torch.equal(next(training_batches("stack_manipulation", **{**common, "seed": 2}))["input_ids"],
                           first["input_ids"])  # fmt: skip
    ctl = families()["controls"]
    assert torch.equal(next(ctl.training_batches("stack_manipulation", **common))["labels"], first["labels"])
    with pytest.raises(ValueError, match="controls training takes no options"):
        ctl.training_batches("mqar", **common, p_identity=0.5)
    with pytest.raises(ValueError, match="max_len must be an integer >= 5"):
        next(training_batches("mqar", min_len=5, max_len=2, batch_size=1, seed=0))
    with pytest.raises(ValueError, match="must be >= 1 and <= 512, got 600"):
        next(training_batches("mqar", min_len=5, max_len=600, batch_size=1, seed=0))


# --- lm-eval options ------------------------------------------------------------------------------------


def test_make_dataset_options():
    base = {"ctl_task": "reverse_string", "ctl_bucket": "ood2x", "version": 1, "pretrained": "x"}
    ds = make_dataset(**base, ctl_num_docs=3, ctl_lengths={"ood2x": [20, 22]})["test"]
    assert len(ds) == 3 and all(20 <= n <= 22 for n in ds["length"])
    assert make_dataset(**base, ctl_num_docs=2, ctl_train_max_len=8)["test"]["length"] == [16, 16]
    assert [len(s) for s in make_dataset(**base, ctl_num_docs=2, ctl_positions=5)["test"]["scored"]] == [5, 5]
    assert [len(s) for s in make_dataset(**base, ctl_num_docs=2, ctl_positions=0)["test"]["scored"]] == [80, 80]
    seeded = make_dataset(**base, ctl_num_docs=2, ctl_seed=4)["test"]
    assert seeded["data_hash"][0] == make_docs("reverse_string", "ood2x", seed=4, num_docs=2)[0]["data_hash"]
    with pytest.raises(ValueError, match="valid options are .*ctl_num_docs"):
        make_dataset(**base, ctl_num_doc=4)
    with pytest.raises(ValueError, match="ctl_positions must be an integer >= 0"):
        make_dataset(**base, ctl_positions=-1)
    with pytest.raises(ValueError, match="ctl_seed must be an integer >= 0"):
        make_dataset(**base, ctl_seed="first")
    with pytest.raises(ValueError, match="unknown bucket 'ood3x'"):
        make_dataset(**base, ctl_lengths={"ood3x": 5})
    with pytest.raises(ValueError, match="dataset_kwargs ctl_bucket to one of"):
        make_dataset(**{**base, "ctl_bucket": "ident50"})
