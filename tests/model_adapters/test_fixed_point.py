"""The fixed-point engine: reference semantics counted exactly, per-sequence stopping, anytime outputs,
Anderson, the solver contract and registry, and the Budget's validation (readings: test_reading.py)."""

import pytest
import torch

from implicit_ssm_eval.model_adapters.config import Budget, ConfigError
from implicit_ssm_eval.model_adapters.fixed_point import SOLVERS, Damped, register_solver, solve
from implicit_ssm_eval.model_adapters.testing import assert_close, tiny_model


class CountingF:
    """Wraps ImplicitLM.f to count evaluations (and the rows each evaluation covered)."""

    def __init__(self, model):
        self.model, self.calls, self.rows = model, 0, 0
        self.inner = model.f

    def __call__(self, z, u, state=None, valid=None, commit=True, ops=None):
        self.calls += 1
        self.rows += z.shape[0]
        return self.inner(z, u, state, valid, commit, ops)


def reference_eval(model, ids, k, tau, tol):
    """A transcription of the reference's evaluation loop (implicit.py, _sequential_step) on a full
    sequence: z = 0; k - 1 damped updates stopping when ||f(z) - z|| / (1e-6 + ||z||) < tol, measured over
    the whole batch tensor; then one final f. Returns (hidden, number of f evaluations)."""
    u = model.inject(ids)
    z = torch.zeros(*ids.shape, model.cfg.d_model, dtype=model.cd)
    calls = 0
    for _ in range(k - 1):
        z_next = model.f(z, u)[0]
        calls += 1
        diff = torch.norm(z_next - z) / (1e-6 + torch.norm(z))
        z = (1 - tau) * z + tau * z_next
        if diff < tol:
            break
    return model.f(z, u)[0], calls + 1


def reference_sequential(model, ids, k, tau):
    """The reference's token-by-token evaluation (sequential.py + _sequential_step, noise off): each token's
    latent starts at 0, k - 1 damped updates with the cache frozen, then a final f that updates the cache."""
    u = model.inject(ids)
    state = model.empty_state(ids.shape[0])
    outs = []
    for t in range(ids.shape[1]):
        z = torch.zeros(ids.shape[0], model.cfg.d_model, dtype=model.cd)
        for _ in range(k - 1):
            z = (1 - tau) * z + tau * model.f_step(z, u[:, t], state)[0]
        out, state = model.f_step(z, u[:, t], state)
        outs.append(out)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_simultaneous_equals_reference_f_thres_and_counts_evaluations(k):
    model = tiny_model("implicit", dtype=torch.float64)
    ids = torch.randint(0, 37, (3, 11))
    expected, calls = reference_eval(model, ids, k, tau=0.8, tol=0.0)
    counter = CountingF(model)
    model.f = counter
    out = model(ids, Budget(max_iter=k, tol=0.0, tau=0.8))
    assert counter.calls == k == calls
    assert torch.equal(out.stats.iterations, torch.full((3, 1), k))
    assert_close(out.hidden, expected, 1e-12, "hidden")


@pytest.mark.parametrize("k", [1, 3])
def test_sequential_equals_reference_token_loop(k):
    model = tiny_model("implicit", dtype=torch.float64)
    ids = torch.randint(0, 37, (2, 9))
    out = model(ids, Budget(max_iter=k, tol=0.0, tau=0.7, mode="sequential"))
    assert_close(out.hidden, reference_sequential(model, ids, k, 0.7), 1e-12, "hidden")
    assert out.stats.iterations.shape == (2, 9) and (out.stats.iterations == k).all()


def test_per_sequence_stopping_batch_of_8_equals_8_batches_of_1():
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids = torch.randint(0, 37, (8, 13))
    budget = Budget(max_iter=40, tol=1e-3)
    batched = model(ids, budget)
    for i in range(8):
        alone = model(ids[i : i + 1], budget)
        expected, calls = reference_eval(model, ids[i : i + 1], 40, 0.8, 1e-3)
        assert_close(batched.hidden[i], alone.hidden[0], 1e-10, f"sequence {i}")
        assert_close(alone.hidden, expected, 1e-12, f"sequence {i} vs reference")
        assert int(batched.stats.iterations[i, 0]) == int(alone.stats.iterations[0, 0]) == calls
    assert batched.stats.converged.all()


