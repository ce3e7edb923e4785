"""One entry point for every checkpoint format: detect, map to the project's config and keys, load strictly.

    ckpt = load_checkpoint("path/to/dir")       # says which format it found
    ckpt.model, ckpt.tokenizer, ckpt.format, ckpt.content_hash, ckpt.default_budget
    info = inspect_checkpoint("path/to/dir")    # the same without reading the weights: format, hash, config

Each format is a module with NAME, matches(config) and to_native(config, state, where) -> (ModelConfig,
state dict in this project's key names, extras). Adding a format means adding such a module to FORMATS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Budget, ModelConfig
from ..models import ExplicitLM, ImplicitLM, build_model
from ..tokenizer import Tokenizer, TokenizerError, find_tokenizer
from . import hf, mamba_ssm, native, reference
from .common import (
    CheckpointError,
    check_state,
    content_hash,
    read_json,
    read_shapes,
    read_weights,
    weight_files,
    weights_file,
)
from .native import save

FORMATS = (native, reference, mamba_ssm, hf)
logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "CheckpointInfo", "LoadedCheckpoint", "detect_format", "inspect_checkpoint",
           "load_checkpoint", "save"]


@dataclass
class CheckpointInfo:
    """What a checkpoint is, read from its config, its weight files' headers and its files' hash: enough to plan,
    key and fingerprint runs without building the model."""
    format: str
    path: Path
    content_hash: str
    config: ModelConfig

    @property
    def default_budget(self) -> Budget | None:
        return self.config.default_budget() if self.config.kind == "implicit" else None


@dataclass
class LoadedCheckpoint(CheckpointInfo):
    model: ExplicitLM | ImplicitLM
    tokenizer: Tokenizer | None


def inspect_checkpoint(directory: str | Path, tokenizer: str | Path | None = None) -> CheckpointInfo:
    """The checkpoint's format, content hash (the one load_checkpoint gives) and config, checked against the
    weights' shapes; no tensor data is read."""
    directory = Path(directory)
    fmt, config, wfile, files, cfg = _dry_run(directory)
    tok = _tokenizer_path(directory, tokenizer)
    hashed = [directory / "config.json", wfile, *files] + ([tok] if tok else [])
    return CheckpointInfo(fmt.NAME, directory, content_hash(directory, hashed), cfg)


def _dry_run(directory: Path):
    """The format, its config, the weight files and the project config, checked against the weights' shapes alone
    (their headers: no tensor data is read)."""
    fmt, config = detect_format(directory)
    wfile = weights_file(directory)
    files = weight_files(wfile)
    cfg, shapes, _ = fmt.to_native(config, read_shapes(files), str(directory / "config.json"))
    check_state(cfg, _with_tied(shapes, cfg), str(wfile))
    return fmt, config, wfile, files, cfg


def detect_format(directory: str | Path):
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory (it does not exist or is a file)")
    config = read_json(directory / "config.json")
    for fmt in FORMATS:
        if fmt.matches(config):
            return fmt, config
    raise CheckpointError(
        f"{directory / 'config.json'}: unknown checkpoint format; expected one of: native (format="
        f"'{native.FORMAT_TAG}'), reference (model_type='implicit_mamba2'), mamba_ssm (ssm_cfg with "
        f"layer='Mamba2'), transformers (model_type='mamba2')")


def load_checkpoint(directory: str | Path, tokenizer: str | Path | None = None, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu", eos_token: str | None = None,
                    prefix_token: str | None = None) -> LoadedCheckpoint:
    """Load any supported checkpoint directory. The tokenizer comes from `tokenizer` if given, else from the
    directory's tokenizer.json if present (else None: callers that need one say so). `eos_token` (overriding
    the checkpoint's) and `prefix_token` name special tokens of that tokenizer (see Tokenizer)."""
    directory = Path(directory)
    # The dry run comes first, so a config that disagrees with the weights, or implies a huge model, fails having
    # allocated nothing.
    fmt, config, wfile, files, _ = _dry_run(directory)
    cfg, state, extras = fmt.to_native(config, read_weights(files), str(directory / "config.json"))
    model = build_model(cfg)
    model.load_state_dict(_with_tied(state, cfg), strict=True)
    model = model.to(device=device, dtype=dtype).eval()
    tok = _load_tokenizer(directory, tokenizer, extras, eos_token, prefix_token)
    _check_vocabulary(tok, cfg)
    hashed = [directory / "config.json", wfile, *files] + ([tok.path] if tok else [])
    logger.info("loaded %s checkpoint (%s model) from %s", fmt.NAME, cfg.kind, directory)
    return LoadedCheckpoint(fmt.NAME, directory, content_hash(directory, hashed), cfg, model=model, tokenizer=tok)


def _with_tied(state: dict, cfg: ModelConfig) -> dict:
    """A tied head is stored once; give load_state_dict both names so the strict check is exact."""
    if cfg.tie_embeddings and "embedding.weight" in state:
        return {**state, "lm_head.weight": state["embedding.weight"]}
    return state


def _check_vocabulary(tok: Tokenizer | None, cfg: ModelConfig) -> None:
    """A token id the embedding has no row for fails only when a text produces it, deep in a forward ("index 60 is
    out of bounds"): refuse such a tokenizer at load time."""
    if tok is not None and tok.id_bound > cfg.padded_vocab_size:
        raise TokenizerError(f"{tok.path}: the tokenizer has {tok.id_bound} token ids but the model's embedding has "
                             f"{cfg.padded_vocab_size} rows (vocab_size {cfg.vocab_size}); use the tokenizer the model "
                             "was trained with")


def _tokenizer_path(directory: Path, explicit: str | Path | None) -> Path | None:
    path = Path(explicit) if explicit is not None else find_tokenizer(directory)
    return path / "tokenizer.json" if path is not None and path.is_dir() else path


def _load_tokenizer(directory: Path, explicit: str | Path | None, extras: dict, eos_token: str | None,
                    prefix_token: str | None) -> Tokenizer | None:
    path = _tokenizer_path(directory, explicit)
    if path is None:
        for name, token in (("eos_token", eos_token), ("prefix_token", prefix_token)):
            if token is not None:
                raise TokenizerError(f"{directory}: {name} {token!r} given but there is no tokenizer.json; pass "
                                     "tokenizer=<path to a tokenizer.json>")
        return None
    eos_token = eos_token if eos_token is not None else extras.get("eos_token")
    tok = Tokenizer(path, eos_token=eos_token, prefix_token=prefix_token)
    eos_id = extras.get("eos_token_id")  # transformers configs give it by id: used only if this vocabulary has it
    if tok.eos_token_id is None and eos_id is not None and tok.id_to_token(eos_id) is not None:
        tok.eos_token, tok.eos_token_id = tok.id_to_token(eos_id), eos_id
    return tok
