"""The pydoc family: shipped data and tokenizer, buckets in corpus tokens, cloze items, packing, lm-eval YAMLs."""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import re
import shutil

import numpy as np
import pytest
import torch

from implicit_ssm_eval.tasks.common import data_hash
from implicit_ssm_eval.tasks.registry import families, family_for_task, family_of
from implicit_ssm_eval.tasks.text import heldout, make_yamls, packing, shipped
from implicit_ssm_eval.tasks.text.corpus import DATA_DIR, CorpusError
from implicit_ssm_eval.tasks.text.heldout import BUCKETS, make_docs
from implicit_ssm_eval.tasks.yaml_writer import regenerate

MULTIPLIER = {"id": 1, "ood2x": 2, "ood4x": 4, "ood8x": 8}


@pytest.fixture(scope="module")
def tokenizer():
    return shipped.corpus_tokenizer()


def _count(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


# --- shipped data and tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_special_tokens(tokenizer):
    assert [tokenizer.id_to_token(i) for i in range(3)] == ["<pad>", "<unk>", "<eos>"]
    assert tokenizer.get_vocab_size() == 4096
    for text in ["naïve café – “quotes” 🙂\n\n\tcode(x) = 3.14", shipped.held_out("validation")[0]["text"]]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert 1 not in ids and tokenizer.decode(ids) == text  # byte level: nothing is unknown
    assert tokenizer.encode("a<eos>b").ids[1] == 2  # the end-of-text token is one special token


def test_manifest_matches_the_shipped_files(tokenizer):
    manifest = shipped.manifest()
    for split in ("validation", "test"):
        raw = lzma.decompress((DATA_DIR / f"{split}.jsonl.xz").read_bytes())
        record = manifest["splits"][split]
        assert hashlib.sha256(raw).hexdigest() == record["sha256"]
        docs = shipped.held_out(split)
        assert len(docs) == record["documents"] and sum(len(d["text"].encode()) for d in docs) == record["bytes"]
        assert sum(_count(tokenizer, d["text"]) for d in docs) == record["tokens"]
    assert manifest["splits"]["validation"]["bytes_per_token"] > 3.5  # the BPE pays for itself on English prose
    names = [d["name"] for split in ("validation", "test") for d in shipped.held_out(split)]
    assert len(names) == len(set(names))  # split by page: no page in two splits


def test_a_changed_shipped_file_is_refused(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data)
    docs = [json.loads(line) for line in lzma.decompress((data / "test.jsonl.xz").read_bytes()).splitlines()]
    docs[0]["text"] += " changed"
    changed = "".join(json.dumps(d, sort_keys=True, ensure_ascii=False) + "\n" for d in docs)
    (data / "test.jsonl.xz").write_bytes(lzma.compress(changed.encode()))
    with pytest.raises(CorpusError, match="test.jsonl.xz does not match the SHA-256"):
        shipped.held_out("test", data)
    (data / "tokenizer.json").write_text((data / "tokenizer.json").read_text().replace('"<eos>"', '"<EOS>"'))
    with pytest.raises(CorpusError, match="tokenizer.json does not match"):
        shipped.corpus_tokenizer(data)
    with pytest.raises(CorpusError, match="shipped splits are"):
        shipped.held_out("train")


# --- the family -------------------------------------------------------------------------------------------------


def test_registration_names_and_chance():
    family = families()["pydoc"]
    assert "pydoc" in families() and family_for_task("cloze") is family
    assert (family.prefix, family.group, family.options_prefix, family.num_docs_option) == (
        "pydoc", "pydoc", "pydoc_", "pydoc_num_docs")  # fmt: skip
    assert family.tasks == ("ppl", "cloze") and family.buckets("ppl") == BUCKETS
    assert family_of("pydoc_cloze_ood8x") == (family, "cloze", "ood8x")
    assert family.train_max_len("ppl") == 256
    for bucket in BUCKETS:
        info = family.bucket_info("ppl", bucket)
        assert info.lengths == (256 * MULTIPLIER[bucket] - 32, 256 * MULTIPLIER[bucket])
        assert info.multiplier == MULTIPLIER[bucket] and info.shift is None
    assert math.isnan(family.chance("ppl"))
    targets = {d["target"] for d in make_docs("cloze", "id", num_docs=10**6)}
    assert family.chance("cloze") == pytest.approx(1 / len(targets)) and len(targets) > 100
    assert family.tokenizer_for("cloze").get_vocab() == shipped.corpus_tokenizer().get_vocab()


@pytest.mark.parametrize("bucket", BUCKETS)
def test_windows_have_their_bucket_length_in_tokens(bucket, tokenizer):
    lo, hi = heldout.bucket_lengths()[bucket]
    pages = {d["name"]: d["text"] for d in shipped.held_out("test")}
    docs = make_docs("ppl", bucket, num_docs=12)
    assert len(docs) == 12
    for doc in docs:
        assert lo <= doc["length"] == _count(tokenizer, doc["text"]) <= hi
        assert doc["n_bytes"] == len(doc["text"].encode())
        page = pages[doc["source"]]
        start = page.index(doc["text"])
        assert start == 0 or page[start - 2 : start] == "\n\n"  # a window starts at a paragraph
        end = start + len(doc["text"])
        assert end == len(page) or page[end].isspace()  # and ends at a word's end
        assert (doc["family"], doc["task"], doc["bucket"], doc["chance"]) == ("pydoc", "ppl", bucket, None)
    spans = sorted((w["source"], w["start"], w["start"] + len(w["text"])) for w in heldout.windows("test", hi))
    assert all(a[0] != b[0] or a[2] <= b[1] for a, b in zip(spans, spans[1:]))  # no two windows overlap


def test_leaderboard_sizes():
    assert min(len(heldout.windows("test", 256 * k)) for k in (1, 2, 4, 8)) >= 100
    assert len(heldout.cloze_items("test")) >= 500


def test_cloze_items(tokenizer):
    pages = {d["name"]: d["text"] for d in shipped.held_out("test")}
    by_bucket = {bucket: make_docs("cloze", bucket, num_docs=20) for bucket in BUCKETS}
    for i, doc in enumerate(by_bucket["id"]):
        lo, hi = heldout.bucket_lengths()["id"]
        assert lo <= doc["length"] == _count(tokenizer, doc["input"] + " " + doc["target"]) <= hi
        page = pages[doc["source"]]
        end = page.index(doc["input"] + " " + doc["target"]) + len(doc["input"]) + 1 + len(doc["target"])
        assert re.match(r"[.!?](\n\n|$)", page[end : end + 3])  # the last word of a paragraph
        sentence = re.split(r"[.!?][\"')\]]*\s", doc["input"])[-1]
        before = doc["input"][: len(doc["input"]) - len(sentence)]
        assert re.search(rf"\b{doc['target']}\b", before)  # it occurs before its own sentence
        assert page.index(doc["input"]) > 0 and _count(tokenizer, page[: end]) > 8 * 256
        for bucket in BUCKETS[1:]:  # the same item, more context
            other = by_bucket[bucket][i]
            assert (other["source"], other["target"]) == (doc["source"], doc["target"])
            assert other["input"].endswith(doc["input"]) and len(other["input"]) > len(doc["input"])
            lo, hi = heldout.bucket_lengths()[bucket]
            assert lo <= other["length"] == _count(tokenizer, other["input"] + " " + other["target"]) <= hi


def test_docs_are_deterministic_and_hashed():
    docs = make_docs("cloze", "ood2x", num_docs=8)
    assert docs == make_docs("cloze", "ood2x", num_docs=8)
    assert make_docs("cloze", "ood2x", num_docs=4) == [{**d, "data_hash": make_docs("cloze", "ood2x", num_docs=4)[0][
        "data_hash"]} for d in docs[:4]]  # fmt: skip
    assert docs[0]["data_hash"] == data_hash(docs, ("source", "input", "target", "length"))
    other = make_docs("cloze", "ood2x", num_docs=8, seed=1)
    assert [d["input"] for d in other] != [d["input"] for d in docs] and other[0]["data_hash"] != docs[0]["data_hash"]
    valid = make_docs("ppl", "id", num_docs=3, split="validation")
    names = {d["name"] for d in shipped.held_out("validation")}
    assert all(d["source"] in names for d in valid)
    longer = make_docs("ppl", "id", num_docs=2, train_max_len=128)
    assert all(96 <= d["length"] <= 128 for d in longer)


def test_bad_requests():
    with pytest.raises(ValueError, match="unknown pydoc task 'lambada'"):
        make_docs("lambada", "id")
    with pytest.raises(ValueError, match="unknown bucket 'ood3x'"):
        make_docs("ppl", "ood3x")
    with pytest.raises(ValueError, match="num_docs must be an integer >= 1"):
        make_docs("ppl", "id", num_docs=0)


def test_generated_yamls_and_fingerprints_are_fresh():
    problems = regenerate(make_yamls.YAML_DIR, make_yamls.FINGERPRINTS, make_yamls.yaml_files(),
                          make_yamls.fingerprints(), module=make_yamls.MODULE, check=True)  # fmt: skip
    assert not problems, "\n".join(problems)


# --- packing ----------------------------------------------------------------------------------------------------


def _stream(n: int = 1000) -> np.ndarray:
    return (np.arange(n) * 7 % 4096).astype("<u2")  # every window of it is distinct


def test_packed_rows_are_slices_of_the_stream_shifted_by_one():
    tokens = _stream()
    position = {int(value): i for i, value in enumerate(tokens)}  # the values are distinct
    batch = next(packing._batches(tokens, 16, 8, seed=0, batch=0))
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape == (8, 16) and ids.dtype == labels.dtype == torch.long
    starts = [position[int(row[0])] for row in ids]
    assert len(set(starts)) == 8
    for row, label, start in zip(ids, labels, starts):
        assert row.tolist() == tokens[start : start + 16].tolist()
        assert label.tolist() == tokens[start + 1 : start + 17].tolist()  # the next token at every position


def test_packing_is_deterministic_resumable_and_covers_each_epoch():
    tokens, length, batch_size = _stream(), 16, 4
    first = packing._batches(tokens, length, batch_size, seed=3, batch=0)
    run = [next(first) for _ in range(40)]
    resumed = next(packing._batches(tokens, length, batch_size, seed=3, batch=17))
    assert torch.equal(resumed["input_ids"], run[17]["input_ids"])
    other = next(packing._batches(tokens, length, batch_size, seed=4, batch=0))
    assert not torch.equal(other["input_ids"], run[0]["input_ids"])
    epochs = packing._Epochs(len(tokens), length, seed=3)
    rows = epochs.rows
    assert rows == (1000 - 16) // 16
    for epoch in range(3):
        starts = [epochs.row_start(epoch * rows + r) for r in range(rows)]
        offset = min(starts)
        assert sorted(starts) == [offset + r * length for r in range(rows)] and offset < length
        assert max(starts) + length + 1 <= len(tokens)


def test_training_batches_through_the_registry(tmp_path):
    family = families()["pydoc"]
    path = tmp_path / "tokens.bin"
    _stream().tofile(path)
    with pytest.raises(CorpusError, match="not the training stream of the shipped tokenizer"):
        next(family.training_batches("ppl", min_len=1, max_len=16, batch_size=2, seed=0, tokens_path=path))
    with pytest.raises(CorpusError, match="not found: build them with `python -m implicit_ssm_eval.tasks.text"):
        family.training_batches("ppl", min_len=1, max_len=16, batch_size=2, seed=0, tokens_path=tmp_path / "no")
    with pytest.raises(ValueError, match="min_len \\(32\\) must be <= max_len \\(16\\)"):
        family.training_batches("ppl", min_len=32, max_len=16, batch_size=2, seed=0, tokens_path=path)
    with pytest.raises(ValueError, match="takes only the option tokens_path"):
        family.training_batches("ppl", min_len=1, max_len=16, batch_size=2, seed=0, p_identity=0.5)


@pytest.mark.skipif(not packing.TOKENS_FILE.exists(), reason="the training tokens are built, not shipped")
def test_the_built_training_tokens():
    tokens = packing.load_tokens()
    assert tokens[0] == 2 and len(tokens) == shipped.manifest()["train_tokens"]["count"]
    batch = next(families()["pydoc"].training_batches("cloze", min_len=1, max_len=256, batch_size=2, seed=0))
    assert batch["input_ids"].shape == (2, 256) and int(batch["input_ids"].max()) < 4096
