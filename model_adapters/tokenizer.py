"""An offline tokenizer: a `tokenizers` tokenizer.json file, never a hub download."""

from __future__ import annotations

import json
from pathlib import Path

EOS_CANDIDATES = ("<eos>", "<|endoftext|>", "</s>", "<|end_of_text|>", "<|eot_id|>")


class TokenizerError(ValueError):
    pass


class Tokenizer:
    """encode/decode without special tokens, plus the end-of-text id lm-eval needs."""

    def __init__(self, path: str | Path, eos_token: str | None = None):
        from tokenizers import Tokenizer as HFTokenizer  # light, but only needed once a tokenizer is used

        self.path = Path(path)
        if not self.path.is_file():
            raise TokenizerError(f"tokenizer file not found: {self.path} (expected a tokenizers tokenizer.json)")
        try:
            self._tk = HFTokenizer.from_file(str(self.path))
        except Exception as exc:  # the library raises bare Exceptions on malformed files
            raise TokenizerError(f"{self.path}: not a valid tokenizer.json ({exc})") from exc
        self.eos_token = eos_token or _eos_from_config(self.path.parent) or self._known_eos()
        self.eos_token_id = None if self.eos_token is None else self._tk.token_to_id(self.eos_token)
        if eos_token is not None and self.eos_token_id is None:
            raise TokenizerError(f"{self.path}: eos token {eos_token!r} is not in the vocabulary")

    def _known_eos(self) -> str | None:
        return next((t for t in EOS_CANDIDATES if self._tk.token_to_id(t) is not None), None)

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)


def _eos_from_config(directory: Path) -> str | None:
    """transformers directories name their eos token in tokenizer_config.json."""
    cfg = directory / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    eos = json.loads(cfg.read_text()).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def find_tokenizer(directory: Path) -> Path | None:
    path = Path(directory) / "tokenizer.json"
    return path if path.is_file() else None
