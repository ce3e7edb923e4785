"""Explicit LM: full forward vs prefill + cached steps; precision; vocabulary padding."""

import pytest
import torch

from implicit_ssm_eval.model_adapters.config import Budget, ConfigError, ModelConfig
from implicit_ssm_eval.model_adapters.testing import assert_close, tiny_model


@pytest.mark.parametrize("length", [1, 7, 63])
def test_explicit_forward_equals_prefill_plus_steps(length):
    model = tiny_model("explicit", dtype=torch.float64)
    ids = torch.randint(0, 37, (3, length))
    full = model(ids)
    split = max(1, length // 2)
    pre = model(ids[:, :split])
    state, hidden = pre.state, [pre.hidden]
    for t in range(split, length):
        out = model.step(ids[:, t], state)
        state = out.state
        hidden.append(out.hidden[:, None])
    assert_close(torch.cat(hidden, 1), full.hidden, 1e-6, "hidden")
    for i, (a, b) in enumerate(zip(state, full.state)):
        assert_close(a.ssm, b.ssm, 1e-6, f"layer {i} ssm state")
        assert_close(a.conv, b.conv, 1e-6, f"layer {i} conv state")


def test_explicit_padded_batch_matches_single_sequences():
    model = tiny_model("explicit", dtype=torch.float64)
    lengths = torch.tensor([5, 12, 1])
    ids = torch.randint(0, 37, (3, 12))
    out = model(ids, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = model(ids[i : i + 1, :n])
        assert_close(out.hidden[i, :n], alone.hidden[0], 1e-6, f"hidden {i}")
        assert_close(out.state[-1].ssm[i], alone.state[-1].ssm[0], 1e-6, f"state {i}")


def test_vocab_padding_and_tied_head():
    model = tiny_model("explicit")
    assert model.cfg.padded_vocab_size == 40 and model.embedding.weight.shape[0] == 40
    assert model.lm_head.weight is model.embedding.weight
    logits = model.logits(model(torch.randint(0, 37, (1, 4))).hidden)
    assert logits.shape == (1, 4, 40) and logits.dtype == torch.float32
    untied = tiny_model("explicit", tie_embeddings=False)
    assert untied.lm_head.weight is not untied.embedding.weight


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_low_precision_keeps_residual_and_iterate_in_float32(kind, dtype):
    ref = tiny_model(kind, contractive=kind == "implicit")
    low = tiny_model(kind, contractive=kind == "implicit", dtype=dtype)
    ids = torch.randint(0, 37, (2, 19))
    budget = Budget(max_iter=6) if kind == "implicit" else None
    out_low, out_ref = low(ids, budget), ref(ids, budget)
    assert out_low.hidden.dtype == torch.float32
    if kind == "implicit":
        assert out_low.stats.residual.dtype == torch.float32
    assert_close(out_low.hidden, out_ref.hidden, 3e-2, f"{dtype} vs float32")


def test_bad_token_ids_are_reported():
    model = tiny_model("explicit")
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 40\)"):
        model(torch.tensor([[1, 45]]))


def test_explicit_rejects_a_budget():
    model = tiny_model("explicit")
    with pytest.raises(ConfigError, match="no fixed-point budget"):
        model(torch.tensor([[1, 2]]), Budget())


@pytest.mark.parametrize("bad,match", [
    (dict(kind="hybrid"), "kind must be one of"),
    (dict(d_model=0), "d_model must be a positive integer"),
    (dict(headdim=7), "multiple of headdim"),
    (dict(ngroups=3), "multiple of ngroups"),
    (dict(budget={"max_iter": 4}), "explicit model has no fixed-point budget"),
])
def test_model_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig.from_dict({**ModelConfig.tiny("explicit").to_dict(), **bad})


def test_model_config_rejects_unknown_keys_and_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['d_modle'\]; valid keys are .*'d_model'"):
        ModelConfig.from_dict({"d_modle": 64})