def test_converged_sequences_stop_costing_compute():
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids = torch.randint(0, 37, (6, 10))
    counter = CountingF(model)
    model.f = counter
    out = model(ids, Budget(max_iter=50, tol=1e-4))
    # Each sequence is evaluated exactly as often as its own iteration count says, no more.
    assert counter.rows == int(out.stats.iterations.sum())
    assert int(out.stats.iterations.max()) < 50


def test_padding_does_not_change_stopping():
    """Residuals are measured over each sequence's valid tokens, so padding changes neither outputs nor
    iteration counts."""
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    lengths = torch.tensor([4, 11, 7])
    ids = torch.randint(0, 37, (3, 11))
    budget = Budget(max_iter=30, tol=1e-3)
    out = model(ids, budget, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = model(ids[i : i + 1, :n], budget)
        assert_close(out.hidden[i, :n], alone.hidden[0], 1e-10, f"sequence {i}")
        assert int(out.stats.iterations[i, 0]) == int(alone.stats.iterations[0, 0])
        assert_close(out.state[0].ssm[i], alone.state[0].ssm[0], 1e-10, f"state {i}")
        assert_close(out.state[1].conv[i], alone.state[1].conv[0], 1e-10, f"conv state {i}")


def test_anytime_outputs_equal_separate_runs():
    model = tiny_model("implicit", dtype=torch.float64)
    ids = torch.randint(0, 37, (2, 9))
    counter = CountingF(model)
    model.f = counter
    run = model(ids, Budget(max_iter=8, tol=0), anytime=[1, 2, 4])
    assert counter.calls == 8  # one trajectory, no recomputation
    assert sorted(run.anytime) == [1, 2, 4, 8]  # the run's own budget is one of them
    for k, readout in run.anytime.items():
        alone = model(ids, Budget(max_iter=k, tol=0))
        assert_close(readout.hidden, alone.hidden, 1e-12, f"budget {k}")
        assert torch.equal(readout.stats.iterations, alone.stats.iterations)
        assert torch.equal(readout.stats.residual, alone.stats.residual)


@pytest.mark.parametrize("budget,match", [
    (Budget(max_iter=8, tol=0.1), "tol=0"),
    (Budget(max_iter=8, mode="sequential"), "mode=simultaneous"),
    (Budget(max_iter=8, mode="blockwise", block_size=64), "mode=simultaneous"),
    (Budget(max_iter=4), r"\[1, max_iter=4\]"),
])
def test_anytime_rejects_what_it_cannot_do_exactly(budget, match):
    model = tiny_model("implicit")
    with pytest.raises(ConfigError, match=match):
        model(torch.randint(0, 37, (1, 5)), budget, anytime=[1, 8] if budget.max_iter == 4 else [1])


def test_anderson_reaches_the_same_fixed_point_in_fewer_evaluations():
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids = torch.randint(0, 37, (4, 30))
    damped = model(ids, Budget(max_iter=200, tol=1e-8, solver="fixed_point"))
    anderson = model(ids, Budget(max_iter=200, tol=1e-8, solver="anderson"))
    assert damped.stats.converged.all() and anderson.stats.converged.all()
    assert (anderson.stats.iterations < damped.stats.iterations).all()
    assert_close(anderson.hidden, damped.hidden, 1e-6, "fixed points")


def test_anderson_on_a_linear_contraction():
    """solve() alone: Anderson solves a linear fixed point z = Wz + b far faster than damped iteration."""
    torch.manual_seed(0)
    Q = torch.linalg.qr(torch.randn(3, 20, 20, dtype=torch.float64))[0]
    eigenvalues = torch.linspace(-0.98, 0.98, 20, dtype=torch.float64)  # slow for damped iteration
    W = Q @ torch.diag(eigenvalues) @ Q.transpose(1, 2)
    b = torch.randn(3, 20, dtype=torch.float64)

    def f(z, ctx, commit):
        W_rows, b_rows = ctx  # the solver hands over the context of the rows it still iterates
        return torch.einsum("rij,rj->ri", W_rows, z) + b_rows, None

    exact = torch.linalg.solve(torch.eye(20, dtype=torch.float64) - W, b)
    z0 = torch.zeros(3, 20, dtype=torch.float64)
    a = solve(f, z0, Budget(max_iter=3000, tol=1e-10, tau=1.0, solver="anderson", anderson_m=8), context=(W, b))
    d = solve(f, z0, Budget(max_iter=3000, tol=1e-10, tau=1.0), context=(W, b))
    fz_a, st_a, st_d = a.fz, a.stats, d.stats
    assert_close(fz_a, exact, 1e-8, "anderson solution")
    assert st_a.converged.all() and st_d.converged.all()
    assert (st_a.iterations * 5 < st_d.iterations).all(), (st_a.iterations, st_d.iterations)


def test_backoff_converges_a_row_whose_damping_overshoots_and_leaves_the_others_on_their_path():
    """Row 0's map has an eigenvalue of -1.6: damped iteration at tau 0.8 multiplies that component by
    1 - 0.8 * 2.6 = -1.08 an update, so its residual never falls; the backoff solver lowers that row's damping once it
    has stalled and converges it to the same fixed point. Row 1 contracts, never stalls, and follows fixed_point's
    path bit for bit."""
    eigenvalues = torch.tensor([[-1.6, 0.5, 0.3], [0.5, 0.4, -0.2]], dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 2.0]], dtype=torch.float64)

    def f(z, ctx, commit):
        return ctx[0] * z + ctx[1], None

    z0 = torch.zeros(2, 3, dtype=torch.float64)
    budget = Budget(max_iter=400, tol=1e-8, tau=0.8)
    plain = solve(f, z0, budget, context=(eigenvalues, b))
    backoff = solve(f, z0, budget.replace(solver="backoff"), context=(eigenvalues, b))
    assert plain.stats.iterations.tolist()[0] == 400 and not plain.stats.converged[0]
    assert backoff.stats.converged.all() and backoff.stats.iterations[0] < 200
    assert_close(backoff.fz, b / (1 - eigenvalues), 1e-6, "the fixed point")
    assert backoff.stats.iterations[1] == plain.stats.iterations[1] and torch.equal(backoff.fz[1], plain.fz[1])


