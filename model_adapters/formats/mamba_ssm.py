"""mamba_ssm's MambaLMHeadModel directories with Mamba2 layers (config.json with ssm_cfg.layer = "Mamba2",
pytorch_model.bin), loaded as explicit models. Missing ssm_cfg keys take mamba_ssm's Mamba2 defaults."""

from __future__ import annotations

from torch import Tensor

from ..config import ConfigError, ModelConfig
from .common import CheckpointError, check_types, mixer_fields, rename, require

NAME = "mamba_ssm"

IGNORED = ("layer", "conv_init", "dt_min", "dt_max", "dt_init_floor", "A_init_range", "use_mem_eff_path",
           "process_group", "sequence_parallel", "dt_limit_init")
FIXED = {"norm_before_gate": False, "dt_limit": [0.0, float("inf")], "d_ssm": None}
# MambaConfig's keys that are read here, with their JSON types (ssm_cfg's are typed by mixer_fields).
TYPES = {"d_model": int, "n_layer": int, "vocab_size": int, "d_intermediate": int, "pad_vocab_size_multiple": int,
         "attn_layer_idx": list, "rms_norm": bool, "tie_embeddings": bool, "norm_epsilon": float}


def matches(config: dict) -> bool:
    return isinstance(config.get("ssm_cfg"), dict) and "d_model" in config and "n_layer" in config


def to_native(config: dict, state: dict[str, Tensor], where: str) -> tuple[ModelConfig, dict[str, Tensor], dict]:
    check_types(config, TYPES, where)
    ssm = config["ssm_cfg"]
    require(ssm.get("layer", "Mamba1") == "Mamba2", where,
            f"ssm_cfg.layer is {ssm.get('layer', 'Mamba1')!r}; only Mamba2 layers are supported")
    require(config.get("d_intermediate", 0) == 0, where, "d_intermediate > 0 (an MLP per block) is not supported")
    require(not config.get("attn_layer_idx"), where, "attention layers (attn_layer_idx) are not supported")
    require(config.get("rms_norm", True), where, "rms_norm=false (LayerNorm) is not supported")
    fields = mixer_fields(ssm, IGNORED, FIXED, where, "ssm_cfg")
    fields.update(kind="explicit", vocab_size=config.get("vocab_size"), d_model=config["d_model"],
                  n_layer=config["n_layer"], pad_vocab_size_multiple=config.get("pad_vocab_size_multiple", 8),
                  tie_embeddings=config.get("tie_embeddings", True),
                  norm_eps=config.get("norm_epsilon", 1e-5))
    try:
        cfg = ModelConfig(**fields)
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    state = rename(state, [("backbone.embedding.", "embedding."), ("backbone.", "")])
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return cfg, state, {}
