"""Exit criteria (model_adapters/exits.py): each held, per (sequence, piece) in every reading, to a transcription of
its definition that iterates one sequence's pieces by hand; each stops early at a loose threshold and not at a tight
one; thresholds read off one trajectory equal separate runs; the runtime solves them eagerly, and says so."""

import logging

import pytest
import torch

from implicit_ssm_eval.model_adapters.config import Budget, ConfigError
from implicit_ssm_eval.model_adapters.exits import EXITS, ExitPoint, ExitSpec, RelativeResidual, register_exit
from implicit_ssm_eval.model_adapters.runtime import Runtime
from implicit_ssm_eval.model_adapters.testing import assert_close, tiny_model

MAX_ITER, TAU = 12, 0.8
LENGTHS = torch.tensor([7, 3, 6])
READINGS = [dict(mode="simultaneous"), dict(mode="sequential"), dict(mode="blockwise", block_size=3)]
# Per criterion: a threshold that stops the tiny contractive model early, and one that it never meets within MAX_ITER.
THRESHOLDS = {"residual": (1e-3, 1e-300), "residual_abs": (1e-3, 1e-300), "kl": (1e-6, 1e-300),
              "entropy": (1e-4, 1e-300), "argmax": (2, MAX_ITER - 1)}


@pytest.fixture(scope="module")
def model():
    return tiny_model("implicit", contractive=True, dtype=torch.float64).requires_grad_(False)


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(3)
    return torch.randint(0, 37, (3, 7))


# -- the oracle: one sequence, its pieces iterated by hand, each criterion written from its definition ---------------
def criterion(name: str, z, fz, logits: list):
    """The value of criterion `name` for one piece after an evaluation: z, fz (T, D); logits, this piece's logits so
    far (T, V) each, the newest last."""
    if name == "residual":
        return float((fz - z).norm() / (1e-6 + z.norm()))
    if name == "residual_abs":
        return max(float((fz[t] - z[t]).norm()) for t in range(z.shape[0]))
    if name == "argmax":
        top = [lg.argmax(-1) for lg in logits]
        streaks = []
        for t in range(z.shape[0]):
            n = 0
            while n + 1 < len(top) and top[-1 - n][t] == top[-2 - n][t]:
                n += 1
            streaks.append(n)
        return min(streaks)
    if len(logits) < 2:
        return float("inf")
    p, q = torch.softmax(logits[-1].double(), -1), torch.softmax(logits[-2].double(), -1)
    if name == "kl":
        return max(float((p[t] * (p[t].log() - q[t].log())).sum()) for t in range(z.shape[0]))
    entropy = [-(x * x.log()).sum(-1) for x in (p, q)]
    return max(float((entropy[0][t] - entropy[1][t]).abs()) for t in range(z.shape[0]))


def stops(name: str, value, tol) -> bool:
    return value >= tol if name == "argmax" else value < tol


@torch.no_grad()
def oracle(model, ids, budget: Budget):
    """One unpadded sequence (L,): its pieces in order, each from z = 0 with the state the previous one committed;
    at most max_iter - 1 damped updates, stopping once the criterion meets tol; then the final evaluation. Returns
    the hidden states (L, D) and the f evaluations per piece."""
    u = model.inject(ids[None])
    size = {"simultaneous": ids.shape[0], "sequential": 1}.get(budget.mode, budget.block_size)
    state, hidden, iterations = model.empty_state(1), [], []
    for start in range(0, ids.shape[0], size):
        u_piece = u[:, start: start + size]
        z, logits, updates = torch.zeros(*u_piece.shape[:2], model.cfg.d_model, dtype=torch.float64), [], 0
        for _ in range(budget.max_iter - 1):
            fz = model.f(z, u_piece, state, commit=False)[0]
            logits.append(model.logits(fz[0]))
            value = criterion(budget.exit, z[0], fz[0], logits)
            z, updates = (1 - budget.tau) * z + budget.tau * fz, updates + 1
            if stops(budget.exit, value, budget.tol):
                break
        out, state = model.f(z, u_piece, state, commit=True)
        hidden.append(out[0])
        iterations.append(updates + 1)
    return torch.cat(hidden), iterations


