"""Reading checkpoint files, shared by every format: JSON, weights, weight-norm folding, strict key checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


# mamba_ssm's Mamba2 defaults (the reference code's Mamba2 has the same) for keys that change the function.
MAMBA2_DEFAULTS = {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "chunk_size": 256,
                   "D_has_hdim": False, "rmsnorm": True, "conv_bias": True, "bias": False}


class CheckpointError(ValueError):
    """A checkpoint directory cannot be loaded; the message names the file and the key."""


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def weights_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no weights file; expected one of {list(WEIGHT_FILES)}")


def read_weights(path: Path) -> dict[str, Tensor]:
    """A safetensors or pickled state dict (pickles only through weights_only=True), or a sharded index."""
    if path.name.endswith(".index.json"):
        shards = sorted(set(read_json(path).get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{path}: index has no 'weight_map'")
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(read_weights(path.parent / shard))
        return state
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or non-tensor content: name the file
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc


def fold_weight_norm(state: dict[str, Tensor], learn_scale: bool = True, target_norm: float = 1.0,
                     clip: float | None = None, where: str = "") -> dict[str, Tensor]:
    """Replace every (X.weight_g, X.weight_v) pair by X.weight = g * v / ||v|| (norm over all dims but 0).

    Without a learned scale (torchdeq's norm_no_scale) only weight_v is stored and the factor is
    target_norm / ||v||; `clip` caps the factor, as torchdeq's WeightNorm does. Folding once at load makes
    evaluation as cheap as an unnormalised model.
    """
    out = {k: v for k, v in state.items() if not k.endswith((".weight_g", ".weight_v"))}
    for key in [k for k in state if k.endswith(".weight_v")]:
        base = key[: -len("_v")]
        v = state[key].double()
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        if learn_scale:
            g = state.get(base + "_g")
            if g is None:
                raise CheckpointError(f"{where}: '{key}' has no matching '{base}_g'")
            factor = g.double().reshape(norm.shape) / norm
        else:
            factor = target_norm / norm
        if clip is not None:
            factor = factor.clamp(max=clip)
        out[base] = (v * factor).to(state[key].dtype)
    orphans = [k for k in state if k.endswith(".weight_g") and k[:-2] + "_v" not in state]
    if orphans:
        raise CheckpointError(f"{where}: '{orphans[0]}' has no matching weight_v")
    return out


def check_keys(expected: dict[str, Tensor], given: dict[str, Tensor], where: str) -> None:
    """Strict: every expected key present with its shape, nothing unexpected. One message, naming the key."""
    missing = [k for k in expected if k not in given]
    if missing:
        raise CheckpointError(f"{where}: missing key '{missing[0]}'" + _more(missing))
    unexpected = [k for k in given if k not in expected]
    if unexpected:
        raise CheckpointError(f"{where}: unexpected key '{unexpected[0]}'" + _more(unexpected))
    for k, t in expected.items():
        if tuple(given[k].shape) != tuple(t.shape):
            raise CheckpointError(f"{where}: key '{k}' has shape {tuple(given[k].shape)}, the config implies "
                                  f"{tuple(t.shape)} (config and weights disagree)")


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def rename(state: dict[str, Tensor], mapping: list[tuple[str, str]]) -> dict[str, Tensor]:
    """Rename keys by prefix; keys matching no prefix are kept as they are (and caught by check_keys)."""
    out = {}
    for key, value in state.items():
        for old, new in mapping:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def content_hash(directory: Path, files: list[Path]) -> str:
    """sha256 over the files that define the model (config, weights, tokenizer), in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def mixer_fields(cfg: dict, ignored: tuple[str, ...], fixed: dict, where: str, label: str) -> dict:
    """Mamba2 mixer settings of a foreign config: unknown keys refused, keys that must keep their default
    checked, the rest filled from mamba_ssm's defaults."""
    known = set(MAMBA2_DEFAULTS) | set(ignored) | set(fixed)
    unknown = sorted(set(cfg) - known)
    require(not unknown, where, f"{label} has unknown key(s) {unknown}; known: {sorted(known)}")
    for key, default in fixed.items():
        value = cfg.get(key, default)
        value = list(value) if isinstance(value, tuple) else value
        require(value == default, where, f"{label}.{key}={value!r} is not supported (only {default!r})")
    return {k: cfg.get(k, default) for k, default in MAMBA2_DEFAULTS.items()}


def require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise CheckpointError(f"{where}: {message}")
