"""fla's Mamba2 (bench/fla_anchor.py) against this project's ExplicitLM on the same mamba_ssm-format checkpoints, run
by model_adapters/test_fla_anchor.py: in-process on CUDA, in a subprocess with TRITON_INTERPRET=1 on the CPU (fla's
block RMSNorm is a Triton kernel only; its mixer takes a torch path on the CPU).

    TRITON_INTERPRET=1 python tests/fla_check.py      # prints the errors seen, then "ok" or the failures

Three checkpoints (see checkpoints()): tests/fixtures/mamba_ssm_tiny, written by mamba_ssm itself with its own
logits (2 groups: CUDA only, since fla's CPU path is wrong for ngroups > 1), and two random ones written here in
mamba_ssm's format. Logits must agree to 1e-5 relative on the CPU (float32 throughout) and 5e-3 on CUDA (mamba_ssm's
scan may run its float32 dots in TF32 there, if compiled before TRITON_F32_DEFAULT=ieee was set); greedy tokens
exactly, through a bare loop over fla's cache and through fla's generate (where this transformers' generate hands
fla its cache; elsewhere fla_generate must refuse).
"""

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

# appended, not prepended: bench/kernels.py must not shadow the `kernels` package transformers may import
sys.path.append(str(Path(__file__).parents[1] / "bench"))
FIXTURE = Path(__file__).parent / "fixtures" / "mamba_ssm_tiny"
RTOL = {"cpu": 1e-5, "cuda": 5e-3}


def save_as_mamba_ssm(model, directory: Path) -> None:
    """Our explicit model as mamba_ssm's MambaLMHeadModel.save_pretrained writes it: config.json (MambaConfig's
    fields) and pytorch_model.bin (backbone.embedding, backbone.layers.*, backbone.norm_f, lm_head)."""
    cfg = model.cfg
    ssm = {"layer": "Mamba2", "d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand,
           "headdim": cfg.headdim, "ngroups": cfg.ngroups, "chunk_size": cfg.chunk_size, "D_has_hdim": cfg.D_has_hdim,
           "rmsnorm": cfg.rmsnorm, "conv_bias": cfg.conv_bias, "bias": cfg.bias}
    config = {"d_model": cfg.d_model, "d_intermediate": 0, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
              "ssm_cfg": ssm, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
              "fused_add_norm": True, "pad_vocab_size_multiple": cfg.pad_vocab_size_multiple,
              "tie_embeddings": cfg.tie_embeddings}
    state = {k if k.startswith("lm_head.") else "backbone." + k: v.detach().clone()
             for k, v in model.state_dict().items()}
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config, indent=4))
    torch.save(state, directory / "pytorch_model.bin")


def random_checkpoint(directory: Path, seed: int, **overrides) -> Path:
    """A random tiny explicit model (2 layers, d_model 64, vocabulary 50) saved in mamba_ssm's format."""
    from implicit_ssm_eval.model_adapters.testing import tiny_model

    settings = dict(vocab_size=50, pad_vocab_size_multiple=16, d_model=64, headdim=16, d_state=16, ngroups=1,
                    chunk_size=16)
    model = tiny_model("explicit", seed=seed, **{**settings, **overrides})
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # norms and D away from 1, biases away from 0: every term counts
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                p.mul_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            elif name.endswith("bias") and "dt_bias" not in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    save_as_mamba_ssm(model, directory)
    return directory


def checkpoints(tmp: Path) -> list[Path]:
    """mamba_ssm's own tiny checkpoint, then two of ours: D per channel, biases, an untied head; and a tied head,
    no gated norm (the SiLU gate alone), a 3-tap conv, chunks of 32 and 2 heads of 64."""
    return [FIXTURE,
            random_checkpoint(tmp / "untied", 3, D_has_hdim=True, bias=True, tie_embeddings=False),
            random_checkpoint(tmp / "ungated", 5, rmsnorm=False, d_conv=3, chunk_size=32, headdim=64)]


def our_logits(model, ids):
    with torch.no_grad():
        return model.logits(model(ids).hidden)


def our_greedy(model, prompts, n: int):
    """Greedy tokens by full forwards over the growing sequence: no cache, nothing shared with fla's decoding."""
    seq = prompts
    for _ in range(n):
        seq = torch.cat([seq, our_logits(model, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompts.shape[1]:]


def check(device: str) -> list[str]:
    """The failures (empty: all pass); the errors seen go to stderr."""
    from fla_anchor import FLA_VERSION, fla_generate, fla_greedy_loop, fla_logits, generate_reads_fla_cache, load_fla

    from implicit_ssm_eval.model_adapters.formats import load_checkpoint
    from implicit_ssm_eval.model_adapters.testing import rel_err

    torch.backends.cuda.matmul.allow_tf32 = False
    os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # float32 dots in full precision where not compiled yet
    hows = [("loop", fla_greedy_loop)] + ([("generate", fla_generate)] if generate_reads_fla_cache() else [])
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for directory in checkpoints(Path(tmp)):
            name = directory.name
            ours = load_checkpoint(directory, device=device).model
            if device == "cpu" and ours.cfg.ngroups > 1:
                print(f"{name}: skipped on the CPU: fla {FLA_VERSION}'s torch path tiles B and C over the heads "
                      "(repeat, not repeat_interleave), wrong for ngroups > 1; CUDA runs mamba_ssm's kernels",
                      file=sys.stderr)
                continue
            fla = load_fla(directory, dtype=torch.float32, device=device)
            ids = torch.randint(0, ours.cfg.vocab_size, (2, 37), generator=torch.Generator().manual_seed(0))
            ids = ids.to(device)
            errors = {"fla vs ours": rel_err(fla_logits(fla, ids).float(), our_logits(ours, ids))}
            if directory == FIXTURE:  # mamba_ssm's own float32 logits
                from safetensors.torch import load_file

                golden = load_file(str(directory / "expected.safetensors"))
                theirs = fla_logits(fla, golden["input_ids"].to(device)).float().cpu()
                errors["fla vs mamba_ssm"] = rel_err(theirs, golden["logits"])
            print(f"{name}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()), file=sys.stderr)
            failures += [f"{name}: logits {k}: relative error {v:.2e} > {RTOL[device]:.0e}"
                         for k, v in errors.items() if not v <= RTOL[device]]
            prompts, n = ids[:, :9], 6
            want = our_greedy(ours, prompts, n)
            for how, generate in hows:
                with torch.no_grad():
                    tokens = generate(fla, prompts, n)
                if not torch.equal(tokens, want):
                    failures.append(f"{name}: greedy tokens through fla's {how} {tokens.tolist()} != ours "
                                    f"{want.tolist()}")
    if len(hows) == 1:  # this transformers passes `cache`: fla_generate must refuse rather than decode statelessly
        print("fla's generate not checked: this transformers' generate passes `cache`, which fla ignores",
              file=sys.stderr)
        try:
            fla_generate(fla, prompts, 2)
            failures.append("fla_generate ran although this transformers' generate leaves fla's cache unread")
        except RuntimeError:
            pass
    return failures


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1":  # as tests/fixtures/make_mamba_ssm_fixture.py runs mamba_ssm
        from triton.runtime import autotuner

        torch.cuda.device = lambda index: contextlib.nullcontext()
        autotuner.Autotuner._bench = lambda self, *args, config, **kwargs: [0.0, 0.0, 0.0]
    problems = check("cuda" if torch.cuda.is_available() else "cpu")
    print("\n".join(problems) if problems else "ok")
    sys.exit(1 if problems else 0)
