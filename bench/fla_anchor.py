"""flash-linear-attention's Mamba2 (`fla.models.mamba2`, fla 0.6.0) as a second anchor beside mamba_ssm: a
mamba_ssm MambaLMHeadModel checkpoint directory (what save_pretrained writes: config.json and pytorch_model.bin or
model.safetensors) loaded into fla's Mamba2ForCausalLM with the same weights, its scoring forward timed, and greedy
decoding with its own cache, through its own generate (transformers' GenerationMixin) and through a bare loop.

    model = load_fla(directory, dtype=torch.bfloat16, device="cuda")
    fla_forward_ms(model, ids)                    # batch x length scoring forward with logits
    fla_decode_tokens_per_s(model, prompts)       # steady-state greedy tokens/s, as gpu_bench's decode section

What fla runs on CUDA: the mixer's projections in torch, its own Triton causal conv (fla's `causal_conv1d` where the
causal-conv1d package is absent), mamba_ssm's SSD chunk scan and state update (`mamba_chunk_scan_combined`,
`selective_state_update`: fla imports them from mamba_ssm, so mamba_ssm must be installed), its own Triton gated
RMSNorm and block RMSNorms. On the CPU it takes a naive torch path for the mixer (the chunked SSD in einsum-free
torch) but its block RMSNorms are Triton only: on the CPU they need TRITON_INTERPRET=1 (tests/fla_check.py).

Where fla's model differs from mamba_ssm's on the same weights (read from the fla 0.6.0 source):
- the residual stream between blocks: mamba_ssm keeps it in float32 (residual_in_fp32, fused add + norm); fla adds
  in float32 but stores each block's output in the block norm's weight dtype, i.e. bfloat16 in a bfloat16 model
  (no difference in float32). Its block norm and residual add are two kernels, not one fused add + norm.
- one eps (norm_eps) for the block norms, the final norm and the mixer's gated norm; mamba_ssm has norm_epsilon for
  the first two and a fixed 1e-5 in the mixer: a checkpoint with another norm_epsilon is refused here.
- fuse_norm is not read by fla's Mamba2 (its blocks always use the plain Triton RMSNorm); fuse_cross_entropy and
  fuse_linear_cross_entropy only matter with labels (a loss), which no function here passes.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from implicit_ssm_eval.model_adapters.config import ModelConfig
from implicit_ssm_eval.model_adapters.formats import mamba_ssm as mamba_ssm_format
from implicit_ssm_eval.model_adapters.formats.common import (
    CheckpointError,
    read_json,
    read_weights,
    weight_files,
    weights_file,
)

FLA_VERSION = "0.6.0"
# mamba_ssm's per-layer tensors (Block with a Mamba2 mixer and no MLP); fla's Mamba2Block has the same names.
LAYER_KEY = re.compile(r"backbone\.layers\.\d+\.(norm\.weight|mixer\.(in_proj\.weight|in_proj\.bias|conv1d\.weight|"
                       r"conv1d\.bias|dt_bias|A_log|D|norm\.weight|out_proj\.weight|out_proj\.bias))")


def fla_missing() -> str | None:
    """None when fla's Mamba2 model imports, else why it does not (for a clean skip)."""
    try:
        import fla.models.mamba2  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure to import means no fla anchor
        return f"flash-linear-attention is not importable ({type(exc).__name__}: {exc})"
    return None


def fla_config_kwargs(cfg: ModelConfig, residual_in_fp32: bool = True) -> dict:
    """fla Mamba2Config arguments for a mamba_ssm checkpoint's settings (as our loader reads them into cfg)."""
    if cfg.kind != "explicit":
        raise ValueError(f"fla's Mamba2 is an explicit model; got a {cfg.kind!r} config")
    if cfg.mixer_norm_eps != cfg.norm_eps:
        raise ValueError(f"fla's Mamba2 has one eps for all its norms; this model has norm_eps={cfg.norm_eps} and "
                         f"mixer_norm_eps={cfg.mixer_norm_eps}")
    return dict(vocab_size=cfg.padded_vocab_size,  # the embedding's rows: logits as wide as mamba_ssm's
                hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer, state_size=cfg.d_state, expand=cfg.expand,
                head_dim=cfg.headdim, n_groups=cfg.ngroups, conv_kernel=cfg.d_conv, chunk_size=cfg.chunk_size,
                use_bias=cfg.bias, use_conv_bias=cfg.conv_bias, D_has_hdim=cfg.D_has_hdim, rmsnorm=cfg.rmsnorm,
                norm_before_gate=False,  # mamba_ssm's Mamba2 default: gate by SiLU(z), then normalise
                norm_eps=cfg.norm_eps, hidden_act="silu", dt_limit=(0.0, math.inf),
                residual_in_fp32=residual_in_fp32, tie_word_embeddings=cfg.tie_embeddings,
                fuse_cross_entropy=False, fuse_linear_cross_entropy=False,  # loss only; no labels here
                # no end-of-sequence token: generation runs to its length, as mamba_ssm's generate does
                pad_token_id=0, bos_token_id=None, eos_token_id=None)


def fla_state_dict(state: dict[str, Tensor], tie: bool, where: str = "weights") -> dict[str, Tensor]:
    """mamba_ssm MambaLMHeadModel keys -> fla Mamba2ForCausalLM keys. Only the embedding is renamed
    (backbone.embedding -> backbone.embeddings); layers, final norm and head keep their names. A tied head is the
    embedding itself (fla's state dict lists it under both names). Unknown keys are refused."""
    out = {}
    for key, value in state.items():
        if key == "backbone.embedding.weight":
            out["backbone.embeddings.weight"] = value
        elif key in ("backbone.norm_f.weight", "lm_head.weight") or LAYER_KEY.fullmatch(key):
            out[key] = value
        else:
            raise CheckpointError(f"{where}: key '{key}' has no counterpart in fla's Mamba2")
    if "backbone.embeddings.weight" not in out:
        raise CheckpointError(f"{where}: missing key 'backbone.embedding.weight'")
    if tie:
        out["lm_head.weight"] = out["backbone.embeddings.weight"]
    return out


