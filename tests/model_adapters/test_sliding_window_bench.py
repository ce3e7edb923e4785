"""bench/sliding_window.py's backoff in a window: a damping per (row, token), as the solver holds one per row."""

import sys
from pathlib import Path

import torch

from implicit_ssm_eval.model_adapters.fixed_point import BACKOFF_FACTOR, BACKOFF_PATIENCE

# bench/ on the path only for this import: its kernels.py would otherwise shadow the `kernels` package that
# transformers looks for, and break every later test that builds a transformers model
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
try:
    from sliding_window import TokenDamping
finally:
    sys.path.pop(0)


def _pair(k: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z, f(z) of one row: token 0's residual halves at every update, every other token's stays at 1."""
    z = torch.ones(1, tokens, 4)
    fz = 2 * z
    fz[0, 0] = 1 + 0.5 ** k
    return z, fz


def test_only_the_stalled_token_backs_off_and_the_update_uses_its_own_damping():
    damping = TokenDamping(0.8)
    for k in range(BACKOFF_PATIENCE + 1):
        z, fz = _pair(k, 2)
        new = damping.update(z, fz)
    assert damping.damp[0, 0] == torch.tensor(0.8)  # a falling residual never backs off: fixed_point's damping
    assert torch.isclose(damping.damp[0, 1], torch.tensor(0.8 * BACKOFF_FACTOR))
    expected = (1 - damping.damp[..., None]) * z + damping.damp[..., None] * fz
    assert torch.equal(new, expected)


def test_tokens_taken_in_start_at_tau_and_the_window_keeps_its_own():
    damping = TokenDamping(0.8)
    for k in range(BACKOFF_PATIENCE + 1):
        damping.update(*_pair(k, 2))
    damping.update(*_pair(BACKOFF_PATIENCE + 1, 3))  # the window grew by one token
    assert torch.isclose(damping.damp[0, 1], torch.tensor(0.8 * BACKOFF_FACTOR))
    assert damping.damp[0, 2] == torch.tensor(0.8) and damping.stall[0, 2] == 0
    damping.restart(1, 2)  # after a commit: the tokens left start a solve of their own
    assert torch.equal(damping.damp, torch.full((1, 2), 0.8))
