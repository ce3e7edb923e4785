"""The reference implementation's format (markschoene/implicit_languagemodels, model_type implicit_mamba2).

config.json carries `backbone_type` (implicit | explicit), `backbone_config` (with `block_cfg` for the Mamba2
mixers), `deq_params` and vocabulary settings; weights live under word_emb / backbone / criterion, with
torchdeq weight norm (`weight_g`, `weight_v`) on every Linear and Conv1d of an implicit backbone.

The default budget follows the reference's evaluation rule: max_iter = eval_f_max_iter if > 0 else
int(f_max_iter * eval_factor); tol = f_tol; tau = training.tau; solver fixed_point (the reference's
evaluation loop is always damped iteration, whatever f_solver says); mode simultaneous.
Noise settings (state_noise_db, latent_noise_db, noise_mode) are ignored: evaluation here is noise-free.
"""

from __future__ import annotations

import logging

from torch import Tensor

from ..config import ConfigError, ModelConfig
from .common import CheckpointError, check_types, fold_weight_norm, mixer_fields, rename, require

NAME = "reference"
logger = logging.getLogger(__name__)

BACKBONE_KEYS = ("n_layer", "d_model", "d_inner", "pre_norm", "rms_norm", "dropout", "pretrain_iter",
                 "pretrain_steps", "init_gain", "block_type", "block_cfg", "initializer_cfg", "ema_alpha",
                 "norm_epsilon", "residual_in_fp32", "do_weight_norm", "init_z_mode")
# block_cfg keys that only affect initialisation, kernels or the (disabled) noise.
BLOCK_IGNORED = ("conv_init", "dt_min", "dt_max", "dt_init_floor", "A_init_range", "use_mem_eff_path",
                 "use_materializing_scan", "state_noise_db", "latent_noise_db", "noise_mode", "dropout",
                 "process_group", "sequence_parallel", "layer_idx")
# block_cfg keys accepted only at their default value, with the default.
BLOCK_FIXED = {"norm_before_gate": False, "dt_limit": [0.0, float("inf")], "allow_negative_A_EV": False,
               "d_ssm": None}
# The keys read here, with their JSON types (block_cfg's are typed by mixer_fields), per section.
TYPES: dict[str, dict[str, type]] = {
    "": {"backbone_config": dict, "deq_params": dict, "n_tokens": int, "vocab_size": int, "pad_vocab": bool,
         "pad_vocab_size_multiple": int, "tie_embeddings": bool, "head_bias": bool},
    "backbone_config.": {"n_layer": int, "d_model": int, "d_inner": int, "pre_norm": bool, "rms_norm": bool,
                         "norm_epsilon": float, "residual_in_fp32": bool, "do_weight_norm": bool, "block_cfg": dict},
    "deq_params.": {"solver": dict, "training": dict, "norm": dict},
    "deq_params.solver.": {"f_max_iter": int, "eval_f_max_iter": int, "eval_factor": float, "f_tol": float},
    "deq_params.training.": {"tau": float},
    "deq_params.norm.": {"norm_no_scale": bool, "norm_clip": bool, "norm_clip_value": float,
                         "norm_target_norm": float}}


def matches(config: dict) -> bool:
    return config.get("model_type") == "implicit_mamba2"


def to_native(config: dict, state: dict[str, Tensor], where: str) -> tuple[ModelConfig, dict[str, Tensor], dict]:
    _check_types(config, where)
    kind = config.get("backbone_type")
    require(kind in ("implicit", "explicit"), where, f"backbone_type must be 'implicit' or 'explicit', got {kind!r}")
    backbone = config.get("backbone_config") or {}
    _check_supported(config, backbone, where)
    fields = mixer_fields(backbone.get("block_cfg") or {}, BLOCK_IGNORED, BLOCK_FIXED, where,
                          "backbone_config.block_cfg")
    n_tokens = config.get("n_tokens", config.get("vocab_size"))
    fields.update(kind=kind, vocab_size=n_tokens, d_model=backbone.get("d_model"), n_layer=backbone.get("n_layer"),
                  pad_vocab_size_multiple=config.get("pad_vocab_size_multiple", 1) if config.get("pad_vocab") else 1,
                  tie_embeddings=config.get("tie_embeddings", True), norm_eps=backbone.get("norm_epsilon", 1e-5))
    if kind == "implicit":
        fields["budget"] = eval_budget(config.get("deq_params") or {}, where)
        state = _fold(state, config.get("deq_params") or {}, backbone, where)
    try:
        cfg = ModelConfig(**fields)
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    return cfg, _rename(state, cfg), {}


