"""bench/block_newton.py: its block loop reads as the library's blockwise reading, and its quasi-Newton parts solve
what they claim to (GMRES per row, Anderson weights per token, Newton steps that reach the block's fixed point)."""

import sys
from pathlib import Path

import pytest
import torch

from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.fixed_point import _anderson_mix
from implicit_ssm_eval.model_adapters.formats import load_checkpoint

# bench/ on the path only for these imports (its kernels.py would shadow the `kernels` package transformers reads)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
try:
    from block_newton import Damped, Momentum, Newton, TokenSecant, gmres, lag, library_read, read_blocks, token_mix
    from readings import documents
finally:
    sys.path.pop(0)

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "a5-implicit"


@pytest.fixture(scope="module")
def a5():
    ckpt = load_checkpoint(CHECKPOINT, dtype=torch.float32)
    docs = documents("a5", "ood8x", 4, 1)
    ids = torch.tensor([ckpt.tokenizer.encode(d["input"])[:64] for d in docs])
    return ckpt.model, ids


def test_the_damped_block_loop_reads_as_the_library_blockwise_reading(a5):
    model, ids = a5
    budget = Budget(max_iter=256, tol=0.01, tau=0.8)
    with torch.no_grad():
        mine, counts = read_blocks(model, ids, 16, budget, lambda: Damped(0.8))
        theirs, library = library_read(model, ids, budget.replace(mode="blockwise", block_size=16))
    assert counts["sequential_evaluations"] == library["sequential_evaluations"]
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_gmres_solves_a_system_of_its_own_in_every_row():
    g = torch.Generator().manual_seed(0)
    mats = torch.eye(24, dtype=torch.float64) + 0.4 * torch.randn(3, 24, 24, generator=g, dtype=torch.float64) / 24**0.5
    b = torch.randn(3, 24, generator=g, dtype=torch.float64)
    x, made = gmres(lambda v: (mats @ v[..., None])[..., 0], b, 24, 1e-10)
    assert made <= 24
    torch.testing.assert_close(x, torch.linalg.solve(mats, b), rtol=1e-8, atol=1e-8)


def test_token_mix_weighs_each_token_as_anderson_weighs_a_row_of_that_token_alone():
    g = torch.Generator().manual_seed(1)
    xs, fs = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 5, 8, generator=g)  # (R, n, T, D)
    mixed = token_mix(xs, fs, 0.8)
    for t in range(5):
        torch.testing.assert_close(mixed[:, t], _anderson_mix(xs[:, :, t], fs[:, :, t], None, 0.8))


def test_newton_steps_reach_the_blocks_fixed_point(a5):
    model, ids = a5
    budget = Budget(max_iter=256, tol=1e-4, tau=0.8)  # tight: two readings of one fixed point agree closely
    with torch.no_grad():
        damped, _ = read_blocks(model, ids, 16, budget, lambda: Damped(0.8))
        newton, counts = read_blocks(model, ids, 16, budget, lambda: Newton(0.8, warm=8, iters=20, rtol=0.1))
    assert counts["capped"] == 0
    gap = (newton - damped).norm(dim=-1) / damped.norm(dim=-1)
    assert float(gap.max()) < 1e-3, gap


def test_the_token_secant_lands_on_each_tokens_fixed_point_of_a_linear_map():
    """f(z)_t = lam_t z_t + c_t with a slope of its own per (row, token): one secant step from two iterates solves
    every token at once, which one damping for all could not."""
    g = torch.Generator().manual_seed(2)
    lam = torch.rand(2, 5, 1, generator=g) - 0.5
    c = torch.randn(2, 5, 8, generator=g)

    def f(z):
        return lam * z + c

    secant, z = TokenSecant(0.8, warm=1, low=0.1, high=10.0), torch.zeros(2, 5, 8)
    for k in (1, 2):
        z, made = secant.update(f, z, f(z), k)
    assert made == 0
    torch.testing.assert_close(z, c / (1 - lam), rtol=1e-5, atol=1e-5)


def test_momentum_adds_beta_times_the_last_step_to_the_damped_update():
    g = torch.Generator().manual_seed(3)
    z0, z1, f0, f1 = (torch.randn(2, 3, 4, generator=g) for _ in range(4))
    heavy = Momentum(0.8, beta=0.3)
    first, _ = heavy.update(None, z0, f0, 1)
    second, _ = heavy.update(None, z1, f1, 2)
    torch.testing.assert_close(first, 0.2 * z0 + 0.8 * f0)
    torch.testing.assert_close(second, 0.2 * z1 + 0.8 * f1 + 0.3 * (z1 - z0))


def test_lag_sets_each_blocks_count_beside_its_own_hardest_token():
    """Two rows of 4 tokens in blocks of 2: the hardest token is taken within each block and row, in token order."""
    from types import SimpleNamespace

    tokens = torch.tensor([[1, 5, 2, 3], [4, 1, 1, 6]])
    blocks = torch.tensor([[10, 9], [8, 12]])

    def model(ids, budget):
        its = tokens if budget.mode == "sequential" else blocks
        return SimpleNamespace(stats=SimpleNamespace(iterations=its))

    row = lag(model, torch.zeros(2, 4, dtype=torch.long), Budget(max_iter=8, tol=0.1), 2)
    assert row["block_evaluations"] == [10, 12] and row["hardest_token_evaluations"] == [5, 6]
    assert row["block_over_hardest_token_per_row"] == pytest.approx((10 / 5 + 9 / 3 + 8 / 4 + 12 / 6) / 4)