def test_the_criteria_measure_what_their_definitions_say_on_known_distributions():
    """The head is the identity here, so each f(z) is a row of logits: 2 sequences of 2 tokens over 3 words, the
    second sequence's last token padding (which no criterion may look at)."""
    from implicit_ssm_eval.model_adapters.exits import exit_test

    valid = torch.tensor([[True, True], [True, False]])
    steps = [torch.tensor([[[4.0, 0, 0], [0, 0, 0]], [[0, 3.0, 0], [9.0, 0, 0]]], dtype=torch.float64),
             torch.tensor([[[1.0, 0, 0], [0, 0, 2.0]], [[0, 3.0, 0], [0, 9.0, 0]]], dtype=torch.float64),
             torch.tensor([[[0, 2.0, 0], [0, 0, 2.0]], [[0, 3.0, 0], [0, 0, 9.0]]], dtype=torch.float64)]
    tests = {name: exit_test(name, 2, lambda h: h) for name in ("kl", "entropy", "argmax", "residual_abs")}
    seen = {name: [test.value(None, z, fz, valid) for z, fz in zip([torch.zeros_like(steps[0])] + steps, steps)]
            for name, test in tests.items()}

    def kl(p, q):
        p, q = torch.softmax(p, -1), torch.softmax(q, -1)
        return float((p * (p / q).log()).sum())

    def entropy(p):
        p = torch.softmax(p, -1)
        return float(-(p * p.log()).sum())

    assert seen["kl"][0].tolist() == [float("inf")] * 2  # nothing to compare the first distribution with
    first_row = max(kl(steps[1][0, 0], steps[0][0, 0]), kl(steps[1][0, 1], steps[0][0, 1]))
    assert seen["kl"][1].tolist() == pytest.approx([first_row, 0.0])  # row 1: its padded token changed, not counted
    assert seen["kl"][1][0] != pytest.approx(max(kl(steps[0][0, t], steps[1][0, t]) for t in range(2)))  # direction
    change = max(abs(entropy(steps[2][0, t]) - entropy(steps[1][0, t])) for t in range(2))
    assert seen["entropy"][2].tolist() == pytest.approx([change, 0.0])
    # argmax per token, row 0: (0, 0) -> (0, 2) -> (1, 2): the smallest streak 0, 0, 0; row 1: (1, *) unchanged
    assert [v.tolist() for v in seen["argmax"]] == [[0, 0], [0, 1], [0, 2]]
    absolute = max(float((steps[1][0, t] - steps[0][0, t]).norm()) for t in range(2))
    assert seen["residual_abs"][1].tolist() == pytest.approx([absolute, 0.0])


@pytest.mark.parametrize("reading", READINGS, ids=lambda r: r["mode"])
@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_each_criterion_stops_each_piece_where_its_definition_says(model, ids, name, reading):
    """Per (sequence, piece), in a padded batch: the iterations and outputs of the transcription above."""
    budget = Budget(max_iter=MAX_ITER, tau=TAU, tol=THRESHOLDS[name][0], exit=name, **reading)
    out = model(ids, budget, lengths=LENGTHS)
    for i, n in enumerate(LENGTHS.tolist()):
        hidden, iterations = oracle(model, ids[i, :n], budget)
        present = out.stats.present[i]
        assert out.stats.iterations[i][present].tolist() == iterations, f"sequence {i}"
        assert_close(out.hidden[i, :n], hidden, 1e-10, f"sequence {i}")


@pytest.mark.parametrize("reading", READINGS, ids=lambda r: r["mode"])
@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_a_loose_threshold_stops_early_and_a_tight_one_does_not(model, ids, name, reading):
    loose, tight = THRESHOLDS[name]
    early = model(ids, Budget(max_iter=MAX_ITER, tau=TAU, tol=loose, exit=name, **reading), lengths=LENGTHS).stats
    late = model(ids, Budget(max_iter=MAX_ITER, tau=TAU, tol=tight, exit=name, **reading), lengths=LENGTHS).stats
    present = early.present
    assert (early.iterations[present] < MAX_ITER).all() and early.converged[present].all()
    assert (late.iterations[present] == MAX_ITER).all()
    assert not late.converged[present].any() or name == "argmax"  # argmax's streak reaches max_iter - 1 at the end


def test_pieces_stop_on_their_own(model, ids):
    """One sequence's stopping does not hold another's: in a batch, each sequence keeps the count it has alone."""
    budget = Budget(max_iter=MAX_ITER, tau=TAU, tol=1e-6, exit="kl")
    batched = model(ids, budget, lengths=LENGTHS).stats.iterations[:, 0]
    alone = [int(model(ids[i: i + 1, :n], budget).stats.iterations[0, 0]) for i, n in enumerate(LENGTHS.tolist())]
    assert batched.tolist() == alone and len(set(alone)) > 1  # the sequences do stop at different evaluations


