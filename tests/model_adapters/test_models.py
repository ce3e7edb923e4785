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


def count_state_commits(monkeypatch) -> list:
    """Every time a layer computes the conv window it would commit, a call is recorded."""
    from implicit_ssm_eval.model_adapters import mamba2

    calls, real = [], mamba2._last_inputs
    monkeypatch.setattr(mamba2, "_last_inputs", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("kind,budget", [
    ("explicit", None), ("implicit", Budget(max_iter=3, tol=0.0)), ("implicit", Budget(max_iter=20, tol=1e-3)),
    ("implicit", Budget(max_iter=3, mode="sequential")), ("implicit", Budget(max_iter=3, mode="blockwise",
                                                                            block_size=4))])
def test_a_forward_without_state_reads_the_same_and_commits_none_when_it_can(kind, budget, monkeypatch):
    """want_state=False (scoring) gives the same hidden states and statistics; a one-piece reading then computes no
    layer's final state at all (a reading of several pieces still needs them between pieces)."""
    model = tiny_model(kind, contractive=kind == "implicit")
    ids, lengths = torch.randint(0, 37, (3, 11)), torch.tensor([11, 2, 7])
    with torch.no_grad():
        full = model(ids, budget, lengths=lengths)
        commits = count_state_commits(monkeypatch)
        bare = model(ids, budget, lengths=lengths, want_state=False)
    assert torch.equal(bare.hidden, full.hidden) and full.state is not None
    if budget is not None:
        assert torch.equal(bare.stats.iterations, full.stats.iterations)
    if budget is None or budget.mode == "simultaneous":
        assert bare.state is None and commits == []
    elif budget.mode == "blockwise":  # the step form of the sequential reading keeps its window without this call
        assert commits


@pytest.mark.parametrize("length", [1, 2, 9])
def test_a_forward_from_no_state_equals_one_from_zeros(length):
    """No state in (the kernels read zeros without a tensor) is the empty state, states out included, also for
    sequences shorter than the conv window (whose new window reaches back into the state)."""
    model = tiny_model("explicit", dtype=torch.float64)
    ids = torch.randint(0, 37, (2, length))
    lengths = torch.tensor([length, 1])
    none, zeros = model(ids, lengths=lengths), model(ids, lengths=lengths, state=model.empty_state(2))
    assert torch.equal(none.hidden, zeros.hidden)
    for a, b in zip(none.state, zeros.state):
        assert torch.equal(a.conv, b.conv) and torch.equal(a.ssm, b.ssm)


def test_a_batch_with_an_empty_sequence_still_returns_every_state():
    """A sequence of no tokens takes no part in the reading; the state returned for it is the empty one."""
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids, budget = torch.randint(0, 37, (2, 6)), Budget(max_iter=4, tol=0.0)
    with torch.no_grad():
        out = model(ids, budget, lengths=torch.tensor([6, 0]))
        alone = model(ids[:1], budget)
    for mixed, single in zip(out.state, alone.state):
        assert_close(mixed.ssm[:1], single.ssm, 1e-10, "the full sequence's state")
        assert not mixed.ssm[1].any() and not mixed.conv[1].any()


@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_model_built_under_inference_mode_runs_and_matches(kind):
    """Weights made under torch.inference_mode have no version counter; the cached derived terms must cope."""
    torch.manual_seed(0)
    reference = tiny_model(kind, dtype=torch.float64)
    with torch.inference_mode():
        model = tiny_model(kind, dtype=torch.float64)
        model.load_state_dict(reference.state_dict())
        ids = torch.randint(0, 37, (2, 9))
        budget = Budget(max_iter=6) if kind == "implicit" else None
        out = model(ids, budget) if budget else model(ids)
    with torch.no_grad():
        expected = reference(ids, budget) if budget else reference(ids)
    assert_close(out.hidden, expected.hidden, 1e-12, "hidden")


def rounded(state):
    """A float32 state as a bfloat16 state holds it."""
    from implicit_ssm_eval.model_adapters.mamba2 import MixerState

    return [MixerState(s.conv, s.ssm.to(torch.bfloat16).float()) for s in state]


@pytest.mark.parametrize("budget", [Budget(mode="sequential", max_iter=12, tol=1e-4),
                                    Budget(mode="blockwise", block_size=3, max_iter=12, tol=1e-4)],
                         ids=["sequential", "blockwise"])
def test_a_bfloat16_state_is_the_float32_reading_with_its_state_rounded_between_pieces(budget):
    """set_state_dtype(bfloat16): each piece reads the stored state widened to float32 and stores its new state
    rounded; nothing else changes. The oracle: the float32 model read piece by piece, its state rounded in between."""
    model = tiny_model("implicit", contractive=True)
    ids = torch.randint(0, 37, (2, 9))
    piece = budget.piece_size(9)
    state, hidden = model.empty_state(2), []
    for start in range(0, 9, piece):
        out = model(ids[:, start:start + piece], budget, state=state)
        state = rounded(out.state)
        hidden.append(out.hidden)
    full = model(ids, budget).hidden
    model.set_state_dtype(torch.bfloat16)
    low = model(ids, budget)
    assert low.state[0].ssm.dtype == torch.bfloat16 and low.state[0].conv.dtype == torch.float32
    assert_close(low.hidden, torch.cat(hidden, 1), 1e-6, "bfloat16 state against the rounded float32 state")
    assert all(torch.equal(a.ssm.float(), b.ssm) for a, b in zip(low.state, state))
    assert (low.hidden - full).abs().max() > 1e-6  # the rounding shows: the option is not a no-op
    assert_close(low.hidden, full, 5e-2, "bfloat16 state against float32")


def test_an_explicit_models_bfloat16_state_decodes_as_the_rounded_float32_state():
    model = tiny_model("explicit")
    ids = torch.randint(0, 37, (3, 6))
    ref = model(ids)
    state, steps = rounded(ref.state), []
    for t in range(3):
        out = model.step(ids[:, t], state)
        steps.append(out.hidden)
        state = rounded(out.state)
    model.set_state_dtype(torch.bfloat16)
    low = model(ids)
    assert torch.equal(low.hidden, ref.hidden)  # the parallel scan keeps its states in float32 within the sequence
    assert all(torch.equal(a.ssm, b.ssm.to(torch.bfloat16)) for a, b in zip(low.state, ref.state))
    state = low.state
    for t in range(3):
        out = model.step(ids[:, t], state)
        assert out.state[0].ssm.dtype == torch.bfloat16
        assert_close(out.hidden, steps[t], 1e-6, f"decoding step {t}")
        state = out.state


def test_a_state_dtype_other_than_bfloat16_or_the_compute_dtype_is_refused():
    model = tiny_model("explicit")
    with pytest.raises(ValueError, match="state dtype must be bfloat16 or torch.float32, got torch.float16"):
        model.set_state_dtype(torch.float16)
    model.set_state_dtype(torch.float32)
    assert model.state_dtype == torch.float32 and model.empty_state(1)[0].ssm.dtype == torch.float32


def test_an_iteration_reads_its_step_in_one_op_and_a_commit_steps_in_another():
    """A step that commits nothing (a fixed-point iteration of the sequential reading) asks the backend for its output
    alone, conv and state read in one op (conv_step_read: one launch on a GPU), and gives the committing step's
    output; a committing step is one op too (conv_step: two launches on a GPU)."""
    from types import SimpleNamespace

    from implicit_ssm_eval.model_adapters.backends import torch_ops

    model = tiny_model("implicit", dtype=torch.float64, contractive=True)
    calls: list[str] = []

    def counted(name):
        return lambda *args: calls.append(name) or getattr(torch_ops, name)(*args)

    ops = SimpleNamespace(**{name: getattr(torch_ops, name) for name in ("add_rmsnorm", "gated_rmsnorm")},
                          **{name: counted(name) for name in ("conv_step_read", "conv_step")})
    mixer, rows = model.blocks[0].mixer, 3
    state = mixer.empty_state(rows)
    state = type(state)(torch.randn_like(state.conv), torch.randn_like(state.ssm))
    u = torch.randn(rows, model.cfg.d_model, dtype=torch.float64)
    inject = torch.randn(rows, model.cfg.d_in_proj, dtype=torch.float64)
    with torch.no_grad():
        read, none = mixer.step(u, state, inject, commit=False, ops=ops)
        assert none is None and calls == ["conv_step_read"]
        calls.clear()
        out, new = mixer.step(u, state, inject, commit=True, ops=ops)
    assert calls == ["conv_step"] and new is not None
    assert_close(read, out, 1e-12, "iteration against commit")


def test_a_sequence_convolves_and_scans_in_one_op():
    """The parallel form hands its conv and scan to the backend as one op (conv_scan: on a GPU one launch for a block
    of the blockwise reading), with the conv window and state it continues from; conv_scan on the torch backend is
    the conv then the scan."""
    from types import SimpleNamespace

    from implicit_ssm_eval.model_adapters.backends import torch_ops

    model = tiny_model("implicit", dtype=torch.float64, contractive=True)
    mixer, rows, length = model.blocks[0].mixer, 2, 5
    calls: list[tuple] = []

    def conv_scan(xbc, conv, *args, **kwargs):
        calls.append((xbc.shape, None if conv is None else conv.shape))
        return torch_ops.conv_scan(xbc, conv, *args, **kwargs)

    ops = SimpleNamespace(**{name: getattr(torch_ops, name) for name in ("add_rmsnorm", "gated_rmsnorm")},
                          conv_scan=conv_scan)
    state = mixer.empty_state(rows)
    state = type(state)(torch.randn_like(state.conv), torch.randn_like(state.ssm))
    u = torch.randn(rows, length, model.cfg.d_model, dtype=torch.float64)
    with torch.no_grad():
        out, new = mixer(u, None, state, ops=ops)
        steps = []
        for t in range(length):  # the recurrent form from the same state: the definition the op must meet
            y, state = mixer.step(u[:, t], state)
            steps.append(y)
    c = model.cfg
    assert calls == [((rows, length, c.conv_dim), (rows, c.conv_dim, c.d_conv - 1))]
    assert_close(out, torch.stack(steps, 1), 1e-10, "one op against the steps")
    assert_close(new.ssm, state.ssm, 1e-10, "final state")


@pytest.mark.parametrize("commit", [True, False])
def test_an_injection_added_in_the_kernels_reads_as_one_added_by_the_projection(commit):
    """Where the backend adds the injection in the kernels that read the projection (triton's blocks), the mixer hands
    its z, xbc and dt parts to the gated norm and conv_scan: the output, the state and the conv window (inputs with
    the injection in them) are those of the projection adding it, rows that end early included."""
    from types import SimpleNamespace

    from implicit_ssm_eval.model_adapters.backends import torch_ops

    model = tiny_model("implicit", dtype=torch.float64, contractive=True)
    mixer, rows, length, c = model.blocks[0].mixer, 3, 6, model.cfg
    state = mixer.empty_state(rows)
    state = type(state)(torch.randn_like(state.conv), torch.randn_like(state.ssm))
    u = torch.randn(rows, length, c.d_model, dtype=torch.float64)
    inject = torch.randn(rows, length, c.d_in_proj, dtype=torch.float64)
    valid = torch.arange(length)[None, :] < torch.tensor([[length], [2], [length - 1]])
    in_kernels = SimpleNamespace(**{name: getattr(torch_ops, name) for name in dir(torch_ops)
                                    if not name.startswith("_")})
    in_kernels.injects_in_kernels = lambda length: True
    with torch.no_grad():
        out, new = mixer(u, inject, state, valid, commit)
        got, got_new = mixer(u, inject, state, valid, commit, ops=in_kernels)
    assert_close(got, out, 1e-12, "output")
    if commit:
        assert_close(got_new.ssm, new.ssm, 1e-12, "state")
        assert_close(got_new.conv, new.conv, 1e-12, "conv window")
    else:
        assert got_new is None and new is None
