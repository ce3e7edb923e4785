"""bench/fla_anchor.py: flash-linear-attention's Mamba2 loaded with a mamba_ssm checkpoint's weights. The key and
config mapping here (no fla needed); the logits and greedy tokens against our ExplicitLM in tests/fla_check.py, on
CUDA in-process and on the CPU under Triton's interpreter (fla's block RMSNorm is Triton only), where fla is
installed (it is not a dependency of this project: the benchmark machine gets it as a wheel)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from implicit_ssm_eval.model_adapters.config import ModelConfig
from implicit_ssm_eval.model_adapters.formats import CheckpointError

sys.path.append(str(Path(__file__).parents[2] / "bench"))  # appended: bench/kernels.py must shadow nothing
import fla_anchor  # noqa: E402

HAS_FLA = importlib.util.find_spec("fla") is not None and importlib.util.find_spec("triton") is not None


def mamba_ssm_state(n_layer: int = 2, tie: bool = True) -> dict:
    """mamba_ssm MambaLMHeadModel key names (Mamba2 mixers with biases), one distinct tensor per key."""
    names = ["backbone.embedding.weight", "backbone.norm_f.weight"]
    for i in range(n_layer):
        names += [f"backbone.layers.{i}.norm.weight"] + [
            f"backbone.layers.{i}.mixer.{k}" for k in ("in_proj.weight", "in_proj.bias", "conv1d.weight",
                                                       "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
                                                       "out_proj.weight", "out_proj.bias")]
    state = {name: torch.full((2,), float(i)) for i, name in enumerate(names)}
    state["lm_head.weight"] = state["backbone.embedding.weight"] if tie else torch.full((2,), -1.0)
    return state


def test_only_the_embedding_is_renamed():
    state = mamba_ssm_state()
    mapped = fla_anchor.fla_state_dict(state, tie=False)
    assert mapped["backbone.embeddings.weight"] is state["backbone.embedding.weight"]
    assert "backbone.embedding.weight" not in mapped
    assert {k: v for k, v in mapped.items() if k != "backbone.embeddings.weight"} == \
        {k: v for k, v in state.items() if k != "backbone.embedding.weight"}


def test_an_untied_head_keeps_its_weights_and_a_tied_one_is_the_embedding():
    state = mamba_ssm_state(tie=False)
    assert torch.equal(fla_anchor.fla_state_dict(state, tie=False)["lm_head.weight"], torch.full((2,), -1.0))
    tied = fla_anchor.fla_state_dict({k: v for k, v in state.items() if k != "lm_head.weight"}, tie=True)
    assert tied["lm_head.weight"] is state["backbone.embedding.weight"]


@pytest.mark.parametrize("key", ["backbone.layers.0.mlp.fc1.weight", "backbone.layers.0.mixer.x_proj.weight",
                                 "backbone.layers.0.mixer.in_proj.weight.extra", "model.embed_tokens.weight"])
def test_keys_fla_has_no_place_for_are_refused(key):
    state = {**mamba_ssm_state(), key: torch.zeros(1)}
    with pytest.raises(CheckpointError, match="no counterpart in fla"):
        fla_anchor.fla_state_dict(state, tie=True, where="ckpt")


def test_a_missing_embedding_is_named():
    state = {k: v for k, v in mamba_ssm_state().items() if "embedding" not in k}
    with pytest.raises(CheckpointError, match="missing key 'backbone.embedding.weight'"):
        fla_anchor.fla_state_dict(state, tie=True)


def test_config_follows_the_checkpoint():
    cfg = ModelConfig(vocab_size=50277, pad_vocab_size_multiple=16, d_model=768, n_layer=24, d_state=128,
                      headdim=64, ngroups=2, chunk_size=256, d_conv=3, D_has_hdim=True, rmsnorm=False, bias=True,
                      conv_bias=False, norm_eps=1e-6, mixer_norm_eps=1e-6, tie_embeddings=False)
    kw = fla_anchor.fla_config_kwargs(cfg, residual_in_fp32=False)
    assert kw["vocab_size"] == 50288  # the padded embedding: logits as wide as mamba_ssm's
    assert (kw["hidden_size"], kw["num_hidden_layers"], kw["state_size"], kw["head_dim"], kw["n_groups"],
            kw["expand"], kw["conv_kernel"], kw["chunk_size"]) == (768, 24, 128, 64, 2, 2, 3, 256)
    assert (kw["D_has_hdim"], kw["rmsnorm"], kw["use_bias"], kw["use_conv_bias"], kw["norm_eps"],
            kw["tie_word_embeddings"], kw["residual_in_fp32"]) == (True, False, True, False, 1e-6, False, False)
    assert kw["norm_before_gate"] is False and kw["eos_token_id"] is None and kw["hidden_act"] == "silu"


def test_two_norm_epsilons_are_refused():
    cfg = ModelConfig(norm_eps=1e-6, mixer_norm_eps=1e-5)
    with pytest.raises(ValueError, match="one eps for all its norms"):
        fla_anchor.fla_config_kwargs(cfg)


def test_an_implicit_config_is_refused():
    with pytest.raises(ValueError, match="explicit"):
        fla_anchor.fla_config_kwargs(ModelConfig.tiny("implicit"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_FLA, reason="needs flash-linear-attention (fla) and triton")
def test_fla_matches_ours_on_cuda():
    import fla_check

    assert fla_check.check("cuda") == []


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FLA, reason="needs flash-linear-attention (fla) and triton")
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the native test runs")
def test_fla_matches_ours_in_the_interpreter():
    script = Path(__file__).parents[1] / "fla_check.py"
    out = subprocess.run([sys.executable, str(script)], env={**os.environ, "TRITON_INTERPRET": "1"},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-2000:] + out.stderr[-2000:]
