"""Evaluation documents of the pydoc tasks, cut from the shipped held-out text with the corpus tokenizer.

Lengths are counted in tokens of the corpus tokenizer; bucket ``id``/``oodKx`` means K * L tokens, L being the
training context (``TRAIN_CONTEXT`` = 256 unless ``train_max_len`` says otherwise).

ppl    windows for lm-eval's ``loglikelihood_rolling``. A window starts at a paragraph start and ends at the
       last word end within K*L tokens, so it holds K*L - WINDOW_SLACK to K*L tokens; the windows of one bucket
       never overlap. Each is scored from its own start (lm-eval puts the end-of-text token before it).
cloze  LAMBADA-style: the last word of a paragraph that ends in "word." given the text before it. The target
       must occur, as a whole word and with the same case, earlier than its own sentence within the id
       context (so guessing it takes more than the sentence, as in LAMBADA), and must have at least 8L
       tokens before it in its page. Every bucket holds the same items; only the context differs: the last
       K*L - (target tokens) tokens or fewer before the target, starting at a word (at least K*L -
       WINDOW_SLACK tokens with the target). Scored by log-likelihood of " word": acc = greedy match.

Document i of a bucket is item ``order[i]`` of a list shuffled with ``derive_seed("pydoc/eval", task, split,
seed)``: the same order for every bucket, so ``num_docs`` picks the same cloze targets in every bucket.
"""

from __future__ import annotations

import bisect
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from tokenizers import Tokenizer

from ..common import BUCKET_MULTIPLIERS, as_int, data_hash, derive_seed
from .shipped import corpus_tokenizer, held_out

logger = logging.getLogger(__name__)

FAMILY_NAME = "pydoc"
TASKS = ("ppl", "cloze")
BUCKETS = tuple(BUCKET_MULTIPLIERS)  # id, ood2x, ood4x, ood8x
TRAIN_CONTEXT = 256  # tokens: the models' training context L
WINDOW_SLACK = 32  # a window or cloze context ends at a word boundary: at most this many tokens short
DEFAULT_NUM_DOCS = 8
HASHED_FIELDS = {"ppl": ("source", "text", "length"), "cloze": ("source", "input", "target", "length")}
CLOZE_TARGET = re.compile(r"(?<=\s)([A-Za-z]{3,})[.!?]$")  # a paragraph's last word, before its final stop
SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s")


def bucket_lengths(train_max_len: int | None = None) -> dict[str, tuple[int, int]]:
    """Inclusive token range of each bucket's documents: (K*L - WINDOW_SLACK, K*L)."""
    length = TRAIN_CONTEXT if train_max_len is None else as_int("train_max_len", train_max_len,
                                                                 minimum=WINDOW_SLACK + 1)
    return {b: (k * length - WINDOW_SLACK, k * length) for b, k in BUCKET_MULTIPLIERS.items()}


@dataclass(frozen=True)
class _Page:
    """A held-out page with its tokens' character spans (one encoding, reused by every cut)."""

    name: str
    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def word_start(self, k: int) -> bool:
        """Whether token k begins a word (a cut before it falls between words); True at the end."""
        if k <= 0 or k >= len(self.starts):
            return True
        at = self.starts[k]
        return self.text[at].isspace() or self.text[at - 1].isspace()


@cache
def _pages(split: str) -> tuple[_Page, ...]:
    docs = held_out(split)
    encodings = corpus_tokenizer().encode_batch([d["text"] for d in docs], add_special_tokens=False)
    return tuple(_Page(d["name"], d["text"], tuple(s for s, _ in e.offsets), tuple(t for _, t in e.offsets))
                 for d, e in zip(docs, encodings))  # fmt: skip


