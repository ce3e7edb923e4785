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


class StandIn:
    """An uncaptured stand-in for graphs.ForwardGraph: fn itself, its first output computed as the capture's is."""

    made: list = []

    def __init__(self, fn, ids, lengths, pool):
        self.fn, self.first = fn, fn(ids, lengths)
        StandIn.made.append(tuple(ids.shape))

    def __call__(self, ids, lengths):
        return self.fn(ids, lengths)


def test_forward_graphs_capture_a_shape_that_comes_twice_in_a_row_and_keep_the_latest():
    from implicit_ssm_eval.model_adapters.graphs import ForwardGraphs

    StandIn.made = []
    calls = []

    def fn(ids, lengths):
        calls.append(tuple(ids.shape))
        return ids.sum()

    graphs, lengths = ForwardGraphs(keep=2, make=StandIn), torch.zeros(2)
    a, b, c = torch.ones(2, 5), torch.ones(2, 6), torch.ones(3, 5)
    for ids in (a, b, a, b):  # never twice in a row: eager every time
        assert graphs((), fn, ids, lengths) == ids.sum()
    assert StandIn.made == [] and graphs.graphs == {}
    assert graphs((), fn, a, lengths) == 10 and StandIn.made == []
    assert graphs((), fn, a, lengths) == 10 and StandIn.made == [(2, 5)]  # a twice in a row: captured
    assert graphs((), fn, b, lengths) == 12 and graphs((), fn, a, lengths) == 10  # a replayed, not captured again
    assert graphs(("other budget",), fn, a, lengths) == 10 and len(graphs.graphs) == 1  # another key, eager
    for ids in (b, b, a, c, c):  # b captured; a used last, so c's capture drops b, not a
        graphs((), fn, ids, lengths)
    assert set(graphs.graphs) == {((2, 5),), ((3, 5),)} and StandIn.made == [(2, 5), (2, 6), (3, 5)]
    assert len(calls) == 14  # 9 eager calls, 3 captures' warm-ups, 2 replays (a stand-in's replay calls fn)


@pytest.mark.parametrize("budget,anytime", [(Budget(max_iter=5, tol=0.0), ()), (Budget(max_iter=5, tol=0.0), (1, 3))])
def test_the_whole_reading_from_device_ops_is_the_reading(budget, anytime):
    """read_whole (what a CUDA graph captures for scoring) gives read()'s numbers, padded or not, anytime included."""
    from implicit_ssm_eval.model_adapters.reading import read, read_whole

    model = tiny_model("implicit", contractive=True)
    ids = torch.randint(0, 37, (3, 11))
    keep = budget.anytime_budgets(anytime)
    with torch.no_grad():
        for lengths in (torch.tensor([11, 2, 7]), None):
            u = model.inject(ids)
            eager = read(model, u, budget, lengths, None, keep, want_state=False)
            whole = read_whole(model, u, budget, lengths if lengths is not None else torch.full((3,), 11), keep)
            assert torch.equal(whole.hidden, eager.hidden)
            for a, b in [(whole.stats, eager.stats)] + [(whole.anytime[k].stats, eager.anytime[k].stats) for k in keep]:
                assert torch.equal(a.iterations, b.iterations) and torch.equal(a.tokens, b.tokens)
                assert torch.equal(a.residual, b.residual) and torch.equal(a.converged, b.converged)
            assert sorted(whole.anytime) == sorted(eager.anytime) == list(keep)
            for k in keep:
                assert torch.equal(whole.anytime[k].hidden, eager.anytime[k].hidden)


def test_padded_lengths_step_16_times_an_octave():
    from implicit_ssm_eval.model_adapters.graphs import padded_length

    assert [padded_length(n) for n in (1, 17, 31, 32, 33, 50, 51, 52, 53, 1000, 1024, 1025)] == \
        [1, 17, 31, 32, 34, 50, 52, 52, 54, 1024, 1024, 1088]
    assert all(n <= padded_length(n) <= n * 17 / 16 for n in range(1, 5000))


@pytest.mark.parametrize("kind,budget,anytime", [("explicit", None, ()), ("implicit", Budget(max_iter=5, tol=0.0), ()),
                                                 ("implicit", Budget(max_iter=5, tol=0.0), (1, 3))])
