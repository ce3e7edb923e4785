"""Logits of this project's loader vs mamba_ssm's own MambaLMHeadModel on the 130M configuration (random
init, 1024-token sequences), per backend and dtype, with mamba_ssm's own bf16-vs-fp32 gap as the yardstick.

    python bench/check_mamba_ssm_parity.py --out $OUT/parity.json
    TRITON_INTERPRET=1 python bench/check_mamba_ssm_parity.py --device cpu --d-model 256 --n-layer 4 \
        --seq-len 128 --backends torch --out parity_cpu.json    # smaller, on CPU (Triton interpreter)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch

from implicit_ssm_eval.model_adapters.formats import load_checkpoint
from implicit_ssm_eval.model_adapters.runtime import Runtime
from implicit_ssm_eval.model_adapters.testing import rel_err


def next_token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    return lp.gather(-1, ids[:, 1:, None])[..., 0]


def main() -> None:
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-layer", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--backends", nargs="+", default=["torch", "triton"])
    args = p.parse_args()
    dev = args.device
    if os.environ.get("TRITON_INTERPRET") == "1":  # mamba_ssm's kernels on CPU: no CUDA device, no autotuning
        from triton.runtime import autotuner

        torch.cuda.device = lambda index: contextlib.nullcontext()
        autotuner.Autotuner._bench = lambda self, *a, config, **kw: [0.0, 0.0, 0.0]
    root = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, d_intermediate=0, vocab_size=50277,
                      pad_vocab_size_multiple=16,
                      ssm_cfg={"layer": "Mamba2", "use_mem_eff_path": False}, rms_norm=True, residual_in_fp32=True,
                      fused_add_norm=True, tie_embeddings=True)
    ref = MambaLMHeadModel(cfg, device=dev, dtype=torch.float32).eval()
    ref.save_pretrained(str(root))
    ids = torch.randint(0, 50277, (2, args.seq_len), device=dev)
    out = {}
    with torch.no_grad():
        golden = ref(ids).logits.float()
        golden_lp = next_token_logprobs(golden, ids)
        ref_bf16 = MambaLMHeadModel(cfg, device=dev, dtype=torch.bfloat16).eval()
        ref_bf16.load_state_dict(ref.state_dict())
        lg = ref_bf16(ids).logits.float()
        ref_bf16_lp = next_token_logprobs(lg, ids)
        diff = (ref_bf16_lp - golden_lp).abs().mean()
        out["mamba_ssm_bf16"] = {"rel_err": rel_err(lg, golden), "mean_abs_logprob_diff": float(diff)}
        for backend in args.backends:
            for dtype in (torch.float32, torch.bfloat16):
                ckpt = load_checkpoint(root, dtype=dtype, device=dev)
                runtime = Runtime(ckpt.model, backend)
                lg = runtime.logits(runtime(ids).hidden)[..., : golden.shape[-1]]
                lp = next_token_logprobs(lg, ids)
                out[f"ours_{backend}_{str(dtype)[6:]}"] = {
                    "rel_err": rel_err(lg, golden),
                    "mean_abs_logprob_diff": float((lp - golden_lp).abs().mean()),
                    # the gap the lm-eval comparison saw: same dtype, the two implementations
                    "vs_mamba_ssm_same_dtype": float((lp - (ref_bf16_lp if dtype == torch.bfloat16 else golden_lp))
                                                     .abs().mean())}
    out["golden_mean_logprob"] = float(golden_lp.mean())
    args.out.write_text(json.dumps(out, indent=2))
    for key, value in out.items():
        print(f"{key:28s} {value}")


if __name__ == "__main__":
    main()