def test_simultaneous_and_sequential_agree_on_a_contractive_model():
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids = torch.randint(0, 37, (2, 25))
    budget = Budget(max_iter=60, tol=0)
    sim = model(ids, budget)
    seq = model(ids, budget.replace(mode="sequential"))
    assert_close(seq.hidden, sim.hidden, 1e-9, "hidden")
    for a, b in zip(seq.state, sim.state):
        assert_close(a.ssm, b.ssm, 1e-9, "ssm state")


def test_sequential_stats_are_per_token_and_stop_per_token():
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids = torch.randint(0, 37, (3, 8))
    out = model(ids, Budget(max_iter=50, tol=1e-4, mode="sequential"), lengths=torch.tensor([8, 3, 5]))
    its = out.stats.iterations
    assert its.shape == (3, 8)
    assert (its[1, 3:] == 0).all() and (its[2, 5:] == 0).all()  # padding costs nothing
    assert out.stats.tokens.tolist() == [[1] * 8, [1] * 3 + [0] * 5, [1] * 5 + [0] * 3]
    assert (its[0] > 1).all() and (its[0] < 50).all() and out.stats.converged[0].all()


def test_stats_semantics():
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids = torch.randint(0, 37, (2, 6))
    out = model(ids, Budget(max_iter=3, tol=0))
    assert out.stats.iterations.shape == (2, 1) and out.stats.tokens.tolist() == [[6], [6]]
    assert (out.stats.iterations == 3).all() and not out.stats.converged.any()
    assert (out.stats.residual > 0).all() and torch.isfinite(out.stats.residual).all()
    out = model(ids, Budget(max_iter=1, tol=0))
    assert (out.stats.iterations == 1).all()


