"""Distribution-shift buckets and the training mixtures that cover them, checked with code of their own.

Identities, classes and generated groups are recognised from the symbol names (moved points, gcd, closure
under composition written here); answers come from conftest's brute force, not from the task's automaton.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math

import pytest

from implicit_ssm_eval.tasks.common import in_heldout_partition
from implicit_ssm_eval.tasks.state_tracking import TASKS, bucket_lengths, buckets_of, make_docs, training_batches
from implicit_ssm_eval.tasks.state_tracking.lm_eval_hooks import make_dataset
from implicit_ssm_eval.tasks.state_tracking.specs import KEY_LEN

WORD_PROBLEMS = ("s5", "a5", "s3", "z60", "a4xz5")
EXPECTED_SHIFTS = {
    **{task: ("ident50", "identrun16", "genclass", "gen2") for task in WORD_PROBLEMS},
    "a5xm": ("ident50",),
    "parity": ("ones10", "ones90"),
    "even_pairs": ("a90",),
    "cycle_nav": ("stay90", "fwd90"),
    "mod_arith": ("plus90", "times90"),
}
SHIFTED = [(task, bucket) for task, buckets in EXPECTED_SHIFTS.items() for bucket in buckets]
NUM_DOCS = 100
ORDERS = {"s5": 120, "a5": 60, "s3": 6, "z60": 60, "a4xz5": 60}


def _symbols(task: str, bucket: str, num_docs: int = NUM_DOCS) -> list[list[str]]:
    return [doc["input"].split(" ") for doc in make_docs(task, bucket, num_docs=num_docs)]


def _tails(sequences: list[list[str]]) -> list[str]:
    """Symbols after the first KEY_LEN, whose distribution the held-out partition does not condition."""
    return [s for seq in sequences for s in seq[KEY_LEN:]]


def _is_identity(task: str, symbol: str) -> bool:
    group_part = symbol.split("_")[0] if task in ("a4xz5", "a5xm") else symbol
    if task == "z60":
        return symbol == "0"
    identity = "".join(sorted(group_part)) == group_part  # one-line notation of the identity: 0123...
    return identity and (task != "a4xz5" or symbol.endswith("_0"))


def _moved_points(permutation: str) -> int:
    return sum(image != str(point) for point, image in enumerate(permutation))


def _product(task: str, a: str, b: str) -> str:
    """a * b ("apply a, then b"), written here from the names alone."""
    if task == "z60":
        return str((int(a) + int(b)) % 60)
    if task == "a4xz5":
        (pa, za), (pb, zb) = a.split("_"), b.split("_")
        return f"{_product('s5', pa, pb)}_{(int(za) + int(zb)) % 5}"
    return "".join(b[int(i)] for i in a)


def _closure(task: str, generators: set[str]) -> set[str]:
    elements, frontier = set(generators), set(generators)
    while frontier:
        frontier = {_product(task, a, g) for a in frontier for g in generators} - elements
        elements |= frontier
    return elements




def test_every_task_has_its_shifted_buckets():
    assert {task: buckets_of(task)[4:] for task in TASKS} == EXPECTED_SHIFTS
    assert all("_" not in bucket for _, bucket in SHIFTED)  # st_<task>_<bucket> must split unambiguously


@pytest.mark.parametrize("task,bucket", SHIFTED)
def test_shifted_docs_answer_right_at_twice_the_training_length(task, bucket, brute_force_states):
    spec = TASKS[task]
    for doc in make_docs(task, bucket, num_docs=20):
        symbols = doc["input"].split(" ")
        assert doc["states"] == brute_force_states(task, symbols) and doc["target"] == doc["states"][-1]
        assert doc["length"] == len(symbols) == spec.effective_length(2 * spec.train_max_len)
        fields = (doc["family"], doc["task"], doc["bucket"], doc["chance"])
        assert fields == ("state_tracking", task, bucket, spec.chance)
    assert bucket_lengths(task)[bucket] == (2 * spec.train_max_len, 2 * spec.train_max_len)


@pytest.mark.parametrize("task,bucket", SHIFTED)
def test_shifted_docs_are_held_out_and_deterministic(task, bucket):
    docs = make_docs(task, bucket, num_docs=30)
    assert all(in_heldout_partition(TASKS[task].partition_key(d["input"].split(" "))) for d in docs)
    assert docs == make_docs(task, bucket, num_docs=30)
    assert docs[0]["input"] != make_docs(task, bucket, seed=1, num_docs=1)[0]["input"]
    assert len({d["data_hash"] for d in docs}) == 1


@pytest.mark.parametrize("task", [*WORD_PROBLEMS, "a5xm"])
def test_ident50_has_half_identities(task):
    ordinary = _tails(_symbols(task, "ood2x"))
    shifted = _tails(_symbols(task, "ident50"))
    share = sum(_is_identity(task, s) for s in shifted) / len(shifted)
    assert abs(share - 0.5) < 0.03, share  # 100 docs x 51 symbols: 0.03 is > 4 standard deviations
    ordinary_share = sum(_is_identity(task, s) for s in ordinary) / len(ordinary)
    assert abs(ordinary_share - (0.9 if task == "a5xm" else 1 / ORDERS[task])) < 0.03  # training's share
    if task == "a5xm":  # the monoid part stays uniform
        monoid = [s.split("_")[1] for s in shifted]
        assert all(abs(monoid.count(x) / len(monoid) - 0.25) < 0.03 for x in "EABX")


@pytest.mark.parametrize("task", WORD_PROBLEMS)
def test_identrun16_holds_one_run_of_16_identities_after_the_key(task):
    starts = set()
    for symbols in _symbols(task, "identrun16"):
        flags = [_is_identity(task, s) for s in symbols]
        run_starts = [i for i in range(KEY_LEN, len(flags) - 15) if all(flags[i : i + 16])]
        assert run_starts, symbols
        starts.add(run_starts[0])
    assert len(starts) > 10 and min(starts) >= KEY_LEN  # the run moves around, never into the key prefix


GENERATING_CLASSES = {  # the class each group's genclass bucket draws from, and its size
    "a5": (lambda s: _moved_points(s) == 3, 20),
    "s5": (lambda s: _moved_points(s) == 2, 10),
    "s3": (lambda s: _moved_points(s) == 2, 3),
    "z60": (lambda s: math.gcd(int(s), 60) == 1, 16),
    "a4xz5": (lambda s: _moved_points(s.split("_")[0]) == 3, 40),
}
GENERATOR_PAIRS = {"a5": {"12340", "12034"}, "s5": {"12340", "10234"}, "s3": {"120", "102"}, "z60": {"4", "15"},
                   "a4xz5": {"1203_1", "1032_0"}}  # fmt: skip


@pytest.mark.parametrize("task", WORD_PROBLEMS)
def test_genclass_uses_only_one_generating_class(task):
    in_class, size = GENERATING_CLASSES[task]
    used = {s for seq in _symbols(task, "genclass") for s in seq}
    assert all(in_class(s) for s in used) and len(used) == size  # all of the class, nothing else
    assert len(_closure(task, used)) == ORDERS[task]


@pytest.mark.parametrize("task", WORD_PROBLEMS)
def test_gen2_uses_two_generators_of_the_whole_group(task):
    used = {s for seq in _symbols(task, "gen2", num_docs=20) for s in seq}
    assert used == GENERATOR_PAIRS[task]
    assert len(_closure(task, used)) == ORDERS[task]
    assert all(len(_closure(task, {g})) < ORDERS[task] for g in used)  # neither alone suffices


SKEWS = {  # (task, bucket): (symbol, share); mod_arith: share among the operators
    ("parity", "ones10"): ("1", 0.1),
    ("parity", "ones90"): ("1", 0.9),
    ("even_pairs", "a90"): ("a", 0.9),
    ("cycle_nav", "stay90"): ("+0", 0.9),
    ("cycle_nav", "fwd90"): ("+1", 0.9),
    ("mod_arith", "plus90"): ("+", 0.9),
    ("mod_arith", "times90"): ("*", 0.9),
}


@pytest.mark.parametrize("task,bucket", SKEWS)
def test_skewed_buckets_draw_their_symbol_at_the_stated_share(task, bucket):
    symbol, share = SKEWS[task, bucket]
    sequences = _symbols(task, bucket)
    if task == "mod_arith":
        numbers = [s for seq in sequences for s in seq[0::2]]
        assert all(abs(numbers.count(str(v)) / len(numbers) - 0.2) < 0.03 for v in range(5))  # still uniform
        sequences = [seq[1::2] for seq in sequences]
        drawn = [s for seq in sequences for s in seq[KEY_LEN // 2 :]]
    else:
        drawn = _tails(sequences)
    assert abs(drawn.count(symbol) / len(drawn) - share) < 0.03
    rest = [s for s in drawn if s != symbol]
    assert len(set(rest)) == len(set(drawn)) - 1  # the other symbols all occur


def test_lengths_of_shifted_buckets_follow_the_options():
    base = {"st_task": "a5", "st_bucket": "ident50", "pretrained": "x"}
    assert make_dataset(**base, st_num_docs=2, st_train_max_len=8)["test"]["length"] == [16, 16]
    assert make_dataset(**base, st_num_docs=2, st_lengths={"ident50": [20, 21]})["test"]["length"][0] in (20, 21)
    # one metadata reaches every task: a bucket of another task is not an error, a misspelt one is
    assert make_dataset(**base, st_num_docs=1, st_lengths={"ones10": 5})["test"]["length"] == [64]
    with pytest.raises(ValueError, match="unknown bucket 'ident5'"):
        make_dataset(**base, st_num_docs=1, st_lengths={"ident5": 5})
    with pytest.raises(ValueError, match="identity run of 16 needs sequences longer than 16"):
        make_docs("a5", "identrun16", num_docs=1, lengths=(16, 16))


def test_p_identity_does_not_reach_shifted_buckets():
    base = {"st_task": "a5", "st_bucket": "ident50", "st_num_docs": 3, "pretrained": "x"}
    assert make_dataset(**base, st_p_identity=0.9)["test"]["input"] == make_dataset(**base)["test"]["input"]
    with pytest.raises(ValueError, match="p_identity does not apply to the shifted bucket 'ident50'"):
        make_docs("a5", "ident50", num_docs=1, p_identity=0.9)
    with pytest.raises(ValueError, match="unknown bucket 'ones10' of task 'a5'"):
        make_docs("a5", "ones10", num_docs=1)


# --- training mixtures ---------------------------------------------------------------------------------


def _batch_hash(batch) -> str:
    return hashlib.sha256(json.dumps([batch["input_ids"].tolist(), batch["labels"].tolist()]).encode()).hexdigest()[:16]


def test_default_training_batches_are_unchanged():
    # the bundled checkpoints were trained on these streams: new options must not move them
    first = training_batches("a5", min_len=1, max_len=40, batch_size=8, seed=1)
    assert _batch_hash(next(first)) == "9be471b67395e3ad"
    p = training_batches("a5xm", min_len=1, max_len=40, batch_size=8, seed=1, p_identity=0.5, start=2)
    assert _batch_hash(next(p)) == "70b1ae54d33bb37a"
    assert _batch_hash(next(training_batches("mod_arith", min_len=1, max_len=40, batch_size=8, seed=1, start=1))) == (
        "f8bd2e0539eae7a6")


def _rows(task: str, batch) -> list[tuple[list[str], list[str]]]:
    from implicit_ssm_eval.tasks.state_tracking import tokenizer_for

    names = {i: s for s, i in tokenizer_for(task).get_vocab().items()}
    rows = []
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        n = sum(i != 0 for i in ids)
        rows.append(([names[i] for i in ids[:n]], [names[i] for i in labels[:n]]))
    return rows


def _identity_share(task: str, symbols: list[str]) -> float:
    return sum(_is_identity(task, s) for s in symbols) / len(symbols)


def test_p_identity_mix_draws_one_share_per_sequence(brute_force_states):
    kwargs = {"min_len": 200, "max_len": 200, "batch_size": 64, "seed": 3, "p_identity_mix": (0.0, 0.9)}
    batches = training_batches("a5", **kwargs)
    batch = next(batches)
    shares = [_identity_share("a5", symbols) for symbols, _ in _rows("a5", batch)]
    low, high = [s for s in shares if s < 0.1], [s for s in shares if s > 0.8]
    assert len(low) + len(high) == len(shares) and len(low) > 15 and len(high) > 15
    assert all(labels == brute_force_states("a5", symbols) for symbols, labels in _rows("a5", batch))
    third = next(batches) and next(batches)
    assert _batch_hash(next(training_batches("a5", **kwargs, start=2))) == _batch_hash(third)  # resumable
    assert _batch_hash(next(training_batches("a5", **kwargs))) == _batch_hash(batch)  # deterministic


def _longest_identity_run(task: str, symbols: list[str]) -> int:
    return max((len(list(g)) for is_id, g in itertools.groupby(symbols, lambda s: _is_identity(task, s)) if is_id),
               default=0)  # fmt: skip


def test_p_identity_run_inserts_runs_of_identities(brute_force_states):
    kwargs = {"min_len": 32, "max_len": 32, "batch_size": 200, "seed": 0}
    plain = _rows("s3", next(training_batches("s3", **kwargs)))
    runs = _rows("s3", next(training_batches("s3", **kwargs, p_identity_run=1.0)))
    mean_plain = sum(_longest_identity_run("s3", s) for s, _ in plain) / len(plain)
    mean_runs = sum(_longest_identity_run("s3", s) for s, _ in runs) / len(runs)
    assert mean_plain < 2 and mean_runs > 7  # runs of 1..16 identities: 8.5 on average
    assert max(_longest_identity_run("s3", s) for s, _ in runs) >= 16
    assert all(labels == brute_force_states("s3", symbols) for symbols, labels in runs)


@pytest.mark.parametrize("options", [{"p_identity_mix": (0.0, 0.5, 0.9)}, {"p_identity_run": 1.0},
                                     {"p_identity_mix": (0.9,), "p_identity_run": 0.5}])  # fmt: skip
def test_training_mixtures_keep_out_held_out_prefixes(options):
    batch = next(training_batches("a5", min_len=13, max_len=40, batch_size=300, seed=0, **options))
    assert not any(in_heldout_partition(TASKS["a5"].partition_key(symbols)) for symbols, _ in _rows("a5", batch))


def test_training_mixture_options_are_checked():
    common = {"min_len": 1, "max_len": 4, "batch_size": 1, "seed": 0}
    with pytest.raises(ValueError, match="p_identity applies to tasks with a group part"):
        next(training_batches("parity", **common, p_identity_mix=(0.5,)))
    with pytest.raises(ValueError, match="not both"):
        next(training_batches("a5", **common, p_identity=0.5, p_identity_mix=(0.5,)))
    with pytest.raises(ValueError, match="p_identity_mix must be a non-empty tuple"):
        next(training_batches("a5", **common, p_identity_mix=()))
    with pytest.raises(ValueError, match=r"p_identity_run must be a number in \[0, 1\]"):
        next(training_batches("a5", **common, p_identity_run=1.5))
    with pytest.raises(ValueError, match="has no identity element"):
        next(training_batches("cycle_nav", **common, p_identity_run=0.5))
