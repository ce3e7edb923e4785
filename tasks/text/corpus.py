"""Build the pydoc corpus: English prose of the Python 3.11 documentation, from a pinned Debian package.

    python -m implicit_ssm_eval.tasks.text.corpus --download        # apt-get download the pinned .deb, then build
    python -m implicit_ssm_eval.tasks.text.corpus --deb FILE.deb    # build from a .deb already here
    python -m implicit_ssm_eval.tasks.text.corpus --download --check  # rebuild elsewhere, compare with the shipped

Steps, each deterministic: verify the .deb's SHA-256; extract it with ``dpkg-deb -x``; turn every Sphinx page
source (``_sources/**/*.rst.txt``) into prose paragraphs (``rst_clean``); drop repeated paragraphs (exact and
near-exact: the same after case folding and ignoring everything but letters and digits); split the pages,
whole, into train / validation / test by a hash of their names; train a byte-level BPE tokenizer on the train
split; write the shipped files (``--out``, default ``tasks/text/data``: the validation and test text, the
tokenizer, the package's copyright file and MANIFEST.json with every hash) and the training tokens (``--train-out``,
default ``runs/text``, git-ignored: ``train_tokens.bin``, uint16, documents each preceded by ``<eos>``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..common import SPECIAL_TOKENS
from .rst_clean import rst_to_paragraphs, section_labels

MODULE = "implicit_ssm_eval.tasks.text.corpus"
DATA_DIR = Path(__file__).parent / "data"
REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_DIR = REPO_ROOT / "runs" / "text"
SPLITS = ("train", "validation", "test")
SHIPPED_SPLITS = ("validation", "test")
EOS = SPECIAL_TOKENS[2]
TOKEN_DTYPE = "uint16"  # little-endian; the vocabulary is far below 65536
FORMAT_VERSION = 1  # bump when the cleaning, de-duplication, split or tokenizer training changes


class CorpusError(ValueError):
    """A source, a file or an option the corpus build cannot use."""


@dataclass(frozen=True)
class Source:
    """A Debian package and what in it is the corpus."""

    package: str
    version: str
    sha256: str  # of the .deb
    sources_dir: str  # inside the package: the Sphinx page sources
    copyright_file: str  # inside the package: its licence text, shipped beside the corpus
    licence: str  # the licence's name, as the copyright file gives it
    exclude: tuple[str, ...] = ()  # pages (relative to sources_dir) that are not prose of the docs
    substitutions: dict[str, str] = field(default_factory=dict)  # reST |name| values
    suffix: str = ".rst.txt"

    @property
    def deb_name(self) -> str:
        return f"{self.package}_{self.version.split(':')[-1]}_all.deb"


PYTHON_DOC = Source(
    package="python3.11-doc",
    version="3.11.2-6+deb12u9",
    sha256="5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
    sources_dir="usr/share/doc/python3.11/html/_sources",
    copyright_file="usr/share/doc/python3.11-doc/copyright",
    licence="PSF License Agreement (Python Software Foundation License Version 2)",
    exclude=("license.rst.txt", "copyright.rst.txt", "contents.rst.txt", "includes/"),
    substitutions={"version": "3.11", "release": "3.11.2", "nbsp": "\u00a0", "thin": "\u2009"},
)


@dataclass(frozen=True)
class BuildConfig:
    vocab_size: int = 4096  # with the three special tokens and the 256 bytes
    min_frequency: int = 2  # of a merge in the train split
    test_percent: int = 22  # of the pages (by name hash), not of the bytes: >= 100 windows of 2048 tokens
    validation_percent: int = 5
    min_doc_bytes: int = 200  # pages shorter than this after cleaning are dropped
    dedup_min_words: int = 8  # shorter paragraphs (titles, "New in version 3.3.") may repeat


# --- source ----------------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_deb(source: Source, folder: Path) -> Path:
    """``apt-get download`` the pinned version into ``folder`` (kept: a second call finds it there)."""
    folder.mkdir(parents=True, exist_ok=True)
    deb = folder / source.deb_name
    if not deb.exists():
        spec = f"{source.package}={source.version}"
        done = subprocess.run(["apt-get", "download", spec], cwd=folder, capture_output=True, text=True)
        if done.returncode != 0 or not deb.exists():
            raise CorpusError(f"apt-get download {spec} failed ({done.stderr.strip()[-300:]}); run `apt-get update` "
                              f"first, or fetch {source.deb_name} from snapshot.debian.org and pass --deb")
    return deb


def verify_deb(deb: Path, source: Source) -> None:
    if not deb.is_file():
        raise CorpusError(f"{deb}: no such file (expected {source.deb_name})")
    found = sha256_file(deb)
    if found != source.sha256:
        raise CorpusError(f"{deb}: SHA-256 {found} is not the pinned {source.sha256} of {source.package} "
                          f"{source.version}")


def extract_pages(deb: Path, source: Source, folder: Path) -> tuple[dict[str, str], str]:
    """({page name: reST source}, copyright text) of the package, extracted with ``dpkg-deb -x`` into ``folder``."""
    done = subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        raise CorpusError(f"dpkg-deb -x {deb} failed: {done.stderr.strip()}")
    root = folder / source.sources_dir
    if not root.is_dir():
        raise CorpusError(f"{deb}: no folder {source.sources_dir}")
    pages = {}
    for path in sorted(root.rglob(f"*{source.suffix}")):
        name = path.relative_to(root).as_posix()
        if not name.startswith(source.exclude):
            pages[name] = path.read_text(encoding="utf-8")
    if not pages:
        raise CorpusError(f"{deb}: no {source.suffix} pages under {source.sources_dir}")
    copyright_file = folder / source.copyright_file
    if not copyright_file.is_file():
        raise CorpusError(f"{deb}: no licence file {source.copyright_file}")
    return pages, copyright_file.read_text(encoding="utf-8")


# --- cleaning, de-duplication, split -------------------------------------------------------------------------


def clean_pages(pages: dict[str, str], source: Source) -> dict[str, list[str]]:
    """{page: prose paragraphs}, cross-references resolved to section titles of the whole set."""
    labels = section_labels(pages)
    return {name: rst_to_paragraphs(text, labels, source.substitutions) for name, text in sorted(pages.items())}


def dedup_key(paragraph: str) -> str:
    """What two near-identical paragraphs share: lower-case letters and digits, single spaces between runs."""
    return re.sub(r"[^0-9a-z]+", " ", paragraph.casefold()).strip()


def deduplicate(docs: dict[str, list[str]], min_words: int) -> tuple[dict[str, list[str]], int]:
    """Drop every paragraph (of at least ``min_words`` words) whose key an earlier one had, pages in name order.

    Returns the pages and the number of paragraphs dropped. A paragraph therefore appears in one split only.
    """
    seen, dropped = set(), 0
    kept: dict[str, list[str]] = {}
    for name in sorted(docs):
        kept[name] = []
        for paragraph in docs[name]:
            key = dedup_key(paragraph)
            if len(key.split()) >= min_words:
                if key in seen:
                    dropped += 1
                    continue
                seen.add(key)
            kept[name].append(paragraph)
    return kept, dropped


def split_of(name: str, config: BuildConfig) -> str:
    """The split of a page, by a hash of its name: stable whatever other pages exist."""
    bucket = int.from_bytes(hashlib.sha256(f"pydoc-split/{name}".encode()).digest()[:8], "big") % 100
    if bucket < config.test_percent:
        return "test"
    return "validation" if bucket < config.test_percent + config.validation_percent else "train"


def split_documents(docs: dict[str, list[str]], config: BuildConfig) -> dict[str, list[dict[str, str]]]:
    """{split: [{"name", "text"}]}, pages in name order; text = paragraphs joined by blank lines."""
    splits: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for name in sorted(docs):
        text = "\n\n".join(docs[name])
        if len(text.encode("utf-8")) >= config.min_doc_bytes:
            splits[split_of(name, config)].append({"name": name, "text": text})
    return splits


def check_no_special_tokens(splits: dict[str, list[dict[str, str]]]) -> None:
    for split, docs in splits.items():
        for doc in docs:
            found = [t for t in SPECIAL_TOKENS if t in doc["text"]]
            if found:
                raise CorpusError(f"{split} page {doc['name']} holds the special token(s) {found}")


# --- tokenizer and tokens ---------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], config: BuildConfig) -> Tokenizer:
    """Byte-level BPE: ids 0-2 the special tokens (<pad>, <unk>, <eos>), then the 256 bytes, then merges."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def document_tokens(tokenizer: Tokenizer, texts: Sequence[str]) -> list[int]:
    """The training stream: every document preceded by <eos>, as lm-eval's rolling windows begin with it."""
    eos = cast(int, tokenizer.token_to_id(EOS))  # a special token of every tokenizer trained here
    stream: list[int] = []
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        stream.append(eos)
        stream += encoding.ids
    return stream