def _count(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


@cache
def windows(split: str, n_tokens: int) -> tuple[dict[str, Any], ...]:
    """Every window of ``n_tokens - WINDOW_SLACK`` to ``n_tokens`` tokens of the split, pages in name order."""
    tokenizer, found = corpus_tokenizer(), []
    for page in _pages(split):
        paragraph_starts = [0, *(m.end() for m in re.finditer(r"\n\n", page.text))]
        i = 0
        while i < len(paragraph_starts):
            start = paragraph_starts[i]
            first = bisect.bisect_left(page.starts, start)
            last = first + n_tokens  # exclusive
            if last > len(page.starts):
                break
            while last > first and not page.word_start(last):
                last -= 1
            text = page.text[start : page.ends[last - 1]].rstrip()
            count = _count(tokenizer, text)
            if n_tokens - WINDOW_SLACK <= count <= n_tokens:
                found.append({"source": page.name, "start": start, "text": text, "length": count})
                i = bisect.bisect_left(paragraph_starts, start + len(text))
            else:
                i += 1
    return tuple(found)


@cache
def cloze_items(split: str, train_max_len: int = TRAIN_CONTEXT) -> tuple[dict[str, Any], ...]:
    """Every cloze item of the split: {"source", "target", "contexts": {bucket: (text, tokens with target)}}."""
    tokenizer, lengths, items = corpus_tokenizer(), bucket_lengths(train_max_len), []
    longest = max(hi for _, hi in lengths.values())
    for page in _pages(split):
        for m in re.finditer(r"[^\n]+(?=\n\n|$)", page.text):  # paragraphs (list items and terms stay inside)
            target = CLOZE_TARGET.search(m[0])
            if target is None:
                continue
            at = m.start() + target.start(1)  # the target's first character; a space stands before it
            if bisect.bisect_left(page.starts, at - 1) < longest:
                continue
            item = _cloze_item(page, at, target[1], lengths, tokenizer, m.start())
            if item is not None:
                items.append(item)
    return tuple(items)


def _cloze_item(page: _Page, at: int, word: str, lengths: dict[str, tuple[int, int]], tokenizer: Tokenizer,
                paragraph_start: int) -> dict[str, Any] | None:
    sentence = _sentence_start(page.text, paragraph_start, at)
    target_tokens = _count(tokenizer, " " + word)
    contexts = {}
    for bucket, (lo, hi) in lengths.items():  # id first: the LAMBADA test needs only its context
        if bucket == BUCKETS[0] and not _occurs_before(page, word, at, sentence, hi - target_tokens):
            return None
        context = _context(page, at - 1, hi - target_tokens, tokenizer)
        if context is None or context[1] + target_tokens < lo:
            return None
        contexts[bucket] = (context[0], context[1] + target_tokens)
        if bucket == BUCKETS[0] and not _occurs_before(page, word, at, sentence, context[0]):
            return None
    return {"source": page.name, "target": word, "contexts": contexts}


def _occurs_before(page: _Page, word: str, at: int, sentence: int, context: str | int) -> bool:
    """Whether ``word`` occurs in the context (a text, or roughly its last n tokens) before the target's sentence."""
    if isinstance(context, int):  # a cheap first test on the page's own token spans
        context = page.text[page.starts[max(0, bisect.bisect_left(page.starts, at - 1) - context)] : at - 1]
    before = context[: max(0, len(context) - (at - 1 - sentence))]
    return re.search(rf"(?<![A-Za-z]){word}(?![A-Za-z])", before) is not None


def _context(page: _Page, end: int, budget: int, tokenizer: Tokenizer) -> tuple[str, int] | None:
    """The longest text ending at char ``end`` that starts at a word and has at most ``budget`` tokens.

    Only its first word is encoded anew: from the next word on (a pre-token start) its tokens are the page's.
    """
    last = bisect.bisect_left(page.starts, end)
    first = max(0, last - budget)
    while first < last:
        while not page.word_start(first):
            first += 1
        start = page.starts[first] if first < len(page.starts) else end
        while start < end and page.text[start].isspace():
            start += 1
        following = first + 1
        while following < last and (page.starts[following] <= start or not page.word_start(following)):
            following += 1
        head_end = page.starts[following] if following < last else end
        count = _count(tokenizer, page.text[start:head_end]) + (last - following if following < last else 0)
        if count <= budget:
            return page.text[start:end], count
        first += count - budget
    return None


def _sentence_start(text: str, paragraph_start: int, at: int) -> int:
    ends = [m.end() for m in SENTENCE_END.finditer(text, paragraph_start, at)]
    return ends[-1] if ends else paragraph_start


def cloze_chance(split: str = "test", train_max_len: int = TRAIN_CONTEXT) -> float:
    """1 / the number of distinct target words: accuracy of guessing uniformly among the split's answers."""
    return 1.0 / len({item["target"] for item in cloze_items(split, train_max_len)})


def _order(task: str, split: str, seed: int, size: int) -> list[int]:
    order = list(range(size))
    random.Random(derive_seed("pydoc/eval", task, split, seed)).shuffle(order)
    return order


def make_docs(task: str, bucket: str, *, seed: int = 0, num_docs: int = DEFAULT_NUM_DOCS, split: str = "test",
              train_max_len: int | None = None) -> list[dict[str, Any]]:
    """The evaluation documents of one bucket (fewer than ``num_docs`` when the split holds fewer; logged).

    Each: ``family`` ("pydoc"), ``task``, ``bucket``, ``index``, ``source`` (the page), ``length`` (corpus tokens),
    ``n_bytes``, ``chance`` (cloze: 1 / distinct targets; ppl: None), ``data_hash``, and ``text`` (ppl) or
    ``input`` and ``target`` (cloze).
    """
    if task not in TASKS:
        raise ValueError(f"unknown pydoc task {task!r}; valid tasks are {list(TASKS)}")
    if bucket not in BUCKETS:
        raise ValueError(f"unknown bucket {bucket!r} of pydoc task {task!r}; valid buckets are {list(BUCKETS)}")
    length = TRAIN_CONTEXT if train_max_len is None else train_max_len
    hi = bucket_lengths(length)[bucket][1]
    pool = windows(split, hi) if task == "ppl" else cloze_items(split, length)
    num_docs = as_int("num_docs", num_docs, minimum=1)
    if num_docs > len(pool):
        logger.warning("pydoc_%s_%s: %d documents asked, the %s split holds %d", task, bucket, num_docs, split,
                       len(pool))
    chance = cloze_chance(split, length) if task == "cloze" else None
    docs = [_doc(task, bucket, index, pool[k], chance) for index, k in enumerate(_order(task, split, seed,
                                                                                        len(pool))[:num_docs])]
    fingerprint = data_hash(docs, HASHED_FIELDS[task])
    for doc in docs:
        doc["data_hash"] = fingerprint
    return docs


def _doc(task: str, bucket: str, index: int, item: dict[str, Any], chance: float | None) -> dict[str, Any]:
    doc = {"family": FAMILY_NAME, "task": task, "bucket": bucket, "index": index, "source": item["source"]}
    if task == "ppl":
        doc.update(text=item["text"], length=item["length"], n_bytes=len(item["text"].encode("utf-8")))
    else:
        context, length = item["contexts"][bucket]
        doc.update(input=context, target=item["target"], length=length,
                   n_bytes=len(f"{context} {item['target']}".encode()))
    doc["chance"] = chance
    return doc


def texts_of(docs: Sequence[dict[str, Any]]) -> list[str]:
    """What a model reads of each document: the window, or the context with the target."""
    return [d["text"] if d["task"] == "ppl" else f"{d['input']} {d['target']}" for d in docs]
