"""Readings: simultaneous, sequential and blockwise are one code path cut into pieces of different sizes."""

import pytest
import torch

from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.reading import pieces
from implicit_ssm_eval.model_adapters.runtime import Runtime
from implicit_ssm_eval.model_adapters.testing import assert_close, tiny_model

LENGTHS = torch.tensor([13, 5, 9, 1])


def padded_batch(seed=0):
    torch.manual_seed(seed)
    return torch.randint(0, 37, (4, 13)), LENGTHS


def assert_same_reading(a, b, lengths):
    for i, n in enumerate(lengths.tolist()):
        assert torch.equal(a.hidden[i, :n], b.hidden[i, :n]), f"hidden of sequence {i}"
    for layer, (x, y) in enumerate(zip(a.state, b.state)):
        assert torch.equal(x.ssm, y.ssm) and torch.equal(x.conv, y.conv), f"state of layer {layer}"
    for name in ("iterations", "residual", "converged", "tokens"):
        assert torch.equal(getattr(a.stats, name), getattr(b.stats, name)), name


@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_block_size_1_is_exactly_the_sequential_reading(tol):
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids, lengths = padded_batch()
    budget = Budget(max_iter=20, tol=tol, mode="sequential")
    assert_same_reading(model(ids, budget.replace(mode="blockwise", block_size=1), lengths=lengths),
                        model(ids, budget, lengths=lengths), lengths)


@pytest.mark.parametrize("block_size", [13, 64])
def test_a_block_as_long_as_the_input_is_exactly_the_simultaneous_reading(block_size):
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids, lengths = padded_batch(1)
    budget = Budget(max_iter=25, tol=1e-5)
    assert_same_reading(model(ids, budget.replace(mode="blockwise", block_size=block_size), lengths=lengths),
                        model(ids, budget, lengths=lengths), lengths)


def test_blockwise_is_simultaneous_blocks_carrying_the_state():
    """An independent transcription: each block read simultaneously from the state the previous block left."""
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids = torch.randint(0, 37, (2, 11))
    budget = Budget(max_iter=12, tol=0.0)
    out = model(ids, budget.replace(mode="blockwise", block_size=4))
    state, hidden = None, []
    for start in range(0, 11, 4):
        part = model(ids[:, start: start + 4], budget, state=state)
        state, hidden = part.state, hidden + [part.hidden]
    assert_close(out.hidden, torch.cat(hidden, 1), 1e-12, "hidden")
    for a, b in zip(out.state, state):
        assert_close(a.ssm, b.ssm, 1e-12, "ssm state")
        assert_close(a.conv, b.conv, 1e-12, "conv state")
    assert out.stats.iterations.shape == (2, 3) and out.stats.tokens.tolist() == [[4, 4, 3]] * 2


def test_blockwise_stops_per_sequence_and_block_and_padding_changes_nothing():
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids, lengths = padded_batch(2)
    budget = Budget(max_iter=40, tol=1e-4, mode="blockwise", block_size=4)
    out = model(ids, budget, lengths=lengths)
    assert out.stats.tokens.tolist() == [[4, 4, 4, 1], [4, 1, 0, 0], [4, 4, 1, 0], [1, 0, 0, 0]]
    assert (out.stats.iterations[out.stats.tokens == 0] == 0).all()  # blocks after a sequence's end cost nothing
    for i, n in enumerate(lengths.tolist()):
        alone = model(ids[i: i + 1, :n], budget)
        assert_close(out.hidden[i, :n], alone.hidden[0], 1e-10, f"sequence {i}")
        present = out.stats.tokens[i] > 0
        assert torch.equal(out.stats.iterations[i][present], alone.stats.iterations[0]), f"iterations {i}"
        assert_close(out.state[0].ssm[i], alone.state[0].ssm[0], 1e-10, f"state {i}")
    assert len(set(out.stats.iterations[0].tolist())) > 1  # blocks do stop on their own residuals


def test_pieces():
    assert pieces(10, Budget(mode="blockwise", block_size=4)) == [(0, 4), (4, 8), (8, 10)]
    assert pieces(3, Budget(mode="sequential")) == [(0, 1), (1, 2), (2, 3)]
    assert pieces(7, Budget()) == [(0, 7)]


