"""Chunked vs recurrent SSD, and the mixer's parallel form vs its step form: outputs and states."""

import pytest
import torch

from implicit_ssm_eval.model_adapters.config import ModelConfig
from implicit_ssm_eval.model_adapters.mamba2 import Mamba2
from implicit_ssm_eval.model_adapters.ssd import ssd_chunked, ssd_recurrent
from implicit_ssm_eval.model_adapters.testing import assert_close

LENGTHS = [1, 7, 63, 257]


def random_ssd_inputs(batch, length, nheads, headdim, ngroups, dstate, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    dt = torch.rand(batch, length, nheads, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(nheads, generator=g, dtype=dtype) * 2 - 0.1
    return (r(batch, length, nheads, headdim), dt, A, r(batch, length, ngroups, dstate),
            r(batch, length, ngroups, dstate), r(nheads), r(batch, nheads, headdim, dstate))


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("chunk", [16, 64])
def test_chunked_matches_recurrent(length, ngroups, chunk):
    x, dt, A, B, C, D, s0 = random_ssd_inputs(2, length, 4, 3, ngroups, 5, seed=length)
    y, final = ssd_chunked(x, dt, A, B, C, chunk, D=D, initial_state=s0)
    y_ref, final_ref = ssd_recurrent(x, dt, A, B, C, D=D, initial_state=s0)
    assert_close(y, y_ref, 1e-6, "outputs")
    assert_close(final, final_ref, 1e-6, "final state")


def test_chunked_without_initial_state_or_D():
    x, dt, A, B, C, _, _ = random_ssd_inputs(1, 40, 2, 4, 1, 3)
    y, final = ssd_chunked(x, dt, A, B, C, 16)
    y_ref, final_ref = ssd_recurrent(x, dt, A, B, C)
    assert_close(y, y_ref, 1e-6, "outputs")
    assert_close(final, final_ref, 1e-6, "final state")


def test_chunked_splits_compose():
    """Scanning [0, a) then [a, L) from the carried state equals one scan: initial states are honoured."""
    x, dt, A, B, C, D, _ = random_ssd_inputs(2, 50, 4, 3, 2, 5)
    y, final = ssd_chunked(x, dt, A, B, C, 16, D=D)
    y1, s1 = ssd_chunked(x[:, :21], dt[:, :21], A, B[:, :21], C[:, :21], 16, D=D)
    y2, s2 = ssd_chunked(x[:, 21:], dt[:, 21:], A, B[:, 21:], C[:, 21:], 16, D=D, initial_state=s1)
    assert_close(torch.cat([y1, y2], 1), y, 1e-6, "outputs")
    assert_close(s2, final, 1e-6, "final state")


def make_mixer(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = ModelConfig.tiny(**overrides)
    mixer = Mamba2(cfg).double()
    with torch.no_grad():  # non-trivial D, norm weight and conv bias so every term is exercised
        mixer.D.uniform_(0.5, 1.5)
        if cfg.rmsnorm:
            mixer.norm.weight.uniform_(0.5, 1.5)
    return mixer, cfg


MIXER_CASES = [dict(ngroups=1), dict(ngroups=2), dict(D_has_hdim=True), dict(rmsnorm=False),
               dict(conv_bias=False, bias=True), dict(d_conv=2)]


@pytest.mark.parametrize("overrides", MIXER_CASES, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
@pytest.mark.parametrize("length", [1, 7, 63])
def test_mixer_forward_matches_step_loop(overrides, length):
    mixer, cfg = make_mixer(**overrides)
    u = torch.randn(3, length, cfg.d_model, dtype=torch.float64)
    inject = torch.randn(3, length, cfg.d_in_proj, dtype=torch.float64)
    out, state = mixer(u, inject)
    step_state, outs = mixer.empty_state(3), []
    for t in range(length):
        o, step_state = mixer.step(u[:, t], step_state, inject[:, t])
        outs.append(o)
    assert_close(torch.stack(outs, 1), out, 1e-6, "outputs")
    assert_close(step_state.ssm, state.ssm, 1e-6, "ssm state")
    assert_close(step_state.conv, state.conv, 1e-6, "conv state")


@pytest.mark.parametrize("length", [1, 7, 63])
def test_an_evaluation_that_does_not_commit_gives_the_same_output_and_no_state(length):
    """commit=False (a fixed-point iteration before the final evaluation) skips the state, never the output: in the
    parallel form from a non-zero state (one chunk and several; bit for bit), and in the step form (which then
    computes y without forming the new state)."""
    mixer, cfg = make_mixer(ngroups=2)
    state = mixer(torch.randn(3, 5, cfg.d_model, dtype=torch.float64))[1]
    u = torch.randn(3, length, cfg.d_model, dtype=torch.float64)
    inject = torch.randn(3, length, cfg.d_in_proj, dtype=torch.float64)
    valid = torch.arange(length)[None] < torch.tensor([length, max(length - 2, 1), 1])[:, None]
    committed, new_state = mixer(u, inject, state, valid)
    iterated, none = mixer(u, inject, state, valid, commit=False)
    assert none is None and new_state is not None
    assert torch.equal(iterated, committed)
    stepped, none = mixer.step(u[:, 0], state, inject[:, 0], commit=False)  # y = a (S C) + (x dt)(B . C): rounding
    assert none is None
    assert_close(stepped, mixer.step(u[:, 0], state, inject[:, 0])[0], 1e-12, "step output")
    x, dt, A, B, C, D, s0 = random_ssd_inputs(2, length, 4, 3, 2, 5, seed=length)
    y, final = ssd_chunked(x, dt, A, B, C, 16, D=D, initial_state=s0, final_state=False)
    assert final is None and torch.equal(y, ssd_chunked(x, dt, A, B, C, 16, D=D, initial_state=s0)[0])


def test_step_does_not_mutate_state():
    mixer, cfg = make_mixer()
    state = mixer(torch.randn(2, 5, cfg.d_model, dtype=torch.float64))[1]
    before = (state.conv.clone(), state.ssm.clone())
    mixer.step(torch.randn(2, cfg.d_model, dtype=torch.float64), state)
    assert torch.equal(state.conv, before[0]) and torch.equal(state.ssm, before[1])


def test_right_padding_leaves_each_sequence_unchanged():
    """Padded steps get dt = 0 and the conv window is read at each sequence's end, so the final states of a
    right-padded batch equal those of each sequence run alone."""
    mixer, cfg = make_mixer(ngroups=2)
    lengths = [9, 3, 14]
    seqs = [torch.randn(1, n, cfg.d_model, dtype=torch.float64) for n in lengths]
    batch = torch.zeros(3, 14, cfg.d_model, dtype=torch.float64)
    for i, s in enumerate(seqs):
        batch[i, : lengths[i]] = s[0]
    valid = torch.arange(14) < torch.tensor(lengths)[:, None]
    out, state = mixer(batch, valid=valid)
    for i, s in enumerate(seqs):
        o, st = mixer(s)
        assert_close(out[i, : lengths[i]], o[0], 1e-6, f"outputs of sequence {i}")
        assert_close(state.ssm[i], st.ssm[0], 1e-6, f"ssm state of sequence {i}")
        assert_close(state.conv[i], st.conv[0], 1e-6, f"conv state of sequence {i}")


def test_a_step_outside_valid_keeps_the_rows_state_and_the_others_take_it():
    """valid (B,) in the step form: an ended row's conv and SSM states come back bit for bit (dt = 0 there, as for
    padding in the parallel form), the other rows' states and outputs are the unmasked step's."""
    mixer, cfg = make_mixer(ngroups=2)
    state = mixer(torch.randn(3, 5, cfg.d_model, dtype=torch.float64))[1]
    u, inject = torch.randn(3, cfg.d_model, dtype=torch.float64), torch.randn(3, cfg.d_in_proj, dtype=torch.float64)
    valid = torch.tensor([True, False, True])
    out, masked = mixer.step(u, state, inject, valid=valid)
    full_out, full = mixer.step(u, state, inject)
    assert torch.equal(masked.conv[1], state.conv[1]) and torch.equal(masked.ssm[1], state.ssm[1])
    assert not torch.equal(full.ssm[1], state.ssm[1])  # the row would have moved
    for new, ref in ((masked.conv, full.conv), (masked.ssm, full.ssm), (out, full_out)):
        assert torch.equal(new[valid], ref[valid])
