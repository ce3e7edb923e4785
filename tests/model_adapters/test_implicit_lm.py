"""The production path held to the one-file model (model_adapters/implicit_lm.py) in float64.

The oracle shares no code with the production path (a test checks its imports), so an agreement here is evidence
from an independent computation: the eager solver (gathering rows) and the masked piece solves that CUDA graphs
capture are each held to it, per sequence of a padded batch, in every reading, at fixed and adaptive budgets.
"""

import ast
from pathlib import Path

import pytest
import torch

from implicit_ssm_eval.model_adapters import implicit_lm
from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.runtime import Runtime
from implicit_ssm_eval.model_adapters.testing import assert_close, tiny_model

VARIANTS = {
    "base": {},
    "D per channel, plain gate, biases": {"D_has_hdim": True, "rmsnorm": False, "bias": True},
    "one group, three layers": {"ngroups": 1, "n_layer": 3},
}
READINGS = [  # (mode, block size)
    ("simultaneous", None), ("sequential", None), ("blockwise", 3), ("blockwise", 4),
]


def oracle_of(model) -> implicit_lm.ImplicitLM:
    oracle = implicit_lm.ImplicitLM(implicit_lm.Config.from_dict(model.cfg.to_dict())).double()
    oracle.load_state_dict(model.state_dict())
    return oracle.eval()


def budget_for(mode, block, max_iter, tol):
    return Budget(max_iter=max_iter, tol=tol, tau=0.7, mode=mode, block_size=block)


def piece_size(mode, block, length):
    return {"simultaneous": length, "sequential": 1}.get(mode, block)


def compare(out, oracle, ids, lengths, budget, mode, block, what):
    """Each row of a padded batch's reading against the oracle's reading of that row alone."""
    for i, n in enumerate(lengths.tolist()):
        ref = oracle.read(ids[i, :n], piece_size(mode, block, n), budget.max_iter, budget.tol, budget.tau)
        assert_close(out.hidden[i, :n], ref.hidden, 1e-9, f"{what}: hidden of row {i}")
        assert_close(oracle.logits(out.hidden[i, :n]), oracle.logits(ref.hidden), 1e-9, f"{what}: logits {i}")
        present = out.stats.tokens[i] > 0
        assert out.stats.tokens[i][present].tolist() == [p.tokens for p in ref.pieces], what
        assert out.stats.iterations[i][present].tolist() == [p.iterations for p in ref.pieces], f"{what}: iters"
        assert out.stats.converged[i][present].tolist() == [p.converged for p in ref.pieces], f"{what}: converged"
        if out.state is not None:
            for layer, (mine, theirs) in enumerate(zip(out.state, ref.state)):
                assert_close(mine.ssm[i], theirs.ssm, 1e-9, f"{what}: ssm state of layer {layer}, row {i}")
                assert_close(mine.conv[i].T, theirs.conv, 1e-9, f"{what}: conv state of layer {layer}, row {i}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode,block", READINGS)
@pytest.mark.parametrize("max_iter,tol", [(5, 0.0), (60, 1e-4)])
def test_the_eager_reading_is_the_one_file_model(variant, mode, block, max_iter, tol):
    model = tiny_model("implicit", contractive=True, dtype=torch.float64, **VARIANTS[variant])
    ids, lengths = torch.randint(0, 37, (3, 9)), torch.tensor([9, 4, 7])
    budget = budget_for(mode, block, max_iter, tol)
    with torch.no_grad():
        out = model(ids, budget, lengths=lengths)
        compare(out, oracle_of(model), ids, lengths, budget, mode, block, f"eager {mode} {block}")
    if tol:  # the adaptive budget stopped pieces before the cap (early exit is what it tests)
        assert (out.stats.iterations[out.stats.tokens > 0] < max_iter).all()


@pytest.mark.parametrize("mode,block", READINGS[1:])
@pytest.mark.parametrize("max_iter,tol", [(5, 0.0), (60, 1e-4), (9, 1e-12)])
def test_the_masked_piece_solves_are_the_one_file_model(mode, block, max_iter, tol):
    """The solver that CUDA graphs capture (every row masked, runtime/graphs.PieceSolve), uncaptured: held to the
    oracle directly, not only to the eager solver (a change to both solve loops alike would pass that test)."""
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids, lengths = torch.randint(0, 37, (3, 9)), torch.tensor([9, 4, 7])
    budget = budget_for(mode, block, max_iter, tol)
    with torch.no_grad():
        out = Runtime(model, graphs="masked")(ids, budget, lengths=lengths)
        compare(out, oracle_of(model), ids, lengths, budget, mode, block, f"masked {mode} {block}")


def test_an_explicit_model_is_the_one_file_model_run_once():
    model = tiny_model("explicit", dtype=torch.float64, n_layer=3, D_has_hdim=True)
    oracle = oracle_of(model)
    ids, lengths = torch.randint(0, 37, (2, 9)), torch.tensor([9, 4])
    with torch.no_grad():
        out = model(ids, lengths=lengths)
        for i, n in enumerate(lengths.tolist()):
            ref = oracle.read(ids[i, :n], piece=n, max_iter=1)
            assert_close(out.hidden[i, :n], ref.hidden, 1e-10, f"hidden of row {i}")
            for mine, theirs in zip(out.state, ref.state):
                assert_close(mine.ssm[i], theirs.ssm, 1e-10, "ssm state")


def test_a_reading_continues_from_a_state_as_the_one_file_model_does():
    """Two calls, the second from the first's state, equal one reading of the whole (the committed state is exact)."""
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    oracle, ids = oracle_of(model), torch.randint(0, 37, (1, 10))
    budget = Budget(max_iter=30, tol=1e-6, tau=0.8, mode="blockwise", block_size=4)
    with torch.no_grad():
        first = model(ids[:, :4], budget)
        second = model(ids[:, 4:], budget, state=first.state)
        ref = oracle.read(ids[0], 4, 30, 1e-6, 0.8)
    assert_close(torch.cat([first.hidden, second.hidden], 1)[0], ref.hidden, 1e-9, "continued reading")


def test_the_one_file_model_shares_no_code_with_the_production_path():
    tree = ast.parse(Path(implicit_lm.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"torch", "math", "dataclasses", "__future__"}, imported
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree)), "a relative import"