@pytest.mark.parametrize("budget", [
    Budget(max_iter=7, tol=0.0, mode="sequential"),
    Budget(max_iter=40, tol=1e-4, mode="sequential"),
    Budget(max_iter=11, tol=1e-9, mode="sequential"),  # some rows stop at the cap, some converge before it
    Budget(max_iter=40, tol=1e-4, mode="blockwise", block_size=4),
    Budget(max_iter=30, tol=0.0, mode="blockwise", block_size=5),
])
def test_masked_piece_solves_give_the_eager_readings(budget):
    """The arithmetic the GPU captures in CUDA graphs (every row, masked; runtime/graphs.py), run uncaptured on the
    CPU."""
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids, lengths = padded_batch(3)
    eager = model(ids, budget, lengths=lengths)
    runtime = Runtime(model, graphs="masked")
    for _ in range(2):  # the second reading reuses the cached solves
        masked = runtime(ids, budget, lengths=lengths)
        for i, n in enumerate(lengths.tolist()):
            assert_close(masked.hidden[i, :n], eager.hidden[i, :n], 1e-10, f"hidden {i}")
        assert (masked.hidden[1, 5:] == 0).all()
        for a, b in zip(masked.state, eager.state):
            assert_close(a.ssm, b.ssm, 1e-10, "ssm state")
            assert_close(a.conv, b.conv, 1e-10, "conv state")
        for name in ("iterations", "converged", "tokens"):
            assert torch.equal(getattr(masked.stats, name), getattr(eager.stats, name)), name
        assert_close(masked.stats.residual, eager.stats.residual, 1e-5, "residuals (near 1e-12 at tol 0)")


@pytest.mark.parametrize("budget", [Budget(max_iter=7, tol=0.0, mode="sequential"),
                                    Budget(max_iter=9, tol=0.0, mode="blockwise", block_size=4),
                                    Budget(max_iter=40, tol=1e-4, mode="sequential"),
                                    Budget(max_iter=40, tol=1e-5, mode="blockwise", block_size=4)])
