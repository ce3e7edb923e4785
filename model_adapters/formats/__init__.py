"""One entry point for every checkpoint format: detect, map to the project's config and keys, load strictly.

    ckpt = load_checkpoint("path/to/dir")       # says which format it found
    ckpt.model, ckpt.tokenizer, ckpt.format, ckpt.content_hash, ckpt.default_budget

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
from ..tokenizer import Tokenizer, find_tokenizer
from . import hf, mamba_ssm, native, reference
from .common import CheckpointError, check_keys, content_hash, read_json, read_weights, weights_file
from .native import save

FORMATS = (native, reference, mamba_ssm, hf)
logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "LoadedCheckpoint", "detect_format", "load_checkpoint", "save"]


@dataclass
class LoadedCheckpoint:
    model: ExplicitLM | ImplicitLM
    tokenizer: Tokenizer | None
    format: str
    path: Path
    content_hash: str
    config: ModelConfig

    @property
    def default_budget(self) -> Budget | None:
        return self.config.default_budget() if self.config.kind == "implicit" else None


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
                    device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load any supported checkpoint directory. The tokenizer comes from `tokenizer` if given, else from the
    directory's tokenizer.json if present (else None: callers that need one say so)."""
    directory = Path(directory)
    fmt, config = detect_format(directory)
    wfile = weights_file(directory)
    cfg, state, extras = fmt.to_native(config, read_weights(wfile), where=str(directory / "config.json"))
    model = build_model(cfg)
    state = _with_tied(state, cfg)
    check_keys(model.state_dict(), state, where=str(wfile))
    model.load_state_dict(state, strict=True)
    model = model.to(device=device, dtype=dtype).eval()
    tok = _load_tokenizer(directory, tokenizer, extras)
    files = [directory / "config.json", *_weight_files(wfile)] + ([tok.path] if tok else [])
    logger.info("loaded %s checkpoint (%s model) from %s", fmt.NAME, cfg.kind, directory)
    return LoadedCheckpoint(model, tok, fmt.NAME, directory, content_hash(directory, files), cfg)


def _with_tied(state: dict, cfg: ModelConfig) -> dict:
    """A tied head is stored once; give load_state_dict both names so the strict check is exact."""
    if cfg.tie_embeddings and "embedding.weight" in state:
        return {**state, "lm_head.weight": state["embedding.weight"]}
    return state


def _weight_files(wfile: Path) -> list[Path]:
    if wfile.name.endswith(".index.json"):
        shards = set(read_json(wfile).get("weight_map", {}).values())
        return [wfile] + [wfile.parent / s for s in sorted(shards)]
    return [wfile]


def _load_tokenizer(directory: Path, explicit: str | Path | None, extras: dict) -> Tokenizer | None:
    path = Path(explicit) if explicit is not None else find_tokenizer(directory)
    if path is None:
        return None
    if path.is_dir():
        path = path / "tokenizer.json"
    tok = Tokenizer(path, eos_token=extras.get("eos_token"))
    eos_id = extras.get("eos_token_id")
    if tok.eos_token_id is None and eos_id is not None:
        tok.eos_token_id = eos_id
    return tok
