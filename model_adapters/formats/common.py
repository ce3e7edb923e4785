"""Reading checkpoint files, shared by every format: JSON, weights, weight-norm folding, strict checks of keys,
shapes, dtypes and config value types."""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from ..config import ModelConfig
from ..errors import CheckpointError, read_text
from ..models import build_model

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


# mamba_ssm's Mamba2 defaults (the reference code's Mamba2 has the same) for keys that change the function.
MAMBA2_DEFAULTS = {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "chunk_size": 256,
                   "D_has_hdim": False, "rmsnorm": True, "conv_bias": True, "bias": False}

# dtype names in safetensors headers, for shape-only (meta) tensors; the integer ones are read so that they can
# be refused by name.
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
                      "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8,
                      "BOOL": torch.bool, "C64": torch.complex64}
FLOAT_DTYPES = "float32, float16, bfloat16 or float64"
TYPE_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", dict: "a JSON object",
              list: "a JSON list"}


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(read_text(path, CheckpointError, "a checkpoint's JSON file"))
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


def weight_files(path: Path) -> list[Path]:
    """The files holding the tensors: the shards a sharded index names, or the weights file itself."""
    if not path.name.endswith(".index.json"):
        return [path]
    weight_map = read_json(path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: 'weight_map' must be a non-empty object of tensor name -> shard file")
    names = list(weight_map.values())
    for name in names:
        _check_shard_name(path, name)
    return [path.parent / name for name in sorted(set(names))]


def _check_shard_name(index: Path, name) -> None:
    """An index is data: its shard names must not make us read another index (endless recursion) or any file
    outside the checkpoint directory (`../../etc/passwd`, absolute paths). A shard that is a symlink inside the
    folder is the owner's own choice and is followed: Hugging Face cache snapshots link shards to ../../blobs."""
    if not isinstance(name, str) or not name.endswith((".safetensors", ".bin")):
        raise CheckpointError(f"{index}: weight_map entry {name!r} is not a .safetensors or .bin file name")
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise CheckpointError(f"{index}: weight_map entry {name!r} points outside the checkpoint directory "
                              f"{index.parent.resolve()}; shards must be files inside it")


def read_shapes(files: list[Path]) -> dict[str, Tensor]:
    """Names, shapes and dtypes of the stored tensors, as meta tensors: safetensors headers are read alone and
    pickles are memory-mapped, so no tensor data is read and nothing is allocated."""
    return _merge(files, shapes_only=True)


def read_weights(files: list[Path]) -> dict[str, Tensor]:
    """The stored tensors: safetensors, or pickled state dicts (only through weights_only=True)."""
    return _merge(files, shapes_only=False)


def _merge(files: list[Path], shapes_only: bool) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for path in files:
        part = _read_file(path, shapes_only)
        twice = sorted(state.keys() & part.keys())
        if twice:
            raise CheckpointError(f"{path}: key '{twice[0]}' is stored in another shard too")
        state.update(part)
    return state


def _read_file(path: Path, shapes_only: bool) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            state = _safetensors_shapes(path) if shapes_only else _safetensors(path)
        else:
            state = _pickle(path)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt or non-tensor content: name the file
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    _check_state_dict(path, state)
    return {k: v.to("meta") for k, v in state.items()} if shapes_only else state


def _safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _safetensors_shapes(path: Path) -> dict[str, Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        slices = {k: fh.get_slice(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a mapping)
        return {k: torch.empty(s.get_shape(), dtype=_safetensors_dtype(path, k, s.get_dtype()), device="meta")
                for k, s in slices.items()}


def _safetensors_dtype(path: Path, key: str, name: str) -> torch.dtype:
    if name not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: key '{key}' has dtype {name}, which this loader does not know; expected "
                              "a floating-point tensor (F32, F16, BF16 or F64)")
    return SAFETENSORS_DTYPES[name]


def _pickle(path: Path) -> dict:
    # Memory-mapped, so tensor data is read only when used; torch.save's old (non-zip) format cannot be mapped.
    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def _check_state_dict(path: Path, state) -> None:
    """A weights file holds a flat mapping of names to tensors (not, say, a training checkpoint), all floating
    point: every parameter of every supported format is, and load_state_dict would silently cast integer, bool
    or complex values into them."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                              f"{type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is not a tensor ({type(value).__name__}); expected a flat "
                                  "state dict of names to tensors")
        if not value.is_floating_point():
            dtype = str(value.dtype).removeprefix("torch.")
            raise CheckpointError(f"{path}: key '{key}' has dtype {dtype}, expected floating point ({FLOAT_DTYPES})")


def fold_weight_norm(state: dict[str, Tensor], learn_scale: bool = True, target_norm: float = 1.0,
                     clip: float | None = None, where: str = "") -> dict[str, Tensor]:
    """Replace every (X.weight_g, X.weight_v) pair by X.weight = g * v / ||v|| (norm over all dims but 0).

    Without a learned scale (torchdeq's norm_no_scale) only weight_v is stored and the factor is
    target_norm / ||v||; `clip` caps the factor, as torchdeq's WeightNorm does. Folding once at load makes
    evaluation as cheap as an unnormalised model. Works on meta tensors too (shapes and dtypes alone).
    """
    out = {k: v for k, v in state.items() if not k.endswith((".weight_g", ".weight_v"))}
    for key in [k for k in state if k.endswith(".weight_v")]:
        base = key[: -len("_v")]
        require(state[key].dim() >= 2, where, f"'{key}' has shape {tuple(state[key].shape)}; weight norm needs "
                                              "a weight of at least 2 dimensions")
        v = state[key].double()
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        if learn_scale:
            g = state.get(base + "_g")
            if g is None:
                raise CheckpointError(f"{where}: '{key}' has no matching '{base}_g'")
            require(g.numel() == v.shape[0], where, f"'{base}_g' has shape {tuple(g.shape)}, expected "
                                                    f"{v.shape[0]} scales, one per row of '{key}'")
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
    """sha256 over the files that define the model (config, weights, tokenizer), in a fixed order. Remembered per
    process for files of the same size, modification time and inode: a sweep plans and runs each checkpoint, and
    reading a large one takes seconds each time."""
    files = sorted(set(files))
    stamp = tuple((str(Path(f).resolve()), *_identity(f)) for f in files)
    if stamp not in _HASHES:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        _HASHES[stamp] = digest.hexdigest()
    return _HASHES[stamp]


_HASHES: dict[tuple, str] = {}


def _identity(path: Path) -> tuple[int, int, int]:
    """Size, modification time and inode: a file rewritten in place or replaced by a rename gets a new one."""
    st = Path(path).stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def mixer_fields(cfg: dict, ignored: tuple[str, ...], fixed: dict, where: str, label: str) -> dict:
    """Mamba2 mixer settings of a foreign config: unknown keys refused, keys that must keep their default
    checked, the rest typed like their default and filled from mamba_ssm's defaults."""
    known = set(MAMBA2_DEFAULTS) | set(ignored) | set(fixed)
    unknown = sorted(set(cfg) - known)
    require(not unknown, where, f"{label} has unknown key(s) {unknown}; known: {sorted(known)}")
    check_types(cfg, {k: type(v) for k, v in MAMBA2_DEFAULTS.items()}, where, f"{label}.")
    for key, default in fixed.items():
        value = cfg.get(key, default)
        value = list(value) if isinstance(value, tuple) else value
        require(value == default, where, f"{label}.{key}={value!r} is not supported (only {default!r})")
    return {k: cfg.get(k, default) for k, default in MAMBA2_DEFAULTS.items()}


def check_types(section: dict, types: dict[str, type], where: str, label: str = "") -> None:
    """Refuse a present key whose JSON value has the wrong type, before arithmetic or a truth test reads "768" as
    a string to repeat or "false" as true. int: an integer (not a float, not a bool); float: a finite number."""
    for key, kind in types.items():
        if key in section and not _is_a(section[key], kind):
            raise CheckpointError(f"{where}: {label}{key} must be {TYPE_NAMES[kind]}, got {section[key]!r}")


def _is_a(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_state(cfg: ModelConfig, state: dict[str, Tensor], where: str) -> None:
    """Keys, shapes and dtypes of `state` (meta tensors will do) against those `cfg` implies, computed on the
    meta device: a config that implies a huge model fails here, having allocated nothing."""
    # Every layer holds tensors of its own, so a config with more layers than the file has tensors cannot
    # match; saying so first keeps a huge n_layer from building that many modules, even on the meta device.
    if cfg.n_layer > len(state):
        raise CheckpointError(f"{where}: the config has n_layer={cfg.n_layer} but the weights hold only "
                              f"{len(state)} tensors (config and weights disagree)")
    try:
        with torch.device("meta"):
            expected = build_model(cfg).state_dict()
    except RuntimeError as exc:  # sizes whose byte count overflows int64 ("Storage size calculation overflowed")
        raise CheckpointError(f"{where}: the config implies tensors too large to exist ({exc}); config and "
                              "weights disagree") from exc
    check_keys(expected, state, where)


def require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise CheckpointError(f"{where}: {message}")
