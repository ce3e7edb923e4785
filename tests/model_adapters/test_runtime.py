"""The runtime (model_adapters/runtime/): what CUDA graphs capture and replay, run uncaptured on the CPU against the
eager model; the caches of captured computations and when they are dropped."""

import pytest
import torch

from implicit_ssm_eval.model_adapters.backends import torch_ops
from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.runtime import Runtime
from implicit_ssm_eval.model_adapters.runtime.readings import read_whole
from implicit_ssm_eval.model_adapters.testing import assert_close, tiny_model


class StandIn:
    """An uncaptured stand-in for graphs.ForwardGraph: fn itself, its first output computed as the capture's is."""

    made: list = []

    def __init__(self, fn, ids, lengths, pool):
        self.fn, self.first = fn, fn(ids, lengths)
        StandIn.made.append(tuple(ids.shape))

    def __call__(self, ids, lengths):
        return self.fn(ids, lengths)


def test_forward_graphs_capture_a_shape_that_comes_twice_in_a_row_and_keep_the_latest():
    from implicit_ssm_eval.model_adapters.runtime.graphs import ForwardGraphs

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
    from implicit_ssm_eval.model_adapters.reading import read
    from implicit_ssm_eval.model_adapters.runtime.readings import read_whole

    model = tiny_model("implicit", contractive=True)
    ids = torch.randint(0, 37, (3, 11))
    keep = budget.anytime_budgets(anytime)
    with torch.no_grad():
        for lengths in (torch.tensor([11, 2, 7]), None):
            u = model.inject(ids)
            eager = read(model, u, budget, lengths, None, keep, want_state=False)
            whole = read_whole(model, u, budget, lengths if lengths is not None else torch.full((3,), 11), keep,
                               torch_ops)
            assert torch.equal(whole.hidden, eager.hidden)
            for a, b in [(whole.stats, eager.stats)] + [(whole.anytime[k].stats, eager.anytime[k].stats) for k in keep]:
                assert torch.equal(a.iterations, b.iterations) and torch.equal(a.tokens, b.tokens)
                assert torch.equal(a.residual, b.residual) and torch.equal(a.converged, b.converged)
            assert sorted(whole.anytime) == sorted(eager.anytime) == list(keep)
            for k in keep:
                assert torch.equal(whole.anytime[k].hidden, eager.anytime[k].hidden)


def test_padded_lengths_step_16_times_an_octave():
    from implicit_ssm_eval.model_adapters.runtime.graphs import padded_length

    assert [padded_length(n) for n in (1, 17, 31, 32, 33, 50, 51, 52, 53, 1000, 1024, 1025)] == \
        [1, 17, 31, 32, 34, 50, 52, 52, 54, 1024, 1024, 1088]
    assert all(n <= padded_length(n) <= n * 17 / 16 for n in range(1, 5000))


@pytest.mark.parametrize("kind,budget,anytime", [("explicit", None, ()), ("implicit", Budget(max_iter=5, tol=0.0), ()),
                                                 ("implicit", Budget(max_iter=5, tol=0.0), (1, 3))])
def test_scoring_at_a_padded_length_gives_the_unpadded_numbers(kind, budget, anytime):
    """What a CUDA graph replays for scoring (Runtime._captured_scoring), with an uncaptured stand-in for the graph:
    lengths 51 and 52 run at 52 and share one graph; hidden states, statistics and anytime readings are those of the
    forward at the exact length, padded rows or not."""
    from implicit_ssm_eval.model_adapters.runtime.graphs import ForwardGraphs

    model = tiny_model(kind, contractive=kind == "implicit", dtype=torch.float64)
    runtime = Runtime(model)
    StandIn.made = []
    stand_ins = ForwardGraphs(make=StandIn)
    runtime.cache("forward_graphs", lambda: stand_ins)
    keep = budget.anytime_budgets(anytime) if budget else ()

    def whole(ids, lengths):
        return read_whole(model, model.inject(ids), budget, lengths, keep, torch_ops)

    fn = whole if budget else runtime._explicit_scoring
    kw = {"budget": budget, "anytime": anytime} if budget else {}
    for length in (51, 52, 51, 52, 52):
        ids = torch.randint(0, 37, (3, length))
        for lengths in (torch.tensor([length, 3, 27]), None):
            with torch.no_grad():
                out = runtime._captured_scoring((budget, keep), fn, ids, lengths)
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
    from implicit_ssm_eval.model_adapters.runtime.graphs import ForwardGraphs, PieceSolve
    from implicit_ssm_eval.model_adapters.runtime.readings import MaskedReadingGraph, read_masked

    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    runtime, made = Runtime(model), []

    def make(fn, ids, lengths, pool):
        made.append(MaskedReadingGraph(model, budget, torch_ops, ids, lengths, pool, capture=False))
        return made[-1]

    def fn(ids, lengths):
        u = model.inject(ids)
        return read_masked(PieceSolve(model, budget, u, False, False, torch_ops, segment=1), u, lengths)

    runtime.cache("forward_graphs", ForwardGraphs)
    iterations = set()
    for length in (51, 52, 51, 52):
        ids = torch.randint(0, 37, (3, length))
        lengths = torch.tensor([length, 3, 27])
        with torch.no_grad():
            before = made[0].solver.evaluations if made else 0
            out = runtime._captured_scoring((budget, ()), fn, ids, lengths, make)
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


def test_a_shape_whose_capture_runs_out_of_memory_stays_eager():
    from implicit_ssm_eval.model_adapters.runtime.graphs import ForwardGraphs

    attempts = []

    def out_of_memory(fn, ids, lengths, pool):
        attempts.append(tuple(ids.shape))
        raise torch.OutOfMemoryError("no room for the graph's pool")

    graphs, ids = ForwardGraphs(make=out_of_memory), torch.ones(2, 5)
    assert [graphs((), lambda i, n: i.sum(), ids, None) for _ in range(4)] == [10] * 4 and attempts == [(2, 5)]


def test_captured_computations_are_dropped_when_the_weights_change():
    """A CUDA graph reads the weights (and A = -exp(A_log)) as captured: new weights, new captures."""
    model = tiny_model("implicit", contractive=True)
    runtime = Runtime(model, graphs="masked")
    ids, budget = torch.randint(0, 37, (2, 9)), Budget(max_iter=3, mode="blockwise", block_size=4)
    with torch.no_grad():
        runtime(ids, budget)
        solves = runtime._caches["piece_solves"]
        assert solves and runtime.cache("piece_solves", dict) is solves  # kept while the weights stay
        model.layers[0].mixer.A_log.mul_(0.5)
        assert runtime.cache("piece_solves", dict) == {}
        runtime(ids, budget)
        assert runtime._caches["piece_solves"] is not solves and runtime._caches["piece_solves"]
        model.load_state_dict(model.state_dict())  # copied in place: a change, even of equal values
        assert runtime.cache("piece_solves", dict) == {}
