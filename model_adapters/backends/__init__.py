"""Backend resolution, in one place: `auto` | `torch` | `triton`.

A backend is a module with the functions of `torch_ops` (conv_scan: a sequence's conv and scan, chunk_scan,
state_step, conv_step_read: a step's output alone, conv_step: a committing step, causal_conv_silu, gated_rmsnorm,
add_rmsnorm, and damped_update: the masked update of a captured fixed-point solve) and a NAME. The torch backend is
the CPU path and the reference; the triton backend (mamba_ssm's kernels) is imported lazily, only when chosen.
Nothing else in the project switches path on device or length.
"""

from __future__ import annotations

import importlib.util
import logging
from types import ModuleType

import torch

from ..errors import ConfigError

BACKENDS = ("auto", "torch", "triton")
logger = logging.getLogger(__name__)


def triton_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend for `name` on `device`; logs the choice once."""
    if name not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {name!r}")
    on_cuda = torch.device(device).type == "cuda"
    if name == "auto":
        resolved = "triton" if on_cuda and triton_available() else "torch"
    elif name == "triton" and not on_cuda:
        raise ConfigError(f"backend=triton needs a CUDA device, got device={device!s}; use backend=torch")
    elif name == "triton" and not triton_available():
        raise ConfigError("backend=triton needs mamba-ssm (pip install '.[gpu]'); use backend=torch")
    else:
        resolved = name
    logger.info("backend %s resolved to %s on %s", name, resolved, device)
    return resolved


def get_ops(resolved: str) -> ModuleType:
    if resolved == "torch":
        from . import torch_ops

        return torch_ops
    if resolved == "triton":
        from . import triton_ops

        return triton_ops
    raise ConfigError(f"not a concrete backend: {resolved!r} (resolve it with resolve_backend first)")
