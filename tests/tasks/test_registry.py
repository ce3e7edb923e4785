"""The task-family registry: names round-trip, buckets and their lengths, and each family's functions."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from implicit_ssm_eval.tasks import babi, registry, state_tracking
from implicit_ssm_eval.tasks.babi import make_yamls as babi_yamls
from implicit_ssm_eval.tasks.registry import (
    BucketInfo,
    Family,
    UnknownTaskError,
    families,
    family_for_task,
    family_of,
    register_family,
)
from implicit_ssm_eval.tasks.state_tracking import make_yamls as st_yamls


def test_the_builtin_families():
    found = families()
    assert list(found) == ["state_tracking", "babi", "text", "pydoc", "controls"]
    st, bb, text, pydoc, ctl = found.values()
    def names(family: Family) -> tuple:
        return family.prefix, family.group, family.options_prefix, family.num_docs_option

    assert names(st) == ("st", "state_tracking", "st_", "st_num_docs")
    assert names(bb) == ("babi_gen", "babi_gen", "babi_", "babi_num_docs")
    assert names(text) == ("ppl", "ppl_local_text", "ppl_", None) and text.tasks == ("local_text",)
    assert names(pydoc) == ("pydoc", "pydoc", "pydoc_", "pydoc_num_docs") and pydoc.tasks == ("ppl", "cloze")
    assert names(ctl) == ("ctl", "controls", "ctl_", "ctl_num_docs")
    assert st.tasks == tuple(state_tracking.TASKS) and bb.tasks == tuple(babi.TASKS)


def test_importing_the_registry_imports_no_family():
    code = ("import sys, implicit_ssm_eval.tasks.registry\n"
            "heavy = ('implicit_ssm_eval.tasks.', 'tokenizers', 'torch')\n"
            "print(sorted(m for m in sys.modules if m.startswith(heavy)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['implicit_ssm_eval.tasks.registry']"


def test_names_round_trip_for_every_task_and_bucket():
    for family in families().values():
        for task in family.tasks:
            assert family.parse(family.lm_eval_name(task)) == (task, None)
            assert family_of(family.lm_eval_name(task)) == (family, task, None)
            for bucket in family.buckets(task):
                name = family.lm_eval_name(task, bucket)
                assert family.parse(name) == (task, bucket)
                assert family_of(name) == (family, task, bucket)
    assert family_of("st_even_pairs_a90")[1:] == ("even_pairs", "a90")  # task names may hold "_"
    assert family_of("babi_gen_qa19_ood2x")[1:] == ("qa19", "ood2x")  # qa1 is a prefix of qa19


@pytest.mark.parametrize("name", ["st_s4_id", "st_a5_ood3x", "st_a5_ones10", "st_a5_id_x", "babi_gen_qa4", "ppl_x",
                                  "babi_gen_qa1_ood8x", "state_tracking", "babi_gen", "wikitext", "st_", ""])
def test_names_that_are_not_ours_parse_to_none(name):
    assert family_of(name) is None


def test_every_generated_yaml_names_a_registered_task():
    for module, family in ((st_yamls, "state_tracking"), (babi_yamls, "babi")):
        for file in module.yaml_files():
            name = Path(file).stem
            if name.startswith("_") or name == families()[family].group:
                continue
            assert family_of(name)[0].name == family, name


def test_lm_eval_name_rejects_unknown_tasks_and_buckets():
    st = families()["state_tracking"]
    assert st.lm_eval_name("a5") == "st_a5" and st.lm_eval_name("a5", "ident50") == "st_a5_ident50"
    with pytest.raises(UnknownTaskError, match=r"unknown state_tracking task 's4'; valid tasks are \['s5'"):
        st.lm_eval_name("s4")
    with pytest.raises(UnknownTaskError, match="unknown bucket 'ones10' of state_tracking task 'a5'; valid buckets"):
        st.lm_eval_name("a5", "ones10")


def test_family_for_task():
    assert family_for_task("a5").name == "state_tracking" and family_for_task("qa1").name == "babi"
    assert family_for_task("local_text").name == "text"
    with pytest.raises(UnknownTaskError, match=r"unknown task 'qa4'; valid tasks are .*'babi': \['qa1'"):
        family_for_task("qa4")


def test_state_tracking_buckets():
    st = families()["state_tracking"]
    assert st.buckets("a5") == ("id", "ood2x", "ood4x", "ood8x", "ident50", "identrun16", "genclass", "gen2")
    assert st.length_buckets("parity") == ("id", "ood2x", "ood4x", "ood8x")
    assert st.shift_buckets("parity") == ("ones10", "ones90")
    for task in st.tasks:
        length = st.train_max_len(task)
        assert length == state_tracking.TASKS[task].train_max_len
        for bucket in st.buckets(task):
            info = st.bucket_info(task, bucket)
            assert info.name == bucket and info.description
            assert info.lengths == state_tracking.bucket_lengths(task)[bucket]
            if info.shift is None:  # a length bucket: oodKx is K times the training length
                assert info.multiplier is not None and info.lengths[1] == info.multiplier * length
            else:  # a shifted bucket: no multiplier, at twice the training length
                assert info.multiplier is None and info.lengths == (2 * length, 2 * length)
    assert st.bucket_info("a5", "ident50").shift == "identity share 0.5"
    assert st.bucket_info("a5", "id") == BucketInfo("id", (1, 32), 1.0, None, "in distribution: the training lengths")


def test_babi_and_text_buckets():
    bb, text = families()["babi"], families()["text"]
    assert bb.buckets("qa2") == ("id", "ood2x", "ood4x")
    assert [bb.bucket_info("qa2", b).lengths for b in bb.buckets("qa2")] == [(4, 16), (17, 32), (33, 64)]
    assert [bb.bucket_info("qa2", b).multiplier for b in bb.buckets("qa2")] == [1.0, 2.0, 4.0]
    assert bb.train_max_len("qa2") == 16
    assert text.buckets("local_text") == () and text.lm_eval_name("local_text") == "ppl_local_text"
    with pytest.raises(UnknownTaskError, match="unknown bucket 'id' of text task 'local_text'"):
        text.bucket_info("local_text", "id")
    with pytest.raises(ValueError, match="no training length"):
        text.train_max_len("local_text")


def test_chance():
    st, bb, text = (families()[name] for name in ("state_tracking", "babi", "text"))
    assert st.chance("a5") == pytest.approx(1 / 60) and st.chance("parity") == 0.5
    assert bb.chance("qa6") == 0.5 and bb.chance("cat") == babi.TASKS["cat"].chance
    assert math.isnan(text.chance("local_text"))


def test_tokenizers(tmp_path):
    st, bb, text = (families()[name] for name in ("state_tracking", "babi", "text"))
    assert st.tokenizer_for("s3").get_vocab() == state_tracking.tokenizer_for("s3").get_vocab()
    assert bb.tokenizer_for("qa1").get_vocab() == babi.tokenizer_for("qa1").get_vocab()
    path = st.write_tokenizer("parity", tmp_path / "t" / "tokenizer.json")
    assert Tokenizer.from_file(str(path)).get_vocab() == state_tracking.tokenizer_for("parity").get_vocab()
    with pytest.raises(ValueError, match="the text family has no task tokenizer"):
        text.tokenizer_for("local_text")


def _same(a: dict, b: dict) -> bool:
    return torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_training_batches_through_the_registry():
    st, bb, text = (families()[name] for name in ("state_tracking", "babi", "text"))
    common = {"min_len": 2, "max_len": 9, "batch_size": 4, "seed": 1}
    mine = st.training_batches("a5", **common, start=1, p_identity_mix=(0.0, 0.5))
    assert _same(next(mine), next(state_tracking.training_batches("a5", **common, start=1, p_identity_mix=(0.0, 0.5))))
    direct = babi.training_batches("qa1", **common)
    next(direct)
    assert _same(next(bb.training_batches("qa1", **common, start=1)), next(direct))  # resumable
    with pytest.raises(ValueError, match="bAbI training takes no options"):
        bb.training_batches("qa1", **common, p_identity=0.5)
    with pytest.raises(ValueError, match="the text family has no training data"):
        text.training_batches("local_text", **common)
    with pytest.raises(UnknownTaskError, match="unknown babi task 'a5'"):
        bb.training_batches("a5", **common)


def _family(name: str, prefix: str, tasks: tuple[str, ...], bucket: str = "id") -> Family:
    info = BucketInfo(bucket, (1, 4), 1.0, None, "one bucket")
    return Family(name, prefix, f"{prefix}_all", tasks, f"{prefix}_", None, lambda task: (info,),
                  lambda task: 0.5, lambda task: 4, None, None)  # fmt: skip


def test_register_family(monkeypatch):
    monkeypatch.setattr(registry, "_FAMILIES", families())  # keep the module's registry clean
    new = register_family(_family("toy", "toy", ("flip",)))
    assert families()["toy"] is new and family_of("toy_flip_id") == (new, "flip", "id")
    assert family_for_task("flip") is new
    with pytest.raises(ValueError, match="same prefix as the registered 'state_tracking'"):
        register_family(_family("toy2", "st", ("flop",)))
    with pytest.raises(ValueError, match="same task names as the registered 'state_tracking'"):
        register_family(_family("toy3", "toy3", ("a5",)))
    with pytest.raises(ValueError, match="bucket names of family 'toy4' must not contain '_'"):
        register_family(_family("toy4", "toy4", ("flap",), bucket="ood_2x"))
