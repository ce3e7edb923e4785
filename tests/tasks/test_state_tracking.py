"""State-tracking generators against independent brute-force computations, plus seeds, splits and batches."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys

import pytest
import torch

from implicit_ssm_eval.tasks.state_tracking import (
    BUCKETS,
    TASKS,
    bucket_lengths,
    buckets_of,
    make_docs,
    tokenizer_for,
    training_batches,
)
from implicit_ssm_eval.tasks.state_tracking.algebra import FiniteMonoid, named_algebra
from implicit_ssm_eval.tasks.state_tracking.lm_eval_hooks import make_dataset
from implicit_ssm_eval.tasks.state_tracking.specs import KEY_LEN

GROUPS = {"s3": 6, "a4": 12, "z5": 5, "a5": 60, "z60": 60, "a4xz5": 60, "s5": 120}

# --- algebra -------------------------------------------------------------------------------------------


def _triples(m: FiniteMonoid, limit: int = 30_000) -> list[tuple[int, int, int]]:
    if m.order**3 <= limit:
        return list(itertools.product(range(m.order), repeat=3))
    rng = random.Random(0)
    return [tuple(rng.randrange(m.order) for _ in range(3)) for _ in range(limit)]


@pytest.mark.parametrize("name", [*GROUPS, "m", "a5xm"])
def test_algebra_is_an_associative_monoid(name):
    m = named_algebra(name)
    for a, b, c in _triples(m):
        assert m.multiply(m.multiply(a, b), c) == m.multiply(a, m.multiply(b, c))
    for a in range(m.order):
        assert m.multiply(m.identity, a) == a == m.multiply(a, m.identity)


@pytest.mark.parametrize("name,order", GROUPS.items())
def test_group_axioms_and_order(name, order):
    g = named_algebra(name)
    assert g.order == order == len(set(g.elements))
    for a in range(g.order):
        inverses = [b for b in range(g.order) if g.multiply(a, b) == g.identity]
        assert len(inverses) == 1 and g.multiply(inverses[0], a) == g.identity
    for row in g.table:  # Latin square: each product row is a permutation of the elements
        assert sorted(row) == list(range(g.order))


def test_which_groups_are_abelian():
    def abelian(g):
        return all(g.multiply(a, b) == g.multiply(b, a) for a in range(g.order) for b in range(g.order))

    assert abelian(named_algebra("z60"))
    assert not any(abelian(named_algebra(n)) for n in ("s3", "a5", "s5", "a4xz5"))


def test_a5_is_the_even_permutations():
    def inversions(p):
        return sum(p[i] > p[j] for i, j in itertools.combinations(range(5), 2))

    evens = {"".join(map(str, p)) for p in itertools.permutations(range(5)) if inversions(p) % 2 == 0}
    assert set(named_algebra("a5").elements) == evens


def test_monoid_m_is_the_papers_aperiodic_monoid():
    m = named_algebra("m")
    reference = {  # Cayley table of Schöne et al.'s reference code, rows = left operand
        "E": "EABX",
        "A": "AXXX",
        "B": "BABX",
        "X": "XXXX",
    }
    for a, row in reference.items():
        for b, product in zip("EABX", row, strict=True):
            assert m.elements[m.multiply(m.index(a), m.index(b))] == product
    for x in range(m.order):  # aperiodic: x^2 = x^3
        square = m.multiply(x, x)
        assert m.multiply(square, x) == square


def test_composition_convention_applies_the_first_symbol_first():
    # swap 0,1 then swap 1,2 sends 0 -> 1 -> 2, 1 -> 0, 2 -> 1: "20134"
    assert TASKS["s5"].states_of(["10234", "02134"]) == ["10234", "20134"]
    # swap 1,2 then swap 0,1 sends 0 -> 0 -> 1, 1 -> 2 -> 2, 2 -> 1 -> 0: "12034"
    assert TASKS["s5"].states_of(["02134", "10234"]) == ["02134", "12034"]


# --- states against brute force (conftest) ------------------------------------------------------------


def _tree_product(m: FiniteMonoid, word: list[int]) -> int:
    """Balanced-tree product: equals the left fold only if the table is associative."""
    if len(word) == 1:
        return word[0]
    mid = len(word) // 2
    return m.multiply(_tree_product(m, word[:mid]), _tree_product(m, word[mid:]))


@pytest.mark.parametrize("task", list(TASKS))
def test_states_match_brute_force(task, brute_force_states):
    spec, rng = TASKS[task], random.Random(1)
    for length in (1, 2, 3, 12, 13, 40, 101):
        for _ in range(5):
            symbols, states = spec.sample(length, rng)
            assert len(symbols) == len(states) == spec.effective_length(length)
            assert states == brute_force_states(task, symbols)


@pytest.mark.parametrize("task", ["s5", "a5xm", "z60"])
def test_group_products_by_table_equal_tree_products(task):
    algebra, spec, rng = named_algebra(task), TASKS[task], random.Random(2)
    for _ in range(20):
        symbols, states = spec.sample(rng.randint(1, 64), rng)
        word = [algebra.index(s) for s in symbols]
        assert states[-1] == algebra.elements[_tree_product(algebra, word)] == algebra.elements[algebra.product(word)]


def test_p_identity_sets_how_often_the_group_part_is_the_identity():
    rng = random.Random(3)
    for p in (0.5, 0.9):
        symbols, _ = TASKS["a5xm"].with_p_identity(p).sample(20_000, rng)
        identity_share = sum(s.startswith("01234_") for s in symbols) / len(symbols)
        assert abs(identity_share - (p + (1 - p) / 60)) < 0.015
    assert TASKS["a5xm"].p_identity == 0.9
    with pytest.raises(ValueError, match="p_identity"):
        TASKS["parity"].with_p_identity(0.5)


def test_mod_arith_lengths_are_odd_and_alternate():
    symbols, _ = TASKS["mod_arith"].sample(80, random.Random(4))
    assert len(symbols) == 79
    assert all(s.isdigit() == (i % 2 == 0) for i, s in enumerate(symbols))


def test_chance_levels():
    expected = {"s5": 1 / 120, "a5": 1 / 60, "s3": 1 / 6, "z60": 1 / 60, "a4xz5": 1 / 60, "a5xm": 1 / 240}
    expected |= {"parity": 0.5, "even_pairs": 0.5, "cycle_nav": 0.2, "mod_arith": 0.2}
    assert {name: spec.chance for name, spec in TASKS.items()} == pytest.approx(expected)


# --- documents, buckets, seeds -------------------------------------------------------------------------


def test_docs_are_deterministic_and_prefix_stable():
    first = make_docs("s5", "ood2x", seed=7, num_docs=6)
    assert first == make_docs("s5", "ood2x", seed=7, num_docs=6)
    assert [d["input"] for d in first[:3]] == [d["input"] for d in make_docs("s5", "ood2x", seed=7, num_docs=3)]
    assert first[0]["input"] != make_docs("s5", "ood2x", seed=8, num_docs=1)[0]["input"]
    assert len({d["data_hash"] for d in first}) == 1


def test_docs_are_the_same_in_another_process():
    # a different PYTHONHASHSEED stands in for "another machine": nothing may depend on hash() salt
    code = ("from implicit_ssm_eval.tasks.state_tracking import make_docs as m\n"
            "print(m('a5xm', 'id', num_docs=3)[0]['data_hash'])")
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], env={"PYTHONHASHSEED": salt, "PYTHONPATH": ":".join(sys.path)},
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        for salt in ("1", "2")
    }  # fmt: skip
    assert outputs == {make_docs("a5xm", "id", num_docs=3)[0]["data_hash"]}


@pytest.mark.parametrize("task", list(TASKS))
def test_doc_format(task):
    spec = TASKS[task]
    for bucket in buckets_of(task):
        lo, hi = bucket_lengths(task)[bucket]
        for doc in make_docs(task, bucket, num_docs=3):
            symbols = doc["input"].split(" ")
            assert doc["target"] == doc["states"][-1] == spec.states_of(symbols)[-1]
            assert doc["length"] == len(symbols) == len(doc["states"])
            assert spec.effective_length(lo) <= doc["length"] <= hi
            assert doc["chance"] == spec.chance and doc["bucket"] == bucket
            assert doc["family"] == "state_tracking" and doc["task"] == task


def test_default_buckets():
    assert BUCKETS == ("id", "ood2x", "ood4x", "ood8x")
    assert bucket_lengths("parity") == {
        "id": (1, 40),
        "ood2x": (80, 80),
        "ood4x": (160, 160),
        "ood8x": (320, 320),
        "ones10": (80, 80),
        "ones90": (80, 80),
    }
    assert bucket_lengths("s5")["id"] == (1, 32) and bucket_lengths("s5")["ood4x"] == (128, 128)
    assert bucket_lengths("a5xm")["id"] == (256, 256) and bucket_lengths("a5xm")["ood4x"] == (1024, 1024)
    assert bucket_lengths("a5xm", train_max_len=64)["id"] == (64, 64)
    assert bucket_lengths("a5xm")["ident50"] == (512, 512)
    assert bucket_lengths("s5", train_max_len=16) == {"id": (1, 16), "ood2x": (32, 32), "ood4x": (64, 64),
                                                      "ood8x": (128, 128), "ident50": (32, 32), "identrun16": (32, 32),
                                                      "genclass": (32, 32), "gen2": (32, 32)}  # fmt: skip


@pytest.mark.parametrize("task", list(TASKS))
def test_no_eval_sequence_longer_than_12_occurs_in_training(task):
    assert KEY_LEN == 13
    lengths = (13, 16)  # short lengths are where chance collisions would happen (parity: 2^13 strings)
    evaluation = {d["input"] for d in make_docs(task, "id", num_docs=300, lengths=lengths)}
    batches = training_batches(task, min_len=lengths[0], max_len=lengths[1], batch_size=500, seed=0)
    vocab = {i: s for s, i in tokenizer_for(task).get_vocab().items()}
    training = set()
    for _ in range(20):
        for row in next(batches)["input_ids"].tolist():
            training.add(" ".join(vocab[i] for i in row if i != 0))
    assert not evaluation & training
    if task in ("parity", "even_pairs"):  # the check has teeth: unpartitioned sampling collides
        rng = random.Random(0)
        unrestricted = {" ".join(TASKS[task].sample(13, rng)[0]) for _ in range(20_000)}
        assert evaluation & unrestricted


# --- tokenizer and training batches --------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_tokenizer_covers_inputs_and_single_token_answers(task):
    tokenizer, spec = tokenizer_for(task), TASKS[task]
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in ("<pad>", "<unk>", "<eos>")] == [0, 1, 2]
    for answer in spec.answer_symbols:
        assert len(tokenizer.encode(answer).ids) == 1
    doc = make_docs(task, "id", num_docs=1)[0]
    ids = tokenizer.encode(doc["input"]).ids
    assert len(ids) == doc["length"] and 1 not in ids


def test_tokenizer_json_roundtrip(tmp_path):
    from tokenizers import Tokenizer

    from implicit_ssm_eval.tasks.state_tracking import write_tokenizer

    path = write_tokenizer("a4xz5", tmp_path / "tok" / "tokenizer.json")
    assert Tokenizer.from_file(str(path)).get_vocab() == tokenizer_for("a4xz5").get_vocab()


def test_training_batches_shape_labels_and_padding():
    batches = training_batches("cycle_nav", min_len=3, max_len=9, batch_size=16, seed=5)
    batch = next(batches)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and ids.shape[0] == 16
    vocab = {i: s for s, i in tokenizer_for("cycle_nav").get_vocab().items()}
    lengths = (ids != 0).sum(1)
    assert lengths.min() >= 3 and lengths.max() == ids.shape[1] <= 9
    for row, lab, n in zip(ids.tolist(), labels.tolist(), lengths.tolist(), strict=True):
        symbols = [vocab[i] for i in row[:n]]
        assert [vocab[i] for i in lab[:n]] == TASKS["cycle_nav"].states_of(symbols)
        assert row[n:] == [0] * (len(row) - n) and lab[n:] == [-100] * (len(row) - n)
    again = next(training_batches("cycle_nav", min_len=3, max_len=9, batch_size=16, seed=5))
    assert torch.equal(again["input_ids"], ids)
    other = next(training_batches("cycle_nav", min_len=3, max_len=9, batch_size=16, seed=6))
    assert not torch.equal(other["input_ids"], ids)


def test_training_batches_reject_bad_arguments():
    with pytest.raises(ValueError, match="unknown state-tracking task"):
        next(training_batches("s4", min_len=1, max_len=2, batch_size=1, seed=0))
    with pytest.raises(ValueError, match="max_len"):
        next(training_batches("s5", min_len=5, max_len=2, batch_size=1, seed=0))


# --- lm-eval options -----------------------------------------------------------------------------------


def test_make_dataset_options():
    base = {"st_task": "parity", "st_bucket": "ood2x", "version": 1, "pretrained": "x", "max_iter": 8}
    ds = make_dataset(**base, st_num_docs=4, st_lengths={"ood2x": [20, 22]}, st_p_identity=0.5)["test"]
    assert len(ds) == 4 and all(20 <= n <= 22 for n in ds["length"])
    assert make_dataset(**base, st_num_docs=2, st_train_max_len=8)["test"]["length"] == [16, 16]
    with pytest.raises(ValueError, match="valid options are .*st_num_docs"):
        make_dataset(**base, st_num_doc=4)
    with pytest.raises(ValueError, match="st_num_docs must be an integer >= 1"):
        make_dataset(**base, st_num_docs=0)
    with pytest.raises(ValueError, match="unknown bucket 'ood3x'"):
        make_dataset(**base, st_lengths={"ood3x": 5})
    with pytest.raises(ValueError, match="st_p_identity"):
        make_dataset(**{**base, "st_task": "a5"}, st_p_identity="often")
