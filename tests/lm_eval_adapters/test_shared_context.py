"""Multiple choice with the context read once (share_context): the same scores, greedy flags, statistics and greedy
records as reading every (context + continuation) from the start, for explicit models and every implicit reading;
and which contexts are shared, and which not."""

import json

import pytest
import torch
from lm_eval.api.instance import Instance

from implicit_ssm_eval.model_adapters.adapter import shared_context
from implicit_ssm_eval.model_adapters.adapter.lm import ExplicitSSMLM, ImplicitSSMLM
from implicit_ssm_eval.model_adapters.adapter.shared_context import LOCKSTEP, STATE, branch_point
from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.errors import ConfigError

READINGS = {
    "explicit": {},
    "sequential": {"mode": "sequential", "max_iter": 6, "tol": 0.0},
    "sequential-tol": {"mode": "sequential", "max_iter": 12, "tol": 0.01},
    "blockwise-tol": {"mode": "blockwise", "block_size": 4, "max_iter": 12, "tol": 0.01},
    "blockwise": {"mode": "blockwise", "block_size": 3, "max_iter": 6, "tol": 0.0},
    "simultaneous": {"mode": "simultaneous", "max_iter": 6, "tol": 0.0},
    "simultaneous-anytime": {"mode": "simultaneous", "max_iter": 6, "tol": 0.0, "anytime": "2;5"},
}
WORDS = "abc"


def questions() -> list[tuple[str, str]]:
    """Contexts of 1 to 14 words (on and off block boundaries), 2-4 choices of 1-4 words each; a context with one
    choice; an empty context (the prefix token) with three; a request twice."""
    pairs = []
    for n in (1, 3, 4, 5, 8, 9, 14):
        context = " ".join(WORDS[(i * i + n) % 3] for i in range(n))
        for c in range(2 + n % 3):
            pairs.append((context, " " + " ".join(WORDS[(c + j * n) % 3] for j in range(1 + (c + n) % 4))))
    pairs += [("b a c c a", " b c"), ("", " a b"), ("", " c"), ("", " b a c"), ("a b c", " a")]
    return pairs + [pairs[0]]


