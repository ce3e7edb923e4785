"""Helpers shared by the tests and the GPU checks: one tolerance table, one comparison, test models."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from .config import ModelConfig
from .models import ExplicitLM, ImplicitLM, build_model

# Relative tolerances ||a - b|| / ||b||, per compute dtype, kept in one place.
RTOL = {torch.float64: 1e-6, torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_kernel_check(check) -> None:
    """The entry point of a tests/triton_*_check.py script run on the CPU (under TRITON_INTERPRET=1): prints "ok" or
    the failing cases, and exits non-zero when there are any."""
    import sys

    problems = check("cpu")
    print("\n".join(problems) if problems else "ok")
    sys.exit(1 if problems else 0)


def assert_close(a: Tensor, b: Tensor, rtol: float | None = None, what: str = "") -> None:
    """Relative Frobenius error within rtol (default: RTOL of b's dtype); reports the error it saw."""
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), f"{what}: non-finite values"
    rtol = RTOL[b.dtype] if rtol is None else rtol
    err = rel_err(a, b)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"


def make_contractive(model: ImplicitLM, in_scale: float = 0.1, out_scale: float = 4.0,
                     inject_scale: float = 2.0) -> ImplicitLM:
    """Rescale a random implicit model so that f is a contraction.

    A random model barely contracts (identity skip followed by a norm). Making the mixer output large and
    driven mostly by the injection (small in_proj, large out_proj) makes RMSNorm_f(z + M) depend weakly on z.
    """
    with torch.no_grad():
        for layer in model.blocks:
            layer.mixer.in_proj.weight.mul_(in_scale)
            layer.mixer.out_proj.weight.mul_(out_scale)
        model.injection.weight.mul_(inject_scale)
    return model


def tiny_model(kind: str = "explicit", seed: int = 0, dtype=torch.float32, contractive: bool = False,
               **overrides) -> ExplicitLM | ImplicitLM:
    torch.manual_seed(seed)
    model = build_model(ModelConfig.tiny(kind, **overrides))
    if contractive:
        make_contractive(cast(ImplicitLM, model))  # contractive=True is for kind "implicit"
    return model.to(dtype).eval()


def write_word_tokenizer(root, words: list[str], eos: str = "<eos>", unk: str | None = None) -> None:
    """A word-level tokenizer.json over `words` (ids in order) with its tokenizer_config.json, as transformers and
    lm-eval's HF-based models read them (for tests and benchmarks: no hub)."""
    import json
    from pathlib import Path

    from tokenizers import Tokenizer, models, pre_tokenizers

    root = Path(root)
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=unk or eos))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "model_max_length": 4096}))
