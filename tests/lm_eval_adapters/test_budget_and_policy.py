"""Budget overrides against the checkpoint's own budget (one function for the adapter and `implicit-eval run`), the
unknown-token threshold, and model_args given twice."""

import pytest

from implicit_ssm_eval.harness.run import cache_fingerprint
from implicit_ssm_eval.model_adapters.adapter.args import split_model_args
from implicit_ssm_eval.model_adapters.adapter.lm import ExplicitSSMLM, ImplicitSSMLM
from implicit_ssm_eval.model_adapters.adapter.records import TaskRecord
from implicit_ssm_eval.model_adapters.adapter.task_records import UNREADABLE_FRACTION, check_readable
from implicit_ssm_eval.model_adapters.config import Budget, resolve_budget
from implicit_ssm_eval.model_adapters.errors import ConfigError
from implicit_ssm_eval.model_adapters.formats import load_checkpoint, save

BLOCKWISE = Budget(max_iter=12, tol=0.01, tau=0.75, mode="blockwise", block_size=8)


@pytest.fixture(scope="module")
def blockwise_checkpoint(checkpoints, tmp_path_factory):
    """The tiny implicit checkpoint, saved again with a default budget that reads blockwise."""
    ckpt = load_checkpoint(checkpoints["implicit"])
    root = tmp_path_factory.mktemp("blockwise")
    model = ckpt.model
    object.__setattr__(model.cfg, "budget", BLOCKWISE)
    return save(model, root / "ckpt", tokenizer_path=checkpoints["implicit"] / "tokenizer.json")


def test_a_block_size_alone_overrides_a_blockwise_checkpoint(blockwise_checkpoint):
    """The bug this fixes: block_size=16 was validated against a blank (simultaneous) budget and refused."""
    lm = ImplicitSSMLM(pretrained=str(blockwise_checkpoint), block_size=16)
    assert lm.budget == BLOCKWISE.replace(block_size=16)
    assert ImplicitSSMLM(pretrained=str(blockwise_checkpoint), mode="sequential").budget == \
        BLOCKWISE.replace(mode="sequential")  # leaving blockwise drops the block size
    with pytest.raises(ConfigError, match="mode=sequential needs|block_size applies to mode=blockwise only"):
        ImplicitSSMLM(pretrained=str(blockwise_checkpoint), mode="sequential", block_size=16)


def test_implicit_eval_run_resolves_the_same_budget_as_the_adapter(blockwise_checkpoint):
    """The fingerprint implicit-eval run puts in a cache path is the adapter's own (one resolution function)."""
    args = f"pretrained={blockwise_checkpoint},block_size=16,tol=0.05"
    lm = ImplicitSSMLM(**split_model_args(args))
    assert cache_fingerprint("implicit_ssm", args) == lm.fingerprint()
    assert cache_fingerprint("implicit_ssm", f"pretrained={blockwise_checkpoint}") != lm.fingerprint()


def test_resolve_budget_checks_the_whole_budget_and_each_value_early(checkpoints):
    assert resolve_budget(BLOCKWISE, {"max_iter": 3}) == BLOCKWISE.replace(max_iter=3)
    with pytest.raises(ConfigError, match="mode=blockwise needs block_size"):
        resolve_budget(Budget(), {"mode": "blockwise"})
    with pytest.raises(ConfigError, match="tau must be a number in"):  # before any checkpoint is read
        ImplicitSSMLM(pretrained="/no/such/checkpoint", tau=3)
    with pytest.raises(ConfigError, match="block_size must|needs block_size, an integer >= 1"):
        ImplicitSSMLM(pretrained="/no/such/checkpoint", block_size=0)


def task(unknown: int, tokens: int = 1000) -> dict:
    record = TaskRecord()
    record.observe(0, {}, tokens, ["zz"] * unknown)
    return {"t": record}


def test_the_unknown_token_threshold_is_one_percent():
    check_readable(task(5), "refuse", "ckpt")  # 0.5%: read
    check_readable(task(10), "refuse", "ckpt")  # 1.0%: at the threshold, read
    with pytest.raises(ConfigError, match=r"t: 2.0% of 1000 tokens unknown"):
        check_readable(task(20), "refuse", "ckpt")  # 2%: refused
    check_readable(task(20), "flag", "ckpt")  # flagged instead
    assert UNREADABLE_FRACTION == 0.01


def test_a_task_at_two_percent_unknown_is_refused_through_the_adapter(checkpoints):
    """The same threshold seen from lm-eval's side: 1 unknown word in 50 is refused, 1 in 200 is scored."""
    from lm_eval.api.instance import Instance

    def lm_request(lm, context, target):
        return Instance(request_type="loglikelihood", doc={}, arguments=(context + " ", target), idx=0,
                        metadata=("tiny_ll", 0, 1))

    lm = ExplicitSSMLM(pretrained=str(checkpoints["explicit"]))
    two_percent = [lm_request(lm, " ".join(["a"] * 48 + ["zz"]), "b")]  # 49 + 1 tokens, one unknown
    with pytest.raises(ConfigError, match="cannot read 1 task"):
        lm.loglikelihood(two_percent)
    lm = ExplicitSSMLM(pretrained=str(checkpoints["explicit"]))
    half_percent = [lm_request(lm, " ".join(["a"] * 198 + ["zz"]), "b")]  # 199 + 1 tokens, one unknown
    assert len(lm.loglikelihood(half_percent)) == 1


def test_a_model_arg_given_twice_is_refused():
    assert split_model_args("pretrained=x,max_iter=4,tol=0.05") == {"pretrained": "x", "max_iter": 4, "tol": 0.05}
    with pytest.raises(ConfigError, match=r"model_args gives max_iter twice \(4 and 8\)"):
        split_model_args("pretrained=x,max_iter=4,max_iter=8")
