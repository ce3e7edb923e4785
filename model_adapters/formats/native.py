"""The project's own format: config.json + model.safetensors + tokenizer.json, weight norm folded.

config.json schema (format_version 1):
    {
      "format": "implicit-ssm-eval",
      "format_version": 1,
      "model": { ModelConfig fields; for kind "implicit" a "budget": {max_iter, tol, tau, solver, mode} },
      "eos_token": "<eos>",            # optional: the tokenizer's end-of-text token
      "training": { ... }              # optional, free-form provenance (command, seeds, steps)
    }
Weights use the model's own parameter names (see models.py); a tied LM head is stored once, as
embedding.weight.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from torch import Tensor

from ..config import ConfigError, ModelConfig, reject_unknown_keys
from .common import CheckpointError

NAME = "native"
FORMAT_TAG = "implicit-ssm-eval"
TOP_LEVEL_KEYS = ("format", "format_version", "model", "eos_token", "training")


def matches(config: dict) -> bool:
    return config.get("format") == FORMAT_TAG


def to_native(config: dict, state: dict[str, Tensor], where: str) -> tuple[ModelConfig, dict[str, Tensor], dict]:
    section = f"{where} 'model'"
    try:
        reject_unknown_keys(where, config, TOP_LEVEL_KEYS)
        version = config.get("format_version")
        if type(version) is not int or version != 1:
            raise ConfigError(f"{where}: format_version must be 1, got {version!r}")
        cfg = ModelConfig.from_dict(_model_section(config, section), where=section)
    except ConfigError as exc:
        raise CheckpointError(str(exc) if str(exc).startswith(where) else f"{section}: {exc}") from exc
    eos = config.get("eos_token")
    if eos is not None and not isinstance(eos, str):
        raise CheckpointError(f"{where}: eos_token must be a string (a token of tokenizer.json), got {eos!r}")
    return cfg, state, {"eos_token": eos}


def _model_section(config: dict, section: str) -> dict:
    model = config.get("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"{section} must be a JSON object of model settings, got {model!r}")
    # from_dict turns A_init_range into a tuple before validating it: anything but a list would fail there as a
    # TypeError (or, for a string, split into characters), so its shape is checked here.
    if not isinstance(model.get("A_init_range", []), list):
        raise ConfigError(f"{section}: A_init_range must be a pair [low, high] of finite numbers with "
                          f"0 < low <= high, got {model['A_init_range']!r}")
    return model


def save(model, directory: str | Path, tokenizer_path: str | Path | None = None, eos_token: str | None = None,
         training: dict | None = None) -> Path:
    """Write a checkpoint atomically: a temporary sibling directory renamed into place."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if model.cfg.tie_embeddings:
            state.pop("lm_head.weight")
        save_file(state, str(tmp / "model.safetensors"))
        config = {"format": FORMAT_TAG, "format_version": 1, "model": model.cfg.to_dict()}
        if eos_token is not None:
            config["eos_token"] = eos_token
        if training is not None:
            config["training"] = training
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
