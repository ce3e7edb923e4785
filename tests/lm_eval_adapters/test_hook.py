"""The few places where this project leans on lm-eval's internals (model_adapters/adapter/hook.py, and the adapter's
use of TemplateLM.loglikelihood), each held to the pinned lm-eval: a new lm-eval that changes one of them fails here,
by name, instead of somewhere downstream."""

import inspect
from importlib.metadata import version

import lm_eval.api.registry  # noqa: F401 - loads the registry, so the hook has registered our models
from lm_eval import evaluator, utils
from lm_eval.api.model import TemplateLM

from implicit_ssm_eval.model_adapters.adapter import hook

PINNED = "0.4.13"


def test_lm_eval_is_the_pinned_version():
    assert version("lm_eval") == PINNED, "re-check every test in this file against the new lm-eval, then re-pin"


def test_our_models_are_registered_lazily_under_their_names():
    from lm_eval.api.registry import get_model

    from implicit_ssm_eval.model_adapters.adapter.lm import ExplicitSSMLM, ImplicitSSMLM

    assert hook.MODELS == {"implicit_ssm": "implicit_ssm_eval.model_adapters.adapter.lm:ImplicitSSMLM",
                           "explicit_ssm": "implicit_ssm_eval.model_adapters.adapter.lm:ExplicitSSMLM"}
    assert get_model("implicit_ssm") is ImplicitSSMLM and get_model("explicit_ssm") is ExplicitSSMLM


def test_the_wrapped_functions_have_the_signatures_the_wrappers_assume():
    evaluate = evaluator.evaluate
    assert getattr(evaluate, "_implicit_ssm_anytime", False), "evaluate is not wrapped"
    params = list(inspect.signature(evaluate.__wrapped__).parameters)
    assert params[:2] == ["lm", "task_dict"]  # the wrapper passes these two positionally
    assert getattr(utils.make_table, "_implicit_ssm_block", False), "make_table is not wrapped"
    assert list(inspect.signature(utils.make_table.__wrapped__).parameters)[:2] == ["result_dict", "column"]


def test_template_lm_tokenises_loglikelihood_requests_in_order_through_encode_pair():
    """The adapter keeps the requests while TemplateLM.loglikelihood tokenises them, and pairs them with the triples
    that reach _loglikelihood_tokens by position: that order, and _encode_pair's split, are lm-eval's."""
    seen = []

    class Probe(TemplateLM):
        eot_token_id = prefix_token_id = 0

        def tok_encode(self, string, **kwargs):
            return [len(w) for w in string.split(" ")]

        def _loglikelihood_tokens(self, requests, disable_tqdm=False):
            seen.extend(requests)
            return [(0.0, True)] * len(requests)

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            return []

        def generate_until(self, requests, disable_tqdm=False):
            return []

    class Request:
        def __init__(self, args):
            self.args = args

    pairs = [("aa b ", "ccc"), ("d", " ee"), ("", "ff g")]
    Probe().loglikelihood([Request(p) for p in pairs], disable_tqdm=True)
    assert [args for args, _, _ in seen] == pairs
    assert [(ctx, cont) for _, ctx, cont in seen] == [([2, 1], [3]), ([1], [2]), ([0], [2, 1])]