def uniform_questions(n: int = 12) -> list[tuple[str, str]]:
    """n distinct questions of one context length (10 words), 4 distinct choices of 1-3 words: batches of one shape."""
    pairs = []
    for q in range(n):
        context = " ".join([WORDS[q // 3 ** i % 3] for i in range(4)] + ["a", "b", "c"] * 2)
        pairs += [(context, choice) for choice in (" a", " b c", " c a b", " b")]
    return pairs


def requests(pairs):
    return [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=0, metadata=("tiny_ll", i, 1))
            for i, p in enumerate(pairs)]


def make(checkpoints, reading: str, share, dtype=torch.float64, graphs: str | None = None, **extra):
    kind = "explicit" if reading == "explicit" else "implicit"
    cls = ExplicitSSMLM if kind == "explicit" else ImplicitSSMLM
    lm = cls(pretrained=str(checkpoints[kind]), batch_size=3, share_context=share, progress=False,
             **{**READINGS[reading], **extra})
    lm.model.to(dtype)
    if graphs:  # "masked": the padded computations CUDA graphs replay, run uncaptured
        lm.runtime.graphs = graphs
    return lm


@pytest.fixture
def branched(monkeypatch):
    """The members read by branching off a shared prefix, per call of read_branches."""
    seen = []
    original = shared_context.read_branches

    def spy(runtime, budget, budgets, branches, full):
        seen.append((branches[0].how, sum(len(b.members) for b in branches)))
        return original(runtime, budget, budgets, branches, full)

    monkeypatch.setattr(shared_context, "read_branches", spy)
    return seen


def assert_same_scores(got: list, expected: list, tolerance: float = 1e-9) -> None:
    assert len(got) == len(expected)
    for (lp, greedy), (lp0, greedy0) in zip(got, expected):
        assert lp == pytest.approx(lp0, abs=tolerance, rel=0) and greedy == greedy0


def same_compute(a, b) -> bool:
    """Per-token compute (what the logged samples carry) alike: iterations, convergence and tokens exactly."""
    if a is None or b is None:
        return a is b
    return (a.iterations, a.converged, a.tokens) == (b.iterations, b.converged, b.tokens) and \
        a.residual == pytest.approx(b.residual, rel=1e-6, abs=1e-12)


def summaries(lm) -> dict:
    k0 = lm.budgets_scored[0]
    return {k: r.scoring.summary(k or 1) for k, r in lm.local.records.items()} if k0 else {}


@pytest.mark.parametrize("reading", list(READINGS))
def test_shared_contexts_score_as_reading_from_the_start(checkpoints, reading, branched):
    """Scores, greedy flags, anytime answers and convergence statistics equal the un-shared path's (float64), and
    contexts were indeed shared."""
    pairs = questions()
    plain, shared = make(checkpoints, reading, False), make(checkpoints, reading, None)
    expected = plain.loglikelihood(requests(pairs))
    assert not branched
    got = shared.loglikelihood(requests(pairs))
    assert len(got) == len(expected) == len(pairs)
    for (lp, greedy), (lp0, greedy0), pair in zip(got, expected, pairs):
        assert lp == pytest.approx(lp0, abs=1e-9, rel=0) and greedy == greedy0, pair
    assert sum(members for _, members in branched) >= 15  # most choices branched off their context
    ways = {"simultaneous": {LOCKSTEP}, "simultaneous-anytime": {LOCKSTEP}, "blockwise": {STATE, LOCKSTEP}}
    assert {how for how, _ in branched} == ways.get(reading, {STATE})  # blockwise at tol 0: one block in lockstep
    for k, record in plain.local.records.items():  # every scored budget, anytime ones included
        for key, answer in record.answers.items():
            assert shared.local.records[k].answers[key].logprob == pytest.approx(answer.logprob, abs=1e-9)
            assert shared.local.records[k].answers[key].greedy == answer.greedy
            assert same_compute(shared.local.records[k].answers[key].compute, answer.compute), (k, key)
    for k, summary in summaries(plain).items():
        assert summaries(shared)[k] == pytest.approx(summary, rel=1e-9), k


@pytest.mark.parametrize("reading", ["explicit", "simultaneous-anytime", "blockwise", "sequential-tol"])
def test_padded_shared_reads_score_as_reading_from_the_start(checkpoints, reading, branched):
    """Where the runtime pads (graphs on), prefixes and rests are read at padded lengths, in one computation a CUDA
    graph can replay: the same scores, greedy flags and statistics as the un-shared reading (float64)."""
    pairs = questions()
    plain, padded = make(checkpoints, reading, False), make(checkpoints, reading, None, graphs="masked")
    assert padded.runtime.pads and not plain.runtime.pads
    assert_same_scores(padded.loglikelihood(requests(pairs)), plain.loglikelihood(requests(pairs)))
    assert sum(members for _, members in branched) >= 15
    for k, record in plain.local.records.items():
        for key, answer in record.answers.items():
            assert same_compute(padded.local.records[k].answers[key].compute, answer.compute), (k, key)


class StandIn:
    """An uncaptured stand-in for graphs.ForwardGraph: its replay runs fn on the new inputs."""

    def __init__(self, fn, *inputs, pool=None):
        self.fn, self.first, self.shapes = fn, fn(*inputs), [tuple(t.shape) for t in inputs]
        self.replays = 0

    def __call__(self, *inputs):
        assert [tuple(t.shape) for t in inputs] == self.shapes  # a graph replays the shapes it was captured at
        self.replays += 1
        return self.fn(*inputs)


@pytest.mark.parametrize("reading", ["explicit", "simultaneous-anytime"])
def test_batches_of_one_shape_replay_one_shared_read(checkpoints, reading, monkeypatch):
    """A multiple-choice task whose batches share a shape (prefixes at one padded length, rests padded to
    REST_STEP) makes one graph of the shared read and replays it for the later batches, with the un-shared scores."""
    from implicit_ssm_eval.model_adapters.runtime.graphs import ForwardGraphs

    pairs = uniform_questions()
    plain, shared = make(checkpoints, reading, False), make(checkpoints, reading, True, graphs="capture")
    graphs = ForwardGraphs(make=StandIn)
    shared.runtime.cache("forward_graphs", lambda: graphs)
    monkeypatch.setattr(shared.runtime, "_graphable", lambda *a: True)  # as on CUDA
    assert_same_scores(shared.loglikelihood(requests(pairs)), plain.loglikelihood(requests(pairs)))
    assert len(graphs.graphs) == 1, list(graphs.graphs)
    (graph,) = graphs.graphs.values()
    # 4 batches of 3 questions; " a" and " b" are one model input, the context itself (no rest): 2 rests a question
    assert graph.shapes[2] == (6, shared_context.REST_STEP) and graph.replays == 2


def test_the_readings_in_pieces_are_not_padded(checkpoints, monkeypatch):
    """Sequential and blockwise shared reads run in their own piece solves: padding their inputs would only add
    pieces, so every forward they make is at its longest row's length, where the runtime pads too."""
    from implicit_ssm_eval.model_adapters.runtime import Runtime

    exact, call = [], Runtime.__call__

    def spy(self, ids, budget=None, lengths=None, **kw):
        exact.append(lengths is None or ids.shape[1] == int(lengths.max()))
        return call(self, ids, budget, lengths, **kw)

    monkeypatch.setattr(Runtime, "__call__", spy)
    for reading in ("sequential-tol", "blockwise-tol"):
        make(checkpoints, reading, True, graphs="masked").loglikelihood(requests(uniform_questions()))
    assert len(exact) >= 8 and all(exact)


def test_rests_are_padded_to_a_multiple_of_the_step_or_to_padded_length():
    step = shared_context.REST_STEP
    assert [shared_context.rest_length(n) for n in (1, step, step + 1, 100, 1000)] == \
        [step, step, 2 * step, 112, 1024]


@pytest.mark.gpu
@pytest.mark.parametrize("reading", ["explicit", "simultaneous-anytime"])
def test_shared_reads_replayed_from_cuda_graphs_score_as_from_the_start(checkpoints, reading, monkeypatch):
    """On a GPU the shared read of a batch (explicit: prefixes with their states, then the rests from them;
    lockstep: the whole damped iteration of both) is captured once its shape comes twice in a row and replayed: the
    un-shared scores to 1e-5 in float32, every greedy flag alike."""
    from implicit_ssm_eval.model_adapters.runtime import graphs as graph_module

    replays = []
    monkeypatch.setattr(graph_module.ForwardGraph, "__call__",
                        lambda *a, replay=graph_module.ForwardGraph.__call__: replays.append(1) or replay(*a))
    pairs = uniform_questions(24)
    expected = make(checkpoints, reading, False, torch.float32, device="cuda").loglikelihood(requests(pairs))
    replays[:] = []
    got = make(checkpoints, reading, True, torch.float32, device="cuda").loglikelihood(requests(pairs))
    assert len(replays) >= 4
    assert_same_scores(got, expected, 1e-5)


@pytest.mark.parametrize("reading", ["explicit", "blockwise-tol", "simultaneous"])
def test_float32_scores_within_1e_5(checkpoints, reading):
    pairs = questions()
    expected = make(checkpoints, reading, False, torch.float32).loglikelihood(requests(pairs))
    got = make(checkpoints, reading, True, torch.float32).loglikelihood(requests(pairs))
    for (lp, greedy), (lp0, greedy0) in zip(got, expected):
        assert lp == pytest.approx(lp0, abs=1e-5) and greedy == greedy0


@pytest.mark.parametrize("reading", ["blockwise-tol", "simultaneous-anytime"])
def test_greedy_records_are_those_of_the_unshared_reading(checkpoints, reading, tmp_path):
    lines = {}
    for share in (False, True):
        path = tmp_path / f"{share}.jsonl"
        make(checkpoints, reading, share, record_greedy=str(path)).loglikelihood(requests(questions()))
        lines[share] = sorted(json.dumps(json.loads(line), sort_keys=True) for line in path.read_text().splitlines())
    assert lines[True] == lines[False] and len(lines[True]) > 20


def test_empty_token_contexts_and_single_choices_are_read_from_the_start(checkpoints, branched):
    """Token-level requests with no context at all (lm-eval makes them from a context of spaces) and a context with
    one continuation take the un-shared path, with its results or its error."""
    plain, shared = make(checkpoints, "sequential", False), make(checkpoints, "sequential", True)
    single = [(("", ""), [3, 4, 5, 3], [4, 5])]
    assert shared._loglikelihood_tokens(single) == plain._loglikelihood_tokens(single)
    for empty in ([(("", ""), [], [3]), (("", ""), [], [4])], [(("", ""), [], [3, 4]), (("", ""), [], [3, 5])]):
        outcome = {}
        for name, lm in (("plain", plain), ("shared", shared)):
            try:
                outcome[name] = lm._loglikelihood_tokens(empty)
            except Exception as exc:  # whatever today's path does with nothing to condition on, sharing does too
                outcome[name] = type(exc)
        assert outcome["shared"] == outcome["plain"]
    assert not branched


def test_rolling_windows_are_not_shared(checkpoints, branched):
    lm = make(checkpoints, "explicit", True)
    docs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=0, metadata=("tiny", i, 1))
            for i, t in enumerate(["a b c a b", "a b c c", "a b a"])]
    lm.loglikelihood_rolling(docs)
    assert not branched