@pytest.mark.parametrize("lanes", [2, 3])
def test_lanes_read_their_rows_as_one_group_does(budget, lanes):
    """A reading in lanes (row groups, each on its own CUDA stream on a GPU, advanced in turn by the host) gives the
    reading in one group: the same hidden states, statistics and final state, from a state passed in, with rows
    that end early in either lane, and at a tolerance each lane's pieces stopping with their own slowest row. Each
    lane holds solves of its own; on the CPU the lanes run one after another."""
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids, lengths = padded_batch(4)
    start = model(torch.randint(0, 37, (4, 3)), budget).state  # earlier tokens
    one = Runtime(model, graphs="masked")(ids, budget, lengths=lengths, state=start)
    runtime = Runtime(model, graphs="masked", lanes=lanes)
    for _ in range(2):  # the second reading reuses each lane's solves, loaded with the new state
        split = runtime(ids, budget, lengths=lengths, state=start)
        for i, n in enumerate(lengths.tolist()):
            assert_close(split.hidden[i, :n], one.hidden[i, :n], 1e-12, f"hidden {i}")
        assert torch.equal(split.hidden[1, 5:], one.hidden[1, 5:])  # padding: zeros
        for a, b in zip(split.state, one.state):
            assert_close(a.ssm, b.ssm, 1e-12, "ssm state")
            assert_close(a.conv, b.conv, 1e-12, "conv state")
        for name in ("iterations", "converged", "tokens"):
            assert torch.equal(getattr(split.stats, name), getattr(one.stats, name)), name
    solves = runtime.cache("piece_solves", dict)
    assert sorted(key[-1] for key in solves) == list(range(lanes))
    assert sorted(key[0][0] for key in solves) == sorted([4 // lanes + (g < 4 % lanes) for g in range(lanes)])


def test_lanes_split_rows_evenly_and_take_whole_numbers():
    from implicit_ssm_eval.model_adapters.errors import ConfigError
    from implicit_ssm_eval.model_adapters.runtime.readings import row_groups

    assert row_groups(16, 2) == [slice(0, 8), slice(8, 16)]
    assert row_groups(5, 3) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert row_groups(2, 4) == [slice(0, 1), slice(1, 2)]
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="lanes must be a whole number >= 1"):
            Runtime(model, graphs="masked", lanes=bad)


def test_lanes_are_advanced_in_turn_one_synchronisation_at_a_time():
    """At a tolerance the host waits for one lane's residuals while the others' launched work runs: each lane's
    segments are launched before the next lane's look, not a whole piece of one lane before the other starts."""
    from implicit_ssm_eval.model_adapters.runtime import graphs

    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids, lengths = padded_batch(3)
    runtime = Runtime(model, graphs="masked", lanes=2)
    order = []
    segment = graphs.PieceSolve._segment

    def logged(self):  # which lane's solve launches a segment (the lane is the last part of its cache key)
        order.append(next(key[-1] for key, solve in runtime.cache("piece_solves", dict).items() if solve is self))
        segment(self)

    graphs.PieceSolve._segment = logged
    try:
        runtime(ids[:, :2], Budget(max_iter=40, tol=1e-9, mode="sequential"), lengths=lengths.clamp(max=2))
    finally:
        graphs.PieceSolve._segment = segment
    assert len(order) >= 4 and order[:4] == [0, 1, 0, 1], order


def test_batches_of_other_lengths_share_one_blockwise_piece_solve():
    """lm-eval's batches differ in length, so their last blocks differ in size; each would be a solve of its own shape
    (on a GPU, a capture of its own, evicted and captured again once more shapes than the runtime keeps come by). A
    shorter last block is read at the blocks' size, padded, and gives the eager reading."""
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    budget = Budget(max_iter=40, tol=1e-4, mode="blockwise", block_size=4)
    runtime = Runtime(model, graphs="masked")
    torch.manual_seed(3)
    for length in (13, 14, 16, 9):  # last blocks of 1, 2, 4 and 1 tokens
        ids, lengths = torch.randint(0, 37, (2, length)), torch.tensor([length, length - 3])
        masked, eager = runtime(ids, budget, lengths=lengths), model(ids, budget, lengths=lengths)
        for i, n in enumerate(lengths.tolist()):
            assert_close(masked.hidden[i, :n], eager.hidden[i, :n], 1e-10, f"hidden {i}, length {length}")
        for a, b in zip(masked.state, eager.state):
            assert_close(a.ssm, b.ssm, 1e-10, "ssm state")
            assert_close(a.conv, b.conv, 1e-10, "conv state")
        for name in ("iterations", "converged", "tokens"):
            assert torch.equal(getattr(masked.stats, name), getattr(eager.stats, name)), f"{name}, length {length}"
    assert [key[0] for key in runtime.cache("piece_solves", dict)] == [(2, 4, model.cfg.d_in_proj)]


@pytest.mark.parametrize("budget, segment", [(Budget(max_iter=7, tol=0.0, mode="sequential"), None),
                                             (Budget(max_iter=40, tol=1e-6, mode="blockwise", block_size=4), 8),
                                             (Budget(max_iter=3, tol=1e-9, mode="sequential"), 2),
                                             (Budget(max_iter=12, tol=1e-9, mode="blockwise", block_size=4), 6)])
def test_piece_solves_count_the_evaluations_they_make(budget, segment):
    """Every row is evaluated at once, whole segments of updates (SEGMENT = 8 at most, evened out over max_iter - 1),
    then the final evaluation: the count the readings bench reports (what a GPU pays, against the iterations the
    statistics show). A piece at the cap pays no update past max_iter - 1 that evening out could spare."""
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids, lengths = padded_batch(3)
    runtime = Runtime(model, graphs="masked")
    out = runtime(ids, budget, lengths=lengths)
    solves = list(runtime.cache("piece_solves", dict).values())
    made = sum(s.evaluations for s in solves)
    slowest = out.stats.iterations.max(0).values  # each piece runs until its slowest row is done
    if budget.tol == 0:
        assert made == slowest.numel() * budget.max_iter
    else:
        assert {s.segment for s in solves} == {segment}
        segments = ((slowest - 1 + segment - 1) // segment).clamp_min(1)
        assert made == int((segments * segment + 1).sum()) and made >= int(slowest.sum())


def test_damped_update_measures_only_valid_tokens_and_moves_only_active_rows():
    """The masked update of a piece solve (torch twin, the definition the Triton kernel is held to)."""
    from implicit_ssm_eval.model_adapters.backends.torch_ops import damped_update

    z = torch.ones(3, 4, 2)
    fz = z.clone()
    fz[:, 2:] += 100.0  # far off, but only on tokens 2 and 3
    valid = torch.tensor([[True, True, False, False], [True, True, True, True], [True, True, False, False]])
    active = torch.tensor([True, True, False])
    iterations, converged = torch.tensor([0, 0, 5]), torch.zeros(3, dtype=torch.bool)
    before = z.clone()
    damped_update(z, fz, valid, active, iterations, converged, 0.75, 1e-3, 10)
    assert converged.tolist() == [True, False, False]  # row 0's far-off tokens are padding; row 2 is not active
    assert active.tolist() == [False, True, False]
    assert iterations.tolist() == [1, 1, 5]
    assert torch.equal(z[2], before[2])  # an inactive row keeps its iterate
    assert torch.allclose(z[1], 0.25 * before[1] + 0.75 * fz[1])  # (1 - tau) z + tau f(z)


@pytest.mark.parametrize("budget", [Budget(max_iter=60, tol=1e-6, tau=1.0, solver="backoff", mode="sequential"),
                                    Budget(max_iter=60, tol=1e-6, tau=1.0, solver="backoff", mode="blockwise",
                                           block_size=4)])
def test_masked_piece_solves_back_off_as_the_eager_solver_does(budget):
    """The backoff solver's damping per row, held by the piece solves, moves as fixed_point.Backoff's: on a model
    whose iteration does not contract, where rows stall and back off."""
    model = tiny_model("implicit", seed=2, dtype=torch.float64)
    ids, lengths = padded_batch(3)
    eager = model(ids, budget, lengths=lengths)
    runtime = Runtime(model, graphs="masked")
    masked = runtime(ids, budget, lengths=lengths)
    plain = runtime(ids, budget.replace(solver="fixed_point"), lengths=lengths)
    assert not torch.equal(masked.hidden, plain.hidden), "no row backed off: the test would not see the solver"
    for i, n in enumerate(lengths.tolist()):
        assert_close(masked.hidden[i, :n], eager.hidden[i, :n], 1e-10, f"hidden {i}")
    for name in ("iterations", "converged", "tokens"):
        assert torch.equal(getattr(masked.stats, name), getattr(eager.stats, name)), name


def test_backoff_converges_the_bundled_a5_models_stalling_first_token():
    """At the checkpoint's damping (0.8) the first token of some A5 words never converges: the damped iteration
    settles into a two-cycle at a residual near 0.3 and spends max_iter (the readings bench's "capped" pieces, which
    cost a lockstep block its whole budget). The backoff solver converges every row, in fewer evaluations in all;
    a row that converges before it could stall takes exactly as many as before."""
    from pathlib import Path

    from implicit_ssm_eval.model_adapters.fixed_point import BACKOFF_PATIENCE
    from implicit_ssm_eval.model_adapters.formats import load_checkpoint
    from implicit_ssm_eval.tasks.state_tracking import make_docs

    ckpt = load_checkpoint(Path(__file__).parents[2] / "checkpoints" / "a5-implicit", dtype=torch.float32)
    docs = make_docs("a5", "ood8x", num_docs=100, seed=0)
    ids = torch.tensor([ckpt.tokenizer.encode(d["input"])[:1] for d in docs])
    budget = Budget(max_iter=256, tol=0.01, tau=ckpt.default_budget.tau, mode="sequential")
    assert budget.tau == 0.8
    with torch.inference_mode():
        plain, backoff = (ckpt.model(ids, budget.replace(solver=s)).stats for s in ("fixed_point", "backoff"))
    capped = ~plain.converged[:, 0]
    assert capped.any() and (plain.iterations[capped, 0] == 256).all()
    assert backoff.converged.all() and backoff.iterations.max() < 256
    assert backoff.iterations.sum() < plain.iterations.sum()
    quick = plain.iterations <= BACKOFF_PATIENCE + 1
    assert quick.sum() > 10 and torch.equal(backoff.iterations[quick], plain.iterations[quick])