# --- files ------------------------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def jsonl_bytes(docs: Sequence[dict[str, str]]) -> bytes:
    return "".join(json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n" for doc in docs).encode("utf-8")


def read_jsonl_xz(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in lzma.decompress(path.read_bytes()).decode("utf-8").splitlines()]


def split_record(docs: Sequence[dict[str, str]], tokenizer: Tokenizer) -> dict[str, object]:
    texts = [doc["text"] for doc in docs]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    return {"documents": len(docs), "bytes": n_bytes, "tokens": n_tokens,
            "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4),
            "sha256": hashlib.sha256(jsonl_bytes(docs)).hexdigest()}  # fmt: skip


def write_outputs(splits: dict[str, list[dict[str, str]]], tokenizer: Tokenizer, copyright_text: str,
                  out: Path, train_out: Path) -> dict[str, object]:
    """Write the shipped files into ``out`` and the training tokens into ``train_out``; returns their records."""
    import numpy as np

    records: dict[str, object] = {}
    for split in SPLITS:
        records[split] = split_record(splits[split], tokenizer)
    for split in SHIPPED_SPLITS:
        data = lzma.compress(jsonl_bytes(splits[split]), preset=9 | lzma.PRESET_EXTREME)
        write_atomic(out / f"{split}.jsonl.xz", data)
        records[split]["file"] = f"{split}.jsonl.xz"  # type: ignore[index]
    tokenizer_json = tokenizer.to_str(pretty=True).encode("utf-8")
    write_atomic(out / "tokenizer.json", tokenizer_json)
    write_atomic(out / "COPYRIGHT", copyright_text.encode("utf-8"))
    tokens = np.asarray(document_tokens(tokenizer, [d["text"] for d in splits["train"]]), dtype="<u2")
    write_atomic(train_out / "train_tokens.bin", tokens.tobytes())
    write_atomic(train_out / "train.jsonl.xz", lzma.compress(jsonl_bytes(splits["train"]), preset=6))
    return {
        "splits": records,
        "tokenizer": {"file": "tokenizer.json", "sha256": hashlib.sha256(tokenizer_json).hexdigest(),
                      "vocab_size": tokenizer.get_vocab_size(), "special_tokens": list(SPECIAL_TOKENS)},
        "train_tokens": {"file": "train_tokens.bin", "dtype": TOKEN_DTYPE, "count": int(tokens.size),
                         "sha256": hashlib.sha256(tokens.tobytes()).hexdigest()},
        "copyright": {"file": "COPYRIGHT", "sha256": hashlib.sha256(copyright_text.encode("utf-8")).hexdigest()},
    }  # fmt: skip


# --- the build --------------------------------------------------------------------------------------------------


def build(deb: Path, out: Path, train_out: Path, source: Source = PYTHON_DOC,
          config: BuildConfig | None = None) -> dict[str, object]:
    """The whole build from a .deb; returns the manifest, also written to ``out/MANIFEST.json``."""
    import tokenizers

    config = config or BuildConfig()
    verify_deb(deb, source)
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        pages, copyright_text = extract_pages(deb, source, Path(tmp))
    docs, dropped = deduplicate(clean_pages(pages, source), config.dedup_min_words)
    splits = split_documents(docs, config)
    check_no_special_tokens(splits)
    tokenizer = train_tokenizer((d["text"] for d in splits["train"]), config)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": {**{k: v for k, v in asdict(source).items() if k != "substitutions"}, "deb": source.deb_name},
        "build": {"command": f"python -m {MODULE} --download", "config": asdict(config),
                  "tokenizers_version": tokenizers.__version__, "pages": len(pages),
                  "duplicate_paragraphs_dropped": dropped,
                  "short_pages_dropped": len(docs) - sum(len(s) for s in splits.values())},  # fmt: skip
        **write_outputs(splits, tokenizer, copyright_text, out, train_out),
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    write_atomic(out / "MANIFEST.json", text.encode("utf-8"))
    return json.loads(text)


def compare_manifests(shipped: dict, rebuilt: dict) -> list[str]:
    """Differences that matter between two manifests (the ``tokenizers`` version is only reported)."""
    problems = []
    for key in sorted(set(shipped) | set(rebuilt)):
        if shipped.get(key) != rebuilt.get(key) and key != "build":
            problems.append(f"{key}: shipped {shipped.get(key)} != rebuilt {rebuilt.get(key)}")
    old, new = shipped.get("build", {}), rebuilt.get("build", {})
    for key in sorted((set(old) | set(new)) - {"tokenizers_version"}):
        if old.get(key) != new.get(key):
            problems.append(f"build.{key}: shipped {old.get(key)} != rebuilt {new.get(key)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--deb", type=Path, help=f"the .deb ({PYTHON_DOC.deb_name})")
    where.add_argument("--download", action="store_true", help="apt-get download it into --cache")
    parser.add_argument("--cache", type=Path, default=TRAIN_DIR / "src", help="where --download puts the .deb")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="the shipped files (default: %(default)s)")
    parser.add_argument("--train-out", type=Path, default=TRAIN_DIR, help="the training tokens (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="build into a temporary folder and compare with the manifest in --out; writes nothing")
    args = parser.parse_args(argv)
    try:
        deb = download_deb(PYTHON_DOC, args.cache) if args.download else args.deb
        started = time.monotonic()
        if args.check:
            return _check(deb, args.out)
        manifest = build(deb, args.out, args.train_out)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({split: manifest["splits"][split] for split in SPLITS}, indent=1))  # type: ignore[index]
    print(f"built in {time.monotonic() - started:.1f} s: {args.out}, {args.train_out / 'train_tokens.bin'}")
    return 0


def _check(deb: Path, out: Path) -> int:
    shipped = json.loads((out / "MANIFEST.json").read_text())
    with tempfile.TemporaryDirectory(prefix="corpus-check-") as tmp:
        rebuilt = build(deb, Path(tmp) / "data", Path(tmp) / "train")
        for name in ("tokenizer.json", "COPYRIGHT", *(f"{s}.jsonl.xz" for s in SHIPPED_SPLITS)):
            if not (out / name).exists():
                print(f"{name}: missing in {out}")
    problems = compare_manifests(shipped, rebuilt)
    print("\n".join(problems) if problems else "the shipped corpus is what the build makes")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
