"""Readings live in one registry (model_adapters/readings.py): a reading added from outside the package, with one
registration, works in every place that names a reading (budget validation, the model and the runtime, the
adapter's results, the console summary, the sweep's folder names, the report and the leaderboard)."""

import pytest
import torch

from implicit_ssm_eval.model_adapters import implicit_lm
from implicit_ssm_eval.model_adapters.config import Budget, ConfigError
from implicit_ssm_eval.model_adapters.readings import READINGS, ReadingSpec, reading_label, register_reading
from implicit_ssm_eval.model_adapters.runtime import Runtime
from implicit_ssm_eval.model_adapters.summaries import convergence_block
from implicit_ssm_eval.model_adapters.testing import assert_close, tiny_model

HALVES = ReadingSpec("halves", unit="half", piece_size=lambda budget, n: max(1, -(-n // 2)),
                     description="two pieces: the first half of the sequence, then the second")


@pytest.fixture
def halves():
    register_reading(HALVES)  # the one registration
    yield HALVES
    READINGS.pop("halves")


def test_the_built_in_readings_are_registered_with_their_units_and_labels():
    assert {name: spec.unit for name, spec in READINGS.items()} == {
        "simultaneous": "sequence", "sequential": "token", "blockwise": "block"}
    assert reading_label({"mode": "blockwise", "block_size": 8}) == "blockwise 8"
    assert reading_label({"mode": "sequential", "block_size": None}) == "sequential"
    assert Budget(mode="blockwise", block_size=4).piece_size(10) == 4 and Budget().piece_size(10) == 10


def test_a_registered_reading_is_a_valid_mode_and_takes_only_its_parameters(halves):
    assert Budget(mode="halves").piece_size(9) == 5
    with pytest.raises(ConfigError, match="block_size applies to mode=blockwise only, got mode=halves"):
        Budget(mode="halves", block_size=4)
    assert Budget(mode="blockwise", block_size=4).replace(mode="halves").block_size is None
    with pytest.raises(ConfigError, match="mode must be one of .*'halves'"):
        Budget(mode="thirds")
    with pytest.raises(ValueError, match="registered already"):
        register_reading(ReadingSpec("halves", unit="other", piece_size=lambda budget, n: 1))


@pytest.mark.parametrize("graphs", ["off", "masked"])
def test_the_model_and_the_runtime_read_in_the_registered_pieces(halves, graphs):
    """Eagerly and in the runtime's masked piece solves, the reading is the one-file model's with pieces of half."""
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    oracle = implicit_lm.ImplicitLM(implicit_lm.Config.from_dict(model.cfg.to_dict())).double()
    oracle.load_state_dict(model.state_dict())
    ids, budget = torch.randint(0, 37, (2, 9)), Budget(max_iter=40, tol=1e-6, tau=0.8, mode="halves")
    with torch.no_grad():
        out = Runtime(model, graphs=graphs)(ids, budget)
        assert out.stats.tokens.tolist() == [[5, 4], [5, 4]]
        for i in range(2):
            ref = oracle.read(ids[i], 5, 40, 1e-6, 0.8)
            assert_close(out.hidden[i], ref.hidden, 1e-9, f"row {i}")
            assert out.stats.iterations[i].tolist() == [p.iterations for p in ref.pieces]


def test_results_summaries_and_reports_name_the_registered_reading(halves, checkpoints):
    from implicit_ssm_eval.harness.report import mode_agreement  # noqa: F401 - the report reads the registry
    from implicit_ssm_eval.harness.sweep import budget_key
    from implicit_ssm_eval.model_adapters.adapter.lm import ImplicitSSMLM

    lm = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), mode="halves", max_iter=5, tol=0.0)
    lm._loglikelihood_tokens([(("a b c", " a"), lm.tok_encode("a b c"), lm.tok_encode("a"))])
    info = lm.get_model_info()["ssm_model"]
    assert info["budget"]["mode"] == "halves" and info["unit"] == "half"
    assert "halves (iterations per half)" in convergence_block(info)
    assert budget_key(lm.budget) == "k5_tol0_tau0.8_halves_fixed_point"
    assert reading_label(info["budget"]) == "halves"
