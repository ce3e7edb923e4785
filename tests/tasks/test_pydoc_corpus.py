"""The pydoc corpus build: reST cleaning, and the whole script on a tiny stand-in .deb built here with dpkg-deb."""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from implicit_ssm_eval.tasks.text import corpus
from implicit_ssm_eval.tasks.text.corpus import BuildConfig, CorpusError, Source, build, dedup_key
from implicit_ssm_eval.tasks.text.rst_clean import rst_to_paragraphs, section_labels

PAGE = """\
.. _intro-label:

*****************
The Little Module
*****************

.. module:: little
   :synopsis: A module.

.. index:: single: little

This module keeps *small* things, as :func:`~little.keep` and :class:`Box` do;
see :pep:`8` and :ref:`intro-label` (or :ref:`the start <intro-label>`).

For example::

   secret_code = 1   # never in the corpus

.. code-block:: python

   another_secret = 2

>>> doctest_secret = 3

.. function:: keep(thing, *, size=1)

   Keep **thing** in a ``Box``.

   .. versionchanged:: 3.4
      The *size* argument was added.

.. note::
   Notes are prose too.

=======  ==========
table    secret
=======  ==========

* first item
* second item
  continues here

.. This is a comment about secret things.
"""


def test_rst_to_paragraphs():
    paragraphs = rst_to_paragraphs(PAGE, section_labels({"page": PAGE}))
    assert paragraphs == [
        "The Little Module",
        "This module keeps small things, as keep() and Box do; see PEP 8 and The Little Module (or the start).",
        "For example:",
        "Keep thing in a Box.",
        "Changed in version 3.4: The size argument was added.",
        "Notes are prose too.",
        "* first item\n* second item continues here",
    ]


def test_rst_literals_and_substitutions():
    text = "Use ``*args`` and ``a\\b`` with |release|; a literal ``::`` stays.\n\nThe end ::\n\n   code\n"
    assert rst_to_paragraphs(text, substitutions={"release": "3.11.2"}) == [
        "Use *args and a\\b with 3.11.2; a literal :: stays.", "The end"]


# --- the build on a stand-in package ---------------------------------------------------------------------------

SOURCES = "usr/share/doc/fake/html/_sources"
SHARED = ("This paragraph is shared by two pages, so the de-duplication must keep only one copy of it "
          "in the whole corpus.")  # fmt: skip
TOPICS = ["apples", "boats", "clocks", "doors", "engines", "forests", "gardens", "houses", "islands", "jackets",
          "kettles", "lamps", "mountains", "needles"]  # fmt: skip


def _page(topic: str, k: int) -> str:
    title = f"All about {topic}"
    body = "\n\n".join(
        f"The {topic} of chapter {j} are described here in plain words, and every sentence about {topic} is "
        f"different from the ones about other things, number {k * 10 + j}." for j in range(6))  # fmt: skip
    extra = SHARED if topic in ("apples", "boats") else ""
    extra += "\n\nNew in version 3.3." if topic in ("clocks", "doors") else ""  # short: may repeat
    if topic == "engines":  # a near copy of the shared paragraph: other case and punctuation
        extra += "\n\n" + SHARED.upper().replace(",", " ;")
    return f"{title}\n{'=' * len(title)}\n\n{body}\n\n{extra}\n\nAn example::\n\n   secret_code = 1\n"


def _fake_package(root: Path) -> tuple[Path, dict[str, str]]:
    """A .deb like python3.11-doc's: pages under _sources, a copyright file, one page to exclude."""
    tree = root / "pkg"
    pages = {f"section/{topic}.rst.txt": _page(topic, k) for k, topic in enumerate(TOPICS)}
    pages["license.rst.txt"] = "Licence\n=======\n\nThis page is excluded from the corpus entirely, always.\n"
    for name, text in pages.items():
        (tree / SOURCES / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / SOURCES / name).write_text(text)
    (tree / "usr/share/doc/fake-doc").mkdir(parents=True)
    (tree / "usr/share/doc/fake-doc/copyright").write_text("Fake licence: redistribute freely.\n")
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN/control").write_text("Package: fake-doc\nVersion: 1.0-1\nArchitecture: all\n"
                                         "Maintainer: Nobody <nobody@example.org>\nDescription: a test\n")  # fmt: skip
    deb = root / "fake-doc_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(tree), str(deb)], check=True,
                   capture_output=True)  # fmt: skip
    return deb, pages


def _source(deb: Path) -> Source:
    return Source(package="fake-doc", version="1.0-1", sha256=corpus.sha256_file(deb), sources_dir=SOURCES,
                  copyright_file="usr/share/doc/fake-doc/copyright", licence="Fake", exclude=("license.rst.txt",))


CONFIG = BuildConfig(vocab_size=320, min_frequency=2, test_percent=30, validation_percent=20, min_doc_bytes=50)
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin")
    deb, pages = _fake_package(root)
    manifest = build(deb, root / "data", root / "train", _source(deb), CONFIG)
    return root, deb, pages, manifest


def _split_by_hand(name: str) -> str:
    bucket = int(hashlib.sha256(f"pydoc-split/{name}".encode()).hexdigest()[:16], 16) % 100
    return "test" if bucket < 30 else "validation" if bucket < 50 else "train"