def test_scoring_at_a_padded_length_gives_the_unpadded_numbers(kind, budget, anytime):
    """What a CUDA graph replays for scoring (_captured_scoring), with an uncaptured stand-in for the graph: lengths
    51 and 52 run at 52 and share one graph; hidden states, statistics and anytime readings are those of the
    forward at the exact length, padded rows or not."""
    from implicit_ssm_eval.model_adapters.graphs import ForwardGraphs

    model = tiny_model(kind, contractive=kind == "implicit", dtype=torch.float64)
    StandIn.made = []
    stand_ins = ForwardGraphs(make=StandIn)
    model.captured("_forward_graphs", lambda: stand_ins)
    keep = budget.anytime_budgets(anytime) if budget else ()
    fn = model._whole_reading(budget, keep) if budget else model._scoring_forward
    kw = {"budget": budget, "anytime": anytime} if budget else {}
    for length in (51, 52, 51, 52, 52):
        ids = torch.randint(0, 37, (3, length))
        for lengths in (torch.tensor([length, 3, 27]), None):
            with torch.no_grad():
                out = model._captured_scoring((budget, keep), fn, ids, lengths)
                eager = model(ids, lengths=lengths, want_state=False, **kw)
            hidden = out if kind == "explicit" else out.hidden
            assert hidden.shape == eager.hidden.shape == (3, length, model.cfg.d_model)
            ends = [length] * 3 if lengths is None else lengths.tolist()
            for i, n in enumerate(ends):  # each row's own tokens
                assert_close(hidden[i, :n], eager.hidden[i, :n], 1e-10, f"hidden of row {i}")
            if budget:
                for a, b in [(out.stats, eager.stats)] + [(out.anytime[k].stats, eager.anytime[k].stats) for k in keep]:
                    assert torch.equal(a.iterations, b.iterations) and torch.equal(a.tokens, b.tokens)
                    assert_close(a.residual, b.residual, 1e-8, "residual over the valid tokens only")
                assert sorted(out.anytime) == sorted(eager.anytime) == list(keep)
                for k, i in ((k, i) for k in keep for i in range(3)):
                    assert_close(out.anytime[k].hidden[i, :ends[i]], eager.anytime[k].hidden[i, :ends[i]], 1e-10, "k")
    assert StandIn.made == [(3, 52)]  # one shape for both lengths, made when it came twice in a row


@pytest.mark.parametrize("budget", [Budget(max_iter=40, tol=1e-4), Budget(max_iter=9, tol=1e-9)])
def test_scoring_at_a_tolerance_from_masked_graphs_gives_the_eager_numbers(budget):
    """What CUDA graphs replay for scoring at tol > 0 (reading.MaskedReadingGraph: every row, masked, one update per
    segment), run uncaptured: lengths 51 and 52 share the padded shape 52, and each call gives the eager gathering
    solver's hidden states (each row's own tokens), iterations, convergence and residuals, with f evaluated exactly
    as often as the slowest row needs (no whole segments after every row is done). The second budget stops every
    row at the cap; the first lets rows converge at different iterations."""
    from implicit_ssm_eval.model_adapters.graphs import ForwardGraphs
    from implicit_ssm_eval.model_adapters.reading import MaskedReadingGraph

    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    made = []

    def make(fn, ids, lengths, pool):
        made.append(MaskedReadingGraph(model, budget, ids, lengths, pool, capture=False))
        return made[-1]

    model.captured("_forward_graphs", ForwardGraphs)
    fn, iterations = model._masked_reading(budget), set()
    for length in (51, 52, 51, 52):
        ids = torch.randint(0, 37, (3, length))
        lengths = torch.tensor([length, 3, 27])
        with torch.no_grad():
            before = made[0].solver.evaluations if made else 0
            out = model._captured_scoring((budget, ()), fn, ids, lengths, make)
            eager = model(ids, budget, lengths=lengths, want_state=False)
        assert out.hidden.shape == eager.hidden.shape == (3, length, model.cfg.d_model)
        for i, n in enumerate(lengths.tolist()):
            assert_close(out.hidden[i, :n], eager.hidden[i, :n], 1e-10, f"hidden of row {i}")
        for name in ("iterations", "converged", "tokens"):
            assert torch.equal(getattr(out.stats, name), getattr(eager.stats, name)), name
        assert_close(out.stats.residual, eager.stats.residual, 1e-6, "residual over the valid tokens only")
        if made and before:  # a replay of the made graph: f evaluated as often as the slowest row needs
            assert made[0].solver.evaluations - before == int(eager.stats.iterations.max())
        iterations.update(eager.stats.iterations.flatten().tolist())
    assert len(made) == 1 and made[0].solver.u.shape[:2] == (3, 52)  # made when the shape came twice in a row
    assert len(iterations) > 1 if budget.tol > 1e-6 else iterations == {budget.max_iter}


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


def test_a_shape_whose_capture_runs_out_of_memory_stays_eager():
    from implicit_ssm_eval.model_adapters.graphs import ForwardGraphs

    attempts = []

    def out_of_memory(fn, ids, lengths, pool):
        attempts.append(tuple(ids.shape))
        raise torch.OutOfMemoryError("no room for the graph's pool")

    graphs, ids = ForwardGraphs(make=out_of_memory), torch.ones(2, 5)
    assert [graphs((), lambda i, n: i.sum(), ids, None) for _ in range(4)] == [10] * 4 and attempts == [(2, 5)]


def test_captured_computations_are_dropped_when_the_weights_change():
    """A CUDA graph reads the weights (and A = -exp(A_log)) as captured: new weights, new captures."""
    model = tiny_model("implicit", contractive=True)
    model.use_graphs("masked")
    ids, budget = torch.randint(0, 37, (2, 9)), Budget(max_iter=3, mode="blockwise", block_size=4)
    with torch.no_grad():
        model(ids, budget)
        solves = model._piece_solves
        assert solves and model.captured("_piece_solves", dict) is solves  # kept while the weights stay
        model.layers[0].mixer.A_log.mul_(0.5)
        assert model.captured("_piece_solves", dict) == {}
        model(ids, budget)
        assert model._piece_solves is not solves and model._piece_solves
        model.load_state_dict(model.state_dict())  # copied in place: a change, even of equal values
        assert model.captured("_piece_solves", dict) == {}