def test_the_default_criterion_is_the_relative_residual_bit_for_bit(model, ids):
    budget = Budget(max_iter=MAX_ITER, tau=TAU, tol=1e-3, mode="sequential")
    assert budget == budget.replace(exit="residual") and "exit" not in budget.to_dict()
    a = model(ids, budget, lengths=LENGTHS)
    register_exit(ExitSpec("residual_again", lambda batch, head: RelativeResidual()))
    try:
        b = model(ids, budget.replace(exit="residual_again"), lengths=LENGTHS)
    finally:
        del EXITS["residual_again"]
    assert torch.equal(a.hidden, b.hidden) and torch.equal(a.stats.iterations, b.stats.iterations)


def test_thresholds_read_off_one_trajectory_equal_separate_runs(model, ids):
    points = [ExitPoint("kl", 1e-6), ExitPoint("kl", 1e-9), ExitPoint("argmax", 2), ExitPoint("residual", 1e-3),
              ExitPoint("entropy", 1e-300)]
    run = model(ids, Budget(max_iter=MAX_ITER, tau=TAU, tol=0), lengths=LENGTHS, anytime=points)
    assert sorted(k for k in run.anytime if isinstance(k, int)) == [MAX_ITER]
    for p in points:
        alone = model(ids, Budget(max_iter=MAX_ITER, tau=TAU, tol=p.tol, exit=p.exit), lengths=LENGTHS)
        got = run.anytime[p]
        for i, n in enumerate(LENGTHS.tolist()):
            assert_close(got.hidden[i, :n], alone.hidden[i, :n], 1e-10, f"{p} sequence {i}")
        assert torch.equal(got.stats.iterations, alone.stats.iterations), p
        assert torch.equal(got.stats.converged, alone.stats.converged), p
        assert_close(got.stats.residual, alone.stats.residual, 1e-10, f"{p} residual")
    counts = {p: run.anytime[p].stats.iterations[:, 0].tolist() for p in points}
    assert counts[ExitPoint("kl", 1e-6)] != counts[ExitPoint("kl", 1e-9)]  # the thresholds do differ somewhere
    assert counts[ExitPoint("entropy", 1e-300)] == [MAX_ITER] * 3


@pytest.mark.parametrize("budget,match", [
    (Budget(max_iter=8, mode="sequential"), "mode=simultaneous"),
    (Budget(max_iter=8, tol=0.1), "tol=0"),
])
def test_thresholds_off_a_trajectory_are_refused_where_they_would_not_be_exact(model, budget, match):
    """A later piece starts from the state its predecessor committed at its own exit: one trajectory cannot serve."""
    with pytest.raises(ConfigError, match=match):
        model(torch.randint(0, 37, (1, 5)), budget, anytime=[ExitPoint("kl", 1e-3)])


@pytest.mark.parametrize("kwargs,match", [
    (dict(exit="kl"), "exit=kl needs tol > 0"),
    (dict(exit="argmax", tol=1.5), "must be an integer >= 1"),
    (dict(exit="halting", tol=0.1), "exit must be one of"),
])
def test_budget_validation_of_exits(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Budget(**kwargs)


@pytest.mark.parametrize("reading", READINGS[1:], ids=lambda r: r["mode"])
def test_the_runtime_solves_other_criteria_eagerly_and_says_so(model, ids, reading, caplog):
    """Masked solves test the relative residual only: a kl budget gets the eager reading's numbers, logged once."""
    budget = Budget(max_iter=MAX_ITER, tau=TAU, tol=1e-6, exit="kl", **reading)
    runtime = Runtime(model, "torch", "masked")
    with caplog.at_level(logging.INFO, logger="implicit_ssm_eval.model_adapters.runtime.runtime"):
        for _ in range(2):
            out = runtime(ids, budget, lengths=LENGTHS)
    eager = model(ids, budget, lengths=LENGTHS)
    assert torch.equal(out.hidden, eager.hidden) and torch.equal(out.stats.iterations, eager.stats.iterations)
    notes = [r for r in caplog.records if "['kl']" in r.getMessage() and "eager" in r.getMessage()]
    assert len(notes) == 1


def test_a_criterion_registered_from_outside_is_usable_everywhere(model, ids):
    class Never(RelativeResidual):
        def stops(self, value, tol):
            return torch.zeros_like(value, dtype=torch.bool)

    register_exit(ExitSpec("never", lambda batch, head: Never()))
    try:
        out = model(ids, Budget(max_iter=5, tol=0.5, exit="never"), lengths=LENGTHS)
        assert (out.stats.iterations == 5).all()
        from implicit_ssm_eval.harness.sweep_cli import exit_arg

        assert exit_arg("never:0.1,0.2") == ("never", (0.1, 0.2))
    finally:
        del EXITS["never"]
    with pytest.raises(ConfigError, match="exit must be one of"):
        Budget(exit="never", tol=0.5)