def load_fla(directory: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """fla's Mamba2ForCausalLM holding a mamba_ssm checkpoint's weights, strictly (every key, every shape), in eval
    mode. The whole model is cast to dtype, as gpu_bench casts mamba_ssm's (block norms included)."""
    from fla.models.mamba2 import Mamba2Config, Mamba2ForCausalLM

    directory = Path(directory)
    where = str(directory / "config.json")
    config = read_json(directory / "config.json")
    if not mamba_ssm_format.matches(config):
        raise CheckpointError(f"{where}: not a mamba_ssm MambaLMHeadModel config (ssm_cfg, d_model, n_layer)")
    state = read_weights(weight_files(weights_file(directory)))
    cfg, _, _ = mamba_ssm_format.to_native(config, dict(state), where)  # validates, fills mamba_ssm's defaults
    fla_cfg = Mamba2Config(**fla_config_kwargs(cfg, config.get("residual_in_fp32", True)))
    with torch.device(device):
        model = Mamba2ForCausalLM(fla_cfg)
    model.load_state_dict(fla_state_dict(state, cfg.tie_embeddings, where), strict=True)
    if cfg.tie_embeddings and model.lm_head.weight.data_ptr() != model.backbone.embeddings.weight.data_ptr():
        raise RuntimeError("fla's lm_head is not tied to its embedding although the checkpoint ties them")
    return model.to(dtype=dtype).eval().requires_grad_(False)


def fla_logits(model, ids: Tensor) -> Tensor:
    """The scoring forward: logits at every position (padded vocabulary, model dtype), no cache."""
    return model(input_ids=ids, use_cache=False).logits


def generate_reads_fla_cache() -> bool:
    """Whether transformers' generate hands fla's forward its cache as `past_key_values`, the argument fla 0.6.0
    reads. Releases whose generate passes `cache` instead (5.25 does, 5.17 does not) leave fla's forward without
    its state: every step after the prefill would decode from an empty state."""
    import inspect

    from transformers.generation import GenerationMixin

    return "cache" not in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters


def fla_generate(model, prompts: Tensor, n: int) -> Tensor:
    """n greedy tokens per row through fla's own generation (transformers' generate with fla's Cache)."""
    if not generate_reads_fla_cache():
        import transformers

        raise RuntimeError(f"fla {FLA_VERSION}'s generate cannot decode under transformers {transformers.__version__}:"
                           " its generate passes the cache as `cache`, which fla's forward ignores; use the loop")
    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                         do_sample=False, use_cache=True, pad_token_id=0)
    if out.shape != (prompts.shape[0], prompts.shape[1] + n):
        raise RuntimeError(f"fla's generate returned shape {tuple(out.shape)}, expected {prompts.shape[0]} x "
                           f"{prompts.shape[1] + n}")
    return out[:, prompts.shape[1]:]


def fla_greedy_loop(model, prompts: Tensor, n: int) -> Tensor:
    """n greedy tokens per row with fla's cache and no generation machinery: a prefill keeping the last logits, then
    one single-token forward per step (fla's cached decoding: conv update, mamba_ssm's selective_state_update)."""
    out = model(input_ids=prompts, use_cache=True, logits_to_keep=1)
    tokens = torch.empty(prompts.shape[0], n, dtype=torch.long, device=prompts.device)
    tokens[:, 0] = out.logits[:, -1].argmax(-1)
    cache = out.past_key_values
    for i in range(1, n):
        out = model(input_ids=tokens[:, i - 1:i], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        tokens[:, i] = out.logits[:, -1].argmax(-1)
    return tokens


def _median_ms(fn, warmup: int, reps: int) -> float:
    """Median milliseconds of fn() over reps, CUDA events, after warm-up (gpu_bench's `timed`)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def fla_forward_ms(model, ids: Tensor, rounds: int = 2, warmup: int = 3, reps: int = 10) -> float:
    """Milliseconds of one scoring forward with logits: the best of `rounds` medians, as gpu_bench's forward
    section takes them (its rounds interleave models; here they follow each other)."""
    with torch.inference_mode():
        return min(_median_ms(lambda: fla_logits(model, ids), warmup, reps) for _ in range(rounds))


def fla_decode_tokens_per_s(model, prompts: Tensor, short: int = 64, long: int = 320, how: str = "generate") -> float:
    """Steady-state greedy tokens/s for the batch of prompts (batch x prompt length): (long - short) tokens per row
    over the time between a short and a long generation, best of two each after a warm-up short one (gpu_bench's
    decode_rate: prefill and set-up cancel). how: "generate" (fla's own generation) or "loop" (its cache, bare)."""
    if how not in ("generate", "loop"):
        raise ValueError(f"how must be 'generate' or 'loop', got {how!r}")
    if not 0 < short < long:
        raise ValueError(f"need 0 < short < long, got short={short}, long={long}")
    generate = fla_generate if how == "generate" else fla_greedy_loop

    def run(n: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        generate(model, prompts, n)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        run(short)  # warm-up: Triton compiles each kernel on first use
        t_short, t_long = min(run(short) for _ in range(2)), min(run(long) for _ in range(2))
    return prompts.shape[0] * (long - short) / (t_long - t_short)