def _check_types(config: dict, where: str) -> None:
    """Section by section, outermost first, so each inner section is known to be an object (or absent)."""
    for label, types in TYPES.items():
        section = config
        for name in label.split(".")[:-1]:
            section = section.get(name) or {}
        check_types(section, types, where, label)


def eval_budget(deq: dict, where: str) -> dict:
    solver = deq.get("solver") or {}
    training = deq.get("training") or {}
    eval_max = solver.get("eval_f_max_iter", 0)
    if eval_max <= 0 and "f_max_iter" not in solver:
        raise CheckpointError(f"{where}: deq_params.solver lacks 'f_max_iter' (needed for the evaluation budget)")
    max_iter = eval_max if eval_max > 0 else int(solver["f_max_iter"] * solver.get("eval_factor", 1.0))
    return {"max_iter": max_iter, "tol": float(solver.get("f_tol", 0.0)), "tau": float(training.get("tau", 1.0)),
            "solver": "fixed_point", "mode": "simultaneous"}


def _check_supported(config: dict, backbone: dict, where: str) -> None:
    unknown = sorted(set(backbone) - set(BACKBONE_KEYS))
    require(not unknown, where, f"backbone_config has unknown key(s) {unknown}; known: {sorted(BACKBONE_KEYS)}")
    require(backbone.get("ema_alpha") is None, where, "backbone_config.ema_alpha (noisy-evaluation averaging) "
            "is not supported: evaluation here is noise-free")
    require(backbone.get("residual_in_fp32", True), where, "residual_in_fp32=false is not supported")
    require(backbone.get("block_type", "mamba2") == "mamba2", where,
            f"backbone_config.block_type {backbone.get('block_type')!r} is not supported (only 'mamba2')")
    require(backbone.get("d_inner", 0) == 0, where, "backbone_config.d_inner > 0 (an MLP per block) is not supported")
    require(backbone.get("pre_norm", True), where, "backbone_config.pre_norm=false is not supported")
    require(backbone.get("rms_norm", True), where, "backbone_config.rms_norm=false (LayerNorm) is not supported")
    require(config.get("d_embed") in (None, backbone.get("d_model")), where,  # null means d_model
            "d_embed != d_model (an embedding projection) is not supported")
    require(not config.get("head_bias", False), where, "head_bias=true is not supported")
    require(backbone.get("init_z_mode") in (None, "zeros"), where,
            f"backbone_config.init_z_mode {backbone.get('init_z_mode')!r} is not supported (z0 = 0 only)")


def _fold(state: dict[str, Tensor], deq: dict, backbone: dict, where: str) -> dict[str, Tensor]:
    norm = deq.get("norm") or {}
    if not backbone.get("do_weight_norm", True) or norm.get("norm_type", "weight_norm") in (None, "none"):
        return state
    require(norm.get("norm_type", "weight_norm") == "weight_norm", where,
            f"deq_params.norm.norm_type {norm.get('norm_type')!r} is not supported (weight_norm or none)")
    # torchdeq reads the clip value from 'norm_clip_value', so the configs' 'norm_clip_val' has no effect.
    clip = norm.get("norm_clip_value", 1.0) if norm.get("norm_clip", False) else None
    return fold_weight_norm(state, learn_scale=not norm.get("norm_no_scale", False),
                            target_norm=norm.get("norm_target_norm", 1.0), clip=clip, where=where)


def _rename(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    state = rename(state, [("word_emb.emb.", "embedding."), ("criterion.decoder.", "lm_head."), ("backbone.", "")])
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as the embedding, saved twice by the reference
    return state