def test_implicit_step_equals_sequential_forward():
    """step() is the generation path: it must continue a sequential forward exactly."""
    model = tiny_model("implicit", dtype=torch.float64)
    ids = torch.randint(0, 37, (2, 10))
    budget = Budget(max_iter=4, tol=0, mode="sequential")
    full = model(ids, budget)
    pre = model(ids[:, :6], budget)
    state, hidden = pre.state, [pre.hidden]
    for t in range(6, 10):
        out = model.step(ids[:, t], state, budget)
        state, hidden = out.state, hidden + [out.hidden[:, None]]
    assert_close(torch.cat(hidden, 1), full.hidden, 1e-12, "hidden")


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_iter=0), r"max_iter must be an integer in \[1, 4096\], got 0"),
    (dict(max_iter=4097), r"max_iter must be an integer in \[1, 4096\], got 4097"),
    (dict(max_iter=2.5), "max_iter must be an integer"),
    (dict(tol=-1.0), "tol must be a finite number >= 0"),
    (dict(tol=float("nan")), "tol must be"),
    (dict(tau=0.0), r"tau must be a number in \(0, 1\]"),
    (dict(tau=1.5), "tau must be"),
    (dict(solver="broyden"), "solver must be one of"),
    (dict(mode="parallel"), "mode must be one of"),
    (dict(mode="blockwise"), "mode=blockwise needs block_size"),
    (dict(mode="blockwise", block_size=0), "mode=blockwise needs block_size"),
    (dict(mode="blockwise", block_size=2.0), "mode=blockwise needs block_size"),
    (dict(mode="sequential", block_size=4), "block_size applies to mode=blockwise only"),
    (dict(anderson_m=0), "anderson_m must be"),
])
def test_budget_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Budget(**kwargs)


def test_budget_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['max_iters'\]; valid keys are"):
        Budget.from_dict({"max_iters": 3})


