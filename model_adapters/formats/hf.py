"""transformers' Mamba2ForCausalLM directories (model_type "mamba2"), loaded as explicit models."""

from __future__ import annotations

from torch import Tensor

from ..config import ConfigError, ModelConfig
from .common import CheckpointError, check_types, rename, require

NAME = "transformers"
# Mamba2Config's keys that are read here, with their JSON types.
TYPES = {"hidden_size": int, "expand": int, "num_heads": int, "head_dim": int, "vocab_size": int,
         "num_hidden_layers": int, "state_size": int, "conv_kernel": int, "n_groups": int, "chunk_size": int,
         "use_conv_bias": bool, "use_bias": bool, "rms_norm": bool, "tie_word_embeddings": bool,
         "layer_norm_epsilon": float, "time_step_limit": list}


def matches(config: dict) -> bool:
    return config.get("model_type") == "mamba2"


def to_native(config: dict, state: dict[str, Tensor], where: str) -> tuple[ModelConfig, dict[str, Tensor], dict]:
    check_types(config, TYPES, where)
    hidden, expand = config.get("hidden_size", 4096), config.get("expand", 2)
    heads, head_dim = config.get("num_heads", 128), config.get("head_dim", 64)
    require(hidden * expand == heads * head_dim, where,
            f"hidden_size*expand ({hidden * expand}) must equal num_heads*head_dim ({heads * head_dim})")
    limit = [_number(v, where) for v in config.get("time_step_limit", [0.0, float("inf")])]
    require(limit == [0.0, float("inf")], where, f"time_step_limit={limit} is not supported (only [0.0, inf])")
    require(config.get("rms_norm", True), where, "rms_norm=false is not supported")
    eps = config.get("layer_norm_epsilon", 1e-5)
    try:
        cfg = ModelConfig(kind="explicit", vocab_size=config.get("vocab_size", 32768), pad_vocab_size_multiple=1,
                          d_model=hidden, n_layer=config.get("num_hidden_layers", 64),
                          d_state=config.get("state_size", 128), d_conv=config.get("conv_kernel", 4), expand=expand,
                          headdim=head_dim, ngroups=config.get("n_groups", 8),
                          chunk_size=config.get("chunk_size", 256), conv_bias=config.get("use_conv_bias", True),
                          bias=config.get("use_bias", False), norm_eps=eps, mixer_norm_eps=eps,
                          tie_embeddings=config.get("tie_word_embeddings", False))
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    state = rename(state, [("backbone.embeddings.", "embedding."), ("backbone.", "")])
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    eos_id = config.get("eos_token_id")
    return cfg, state, {"eos_token_id": eos_id if isinstance(eos_id, int) else None}


def _number(value, where: str) -> float:
    """transformers >= 5 writes non-finite floats as {"__float__": "Infinity"}."""
    if isinstance(value, dict) and isinstance(value.get("__float__"), str):
        value = value["__float__"]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: time_step_limit must hold two numbers, got an entry {value!r}") from None