def test_an_unshareable_budget_reads_from_the_start_or_is_refused(checkpoints, branched):
    """At tol > 0 (or with Anderson) the simultaneous reading stops each sequence on its whole residual: auto falls
    back, true is refused with the reason, false turns sharing off everywhere."""
    pairs = requests(questions())
    make(checkpoints, "simultaneous", None, tol=0.01).loglikelihood(pairs)
    make(checkpoints, "simultaneous", None, solver="anderson").loglikelihood(pairs)
    make(checkpoints, "explicit", False).loglikelihood(pairs)
    assert not branched
    with pytest.raises(ConfigError, match="share_context=true: .* got mode=simultaneous, tol=0.01"):
        make(checkpoints, "simultaneous", True, tol=0.01)
    make(checkpoints, "simultaneous", None, anytime_exits="kl:0.01").loglikelihood(pairs)  # exits need whole runs
    assert not branched
    with pytest.raises(ConfigError, match="share_context=true: anytime_exits are read off"):
        make(checkpoints, "simultaneous", True, anytime_exits="kl:0.01")
    with pytest.raises(ConfigError, match="share_context must be true, false or auto"):
        make(checkpoints, "explicit", "sometimes")


def test_branch_points():
    """Where each reading may branch: blockwise on the last block boundary inside the context."""
    blockwise = Budget(max_iter=4, tol=0.01, mode="blockwise", block_size=4)
    assert branch_point(20, 10, blockwise) == (STATE, 8)
    assert branch_point(20, 8, blockwise) == (STATE, 8)
    assert branch_point(20, 3, blockwise) is None  # inside the first block, at tol > 0
    assert branch_point(4, 3, blockwise.replace(tol=0.0)) == (LOCKSTEP, 3)  # one block: one piece
    assert branch_point(20, 10, Budget(max_iter=4, tol=0.01, mode="sequential")) == (STATE, 10)
    assert branch_point(20, 10, None) == (STATE, 10)
    assert branch_point(20, 10, Budget(max_iter=4, tol=0.0)) == (LOCKSTEP, 10)
    assert branch_point(20, 10, Budget(max_iter=4, tol=0.01)) is None
    assert branch_point(20, 10, Budget(max_iter=4, tol=0.0, solver="anderson")) is None
    assert branch_point(20, 0, None) is None


def test_auto_shares_wherever_exact():
    """auto shares for explicit models and every exact reading (on a GPU too, since the shared reads are replayed
    from CUDA graphs); false never; anytime exit criteria never."""
    setting = shared_context.share_context_setting
    sequential, blockwise = Budget(max_iter=4, mode="sequential"), Budget(max_iter=4, mode="blockwise", block_size=8)
    simultaneous = Budget(max_iter=4, tol=0.0)
    assert all(setting(None, budget) for budget in (None, simultaneous, sequential, blockwise))
    assert not setting(False, sequential) and not setting(None, simultaneous, exit_points=True)