def test_anderson_ignores_padding():
    """Anderson's mixing weights come from each row's valid positions only: padded rows equal single runs."""
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    lengths = torch.tensor([3, 12, 8])
    ids = torch.randint(0, 37, (3, 12))
    budget = Budget(max_iter=60, tol=1e-9, solver="anderson", anderson_m=4)
    out = model(ids, budget, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = model(ids[i : i + 1, :n], budget)
        assert_close(out.hidden[i, :n], alone.hidden[0], 1e-9, f"sequence {i}")
        assert int(out.stats.iterations[i, 0]) == int(alone.stats.iterations[0, 0])


def test_solve_returns_the_final_evaluations_aux_and_hands_f_only_running_rows():
    """f(z, ctx, commit) -> (fz, aux): the solver gathers the context of the rows still iterating, asks for the
    commit on the final evaluation only (all rows), and returns that evaluation's aux."""
    targets = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    speed = torch.tensor([0.9, 0.1, 0.5], dtype=torch.float64)  # row 1 converges slowest, row 0 fastest
    seen, commits = [], []

    def f(z, ctx, commit):
        t, s = ctx
        seen.append(t[:, 0].tolist())
        commits.append(commit)
        return z + s[:, None] * (t - z), {"calls": len(seen), "rows": t[:, 0].clone()} if commit else None

    sol = solve(f, torch.zeros(3, 1, dtype=torch.float64), Budget(max_iter=50, tol=1e-3, tau=1.0),
                context=(targets, speed))
    assert sol.aux["calls"] == len(seen) and sol.aux["rows"].tolist() == [1.0, 2.0, 3.0]
    assert commits == [False] * (len(seen) - 1) + [True]
    assert seen[0] == [1.0, 2.0, 3.0] and seen[-2] == [2.0]  # the fast rows left the loop early
    its = sol.stats.iterations.tolist()
    assert its[1] > its[2] > its[0] > 1 and sol.stats.converged.all()
    assert len(seen) == max(its)  # the longest row sets the number of calls; every call covered only running rows
    assert sum(len(rows) for rows in seen[:-1]) == sum(k - 1 for k in its)


def test_a_solver_registered_in_one_place_is_usable_everywhere():
    @register_solver("half_step")
    class HalfStep(Damped):
        def update(self, rows, z, fz, valid, k):
            return 0.5 * (z + fz)

    try:
        model = tiny_model("implicit", dtype=torch.float64)
        ids = torch.randint(0, 37, (2, 5))
        out = model(ids, Budget(max_iter=3, solver="half_step"))
        assert_close(out.hidden, model(ids, Budget(max_iter=3, tau=0.5)).hidden, 1e-12, "half step = tau 0.5")
        from implicit_ssm_eval.harness.sweep_cli import sweep_parser

        action = next(a for a in sweep_parser()._actions if a.dest == "solver")
        assert "half_step" in action.choices
    finally:
        del SOLVERS["half_step"]
    with pytest.raises(ConfigError, match="solver must be one of"):
        Budget(solver="half_step")


def test_scan_stays_float32_under_autocast():
    """autocast would run the scan's einsums in bfloat16; the scan switches it off (training runs under it)."""
    from implicit_ssm_eval.model_adapters.ssd import ssd_chunked

    torch.manual_seed(0)
    x, dt = torch.randn(2, 40, 4, 8), torch.rand(2, 40, 4) * 0.5
    A, B, C = -torch.rand(4) - 0.5, torch.randn(2, 40, 2, 8), torch.randn(2, 40, 2, 8)
    plain, _ = ssd_chunked(x, dt, A, B, C, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, _ = ssd_chunked(x, dt, A, B, C, 16)
    assert auto.dtype == torch.float32
    assert_close(auto, plain, 1e-6, "scan under autocast")


@pytest.mark.parametrize("keep,expected", [((), 1), ((2, 3), 3)])
def test_at_tol_0_only_kept_budgets_measure_their_residual(monkeypatch, keep, expected):
    """At tol 0 no iteration stops on its residual: only the final evaluation and anytime budgets measure one."""
    from implicit_ssm_eval.model_adapters import fixed_point

    calls, real = [], fixed_point.relative_residual
    monkeypatch.setattr(fixed_point, "relative_residual", lambda *a: calls.append(1) or real(*a))
    z0 = torch.zeros(3, 4)
    solution = fixed_point.solve(lambda z, ctx, commit: (0.5 * z + 1, None), z0, Budget(max_iter=5, tol=0.0),
                                 keep=keep)
    assert len(calls) == expected and sorted(solution.anytime) == list(keep)


def test_a_long_solve_says_it_is_still_running(monkeypatch, caplog):
    """A large max_iter can run for minutes between two ticks of a progress bar: the solve logs a line every
    PROGRESS_SECONDS (0 here: every iteration) naming the iteration and the cap."""
    import logging

    from implicit_ssm_eval.model_adapters import fixed_point

    monkeypatch.setattr(fixed_point, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="implicit_ssm_eval.model_adapters.fixed_point"):
        solve(lambda z, ctx, final: (0.5 * z, None), torch.ones(2, 3), Budget(max_iter=4, tol=0))
    lines = [r.getMessage() for r in caplog.records if "fixed-point solve" in r.getMessage()]
    assert len(lines) == 3 and lines[0].startswith("fixed-point solve: iteration 1 of max_iter=4, 2 row(s) still "
                                                   "iterating"), lines


def test_a_costly_budget_is_told_what_it_may_cost():
    from implicit_ssm_eval.model_adapters.config import cost_notice

    assert cost_notice(Budget(max_iter=256)) is None
    assert cost_notice(Budget(max_iter=1000, tol=0)) == (
        "max_iter=1000 at tol=0: up to 1000 forward passes per sequence (tol=0 never stops early); valid up to 4096")
    assert "per token (fewer where a token converges to tol=0.001)" in cost_notice(
        Budget(max_iter=300, tol=1e-3, mode="sequential"))
