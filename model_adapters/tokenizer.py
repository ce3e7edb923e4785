"""An offline tokenizer: a `tokenizers` tokenizer.json file, never a hub download."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import TokenizerError, read_text

EOS_CANDIDATES = ("<eos>", "<|endoftext|>", "</s>", "<|end_of_text|>", "<|eot_id|>")


class Tokenizer:
    """encode/decode without special tokens, plus the ids of the special tokens lm-eval needs.

    eos_token: the end-of-text token; default: tokenizer_config.json's, else the first of EOS_CANDIDATES in
        the vocabulary, else none (eos_token_id None: a vocabulary need not have one).
    prefix_token: a BOS-like token to put before a context (prefix_token_id; None if not given).
    A token named here or in tokenizer_config.json must be in the vocabulary.
    """

    def __init__(self, path: str | Path, eos_token: str | None = None, prefix_token: str | None = None):
        from tokenizers import Tokenizer as HFTokenizer  # light, but only needed once a tokenizer is used

        self.path = Path(path)
        if not self.path.is_file():
            raise TokenizerError(f"tokenizer file not found: {self.path} (expected a tokenizers tokenizer.json)")
        try:
            self._tk = HFTokenizer.from_file(str(self.path))
        except Exception as exc:  # the library raises bare Exceptions on malformed files
            raise TokenizerError(f"{self.path}: not a valid tokenizer.json ({exc})") from exc
        if eos_token is None:
            named = _eos_from_config(self.path.parent)
            self.eos_token = self._require(named, "eos token", " (named in tokenizer_config.json)") or self._known_eos()
        else:
            self.eos_token = self._require(eos_token, "eos token")
        self.eos_token_id = None if self.eos_token is None else self._tk.token_to_id(self.eos_token)
        self.prefix_token = self._require(prefix_token, "prefix token")
        self.prefix_token_id = None if prefix_token is None else self._tk.token_to_id(prefix_token)

    def _require(self, token, what: str, source: str = "") -> str | None:
        """A token someone named: a string in the vocabulary (None passes: nothing was named)."""
        if token is None:
            return None
        if not isinstance(token, str) or self._tk.token_to_id(token) is None:
            raise TokenizerError(f"{self.path}: {what} {token!r}{source} is not in the vocabulary")
        return token

    def _known_eos(self) -> str | None:
        return next((t for t in EOS_CANDIDATES if self._tk.token_to_id(t) is not None), None)

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    @property
    def id_bound(self) -> int:
        """One more than the largest token id (ids need not be dense)."""
        return 1 + max(self._tk.get_vocab(with_added_tokens=True).values(), default=-1)

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=False)

    @property
    def unk_token_id(self) -> int | None:
        """The id every piece outside the vocabulary becomes (word-level models); None when there is none (BPE)."""
        model = self._tk.model
        token = getattr(model, "unk_token", None)
        if token:
            return self._tk.token_to_id(token)
        return getattr(model, "unk_id", None)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() of each text, in one call that the tokenizer spreads over its threads."""
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]

    def encode_batch_counting_unknown(self, texts: list[str]) -> list[tuple[list[int], list[str]]]:
        """Per text: (its tokens, the pieces of it that became the unknown token), in one batched call."""
        unk = self.unk_token_id
        encodings = self._tk.encode_batch(list(texts), add_special_tokens=False)
        return [(e.ids, [] if unk is None else [t[a:b] for i, (a, b) in zip(e.ids, e.offsets) if i == unk])
                for t, e in zip(texts, encodings)]

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tk.id_to_token(token_id)


def _eos_from_config(directory: Path) -> str | None:
    """transformers directories name their eos token in tokenizer_config.json."""
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(read_text(path, TokenizerError, "a tokenizer's JSON file"))
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from exc
    eos = config.get("eos_token") if isinstance(config, dict) else None
    return eos.get("content") if isinstance(eos, dict) else eos


def find_tokenizer(directory: Path) -> Path | None:
    path = Path(directory) / "tokenizer.json"
    return path if path.is_file() else None