def _docs(root: Path, split: str) -> list[dict]:
    folder = root / ("train" if split == "train" else "data")
    raw = lzma.decompress((folder / f"{split}.jsonl.xz").read_bytes())
    return [json.loads(line) for line in raw.decode().splitlines()]


@needs_dpkg
def test_splits_by_page_name_without_code_or_excluded_pages(stand_in):
    root, _, pages, manifest = stand_in
    names = {split: [d["name"] for d in _docs(root, split)] for split in corpus.SPLITS}
    assert sorted(sum(names.values(), [])) == sorted(n for n in pages if n != "license.rst.txt")
    for split, found in names.items():
        assert found and all(_split_by_hand(name) == split for name in found), split
        assert manifest["splits"][split]["documents"] == len(found)
    text = " ".join(d["text"] for split in corpus.SPLITS for d in _docs(root, split))
    assert "secret_code" not in text and "excluded" not in text and "An example:" in text


@needs_dpkg
def test_exact_and_near_duplicates_are_dropped_short_paragraphs_kept(stand_in):
    root, _, _, manifest = stand_in
    paragraphs = [p for split in corpus.SPLITS for d in _docs(root, split) for p in d["text"].split("\n\n")]
    assert sum(dedup_key(p) == dedup_key(SHARED) for p in paragraphs) == 1
    assert paragraphs.count("New in version 3.3.") == 2  # fewer than 8 words: not de-duplicated
    assert manifest["build"]["duplicate_paragraphs_dropped"] == 2  # the second copy and the near copy


@needs_dpkg
def test_manifest_hashes_name_the_files(stand_in):
    root, deb, _, manifest = stand_in
    assert manifest["source"]["sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    for split in corpus.SPLITS:
        folder = root / ("train" if split == "train" else "data")
        raw = lzma.decompress((folder / f"{split}.jsonl.xz").read_bytes())
        assert manifest["splits"][split]["sha256"] == hashlib.sha256(raw).hexdigest()
    tokenizer_file = root / "data" / "tokenizer.json"
    assert manifest["tokenizer"]["sha256"] == hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()
    tokens = (root / "train" / "train_tokens.bin").read_bytes()
    assert manifest["train_tokens"]["sha256"] == hashlib.sha256(tokens).hexdigest()
    assert (root / "data" / "COPYRIGHT").read_text() == "Fake licence: redistribute freely.\n"
    assert json.loads((root / "data" / "MANIFEST.json").read_text()) == manifest


@needs_dpkg
def test_train_tokens_are_the_train_pages_each_after_eos(stand_in):
    root, _, _, manifest = stand_in
    tokenizer = Tokenizer.from_file(str(root / "data" / "tokenizer.json"))
    assert [tokenizer.id_to_token(i) for i in range(3)] == ["<pad>", "<unk>", "<eos>"]
    assert tokenizer.get_vocab_size() == CONFIG.vocab_size
    stream = np.fromfile(root / "train" / "train_tokens.bin", dtype="<u2").tolist()
    assert len(stream) == manifest["train_tokens"]["count"]
    pieces, current = [], None
    for token in stream:
        if token == 2:
            current = []
            pieces.append(current)
        else:
            current.append(token)
    assert stream[0] == 2
    assert [tokenizer.decode(p) for p in pieces] == [d["text"] for d in _docs(root, "train")]


@needs_dpkg
def test_the_build_is_deterministic_and_checks_the_deb(stand_in, tmp_path):
    root, deb, _, manifest = stand_in
    again = build(deb, tmp_path / "data", tmp_path / "train", _source(deb), CONFIG)
    assert corpus.compare_manifests(manifest, again) == []
    assert (tmp_path / "data" / "tokenizer.json").read_bytes() == (root / "data" / "tokenizer.json").read_bytes()
    wrong = Source(**{**_source(deb).__dict__, "sha256": "0" * 64})
    with pytest.raises(CorpusError, match="is not the pinned 0000"):
        build(deb, tmp_path / "x", tmp_path / "y", wrong, CONFIG)
    with pytest.raises(CorpusError, match="no such file"):
        build(tmp_path / "missing.deb", tmp_path / "x", tmp_path / "y", _source(deb), CONFIG)
    changed = {**again, "splits": {**again["splits"], "test": {**again["splits"]["test"], "sha256": "x"}}}
    assert corpus.compare_manifests(manifest, changed)[0].startswith("splits: shipped")


def test_the_pinned_source_is_the_shipped_one():
    shipped = json.loads((corpus.DATA_DIR / "MANIFEST.json").read_text())
    assert shipped["source"]["package"] == corpus.PYTHON_DOC.package == "python3.11-doc"
    assert shipped["source"]["version"] == corpus.PYTHON_DOC.version
    assert shipped["source"]["sha256"] == corpus.PYTHON_DOC.sha256
    assert shipped["build"]["config"] == BuildConfig().__dict__
    assert shipped["format_version"] == corpus.FORMAT_VERSION


def test_the_command_line_refuses_another_deb(tmp_path, capsys):
    deb = tmp_path / "python3.11-doc_3.11.2-6+deb12u9_all.deb"
    deb.write_bytes(b"not the package")
    assert corpus.main(["--deb", str(deb), "--out", str(tmp_path / "d"), "--train-out", str(tmp_path / "t")]) == 2
    assert f"SHA-256 {hashlib.sha256(b'not the package').hexdigest()} is not the pinned" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
