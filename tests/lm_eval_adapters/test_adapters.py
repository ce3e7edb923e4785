"""The lm-eval adapters through lm-eval's Python API: every request type for both models, batching,
results metadata, generation, errors."""

import math

import pytest
import torch

from implicit_ssm_eval.model_adapters.config import Budget, ConfigError
from implicit_ssm_eval.model_adapters.formats import load_checkpoint
from implicit_ssm_eval.model_adapters.lm_eval_models import ExplicitSSMLM, ImplicitSSMLM, NonFiniteError

ALL_TASKS = ["tiny_ll", "tiny_mc", "tiny_gen", "tiny_roll"]


def metric(results, task, name):
    return results["results"][task][f"{name},none"]


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_all_request_types_run_and_are_sane(checkpoints, evaluate, kind):
    args = {"pretrained": str(checkpoints[kind])}
    if kind == "implicit":
        args.update(max_iter=6, tol=0.0)
    res = evaluate(f"{kind}_ssm", args, ALL_TASKS)
    for task, name in [("tiny_ll", "acc"), ("tiny_mc", "acc"), ("tiny_gen", "exact_match")]:
        assert 0.0 <= metric(res, task, name) <= 1.0
    bpb = metric(res, "tiny_roll", "bits_per_byte")
    assert math.isfinite(bpb) and bpb > 0
    info = res["config"]["ssm_model"]
    assert info["kind"] == kind and info["format"] == "native" and len(info["content_hash"]) == 64
    assert info["backend"] == "torch" and info["dtype"] == "float32" and info["device"] == "cpu"
    if kind == "implicit":
        assert info["budget"] == Budget(max_iter=6, tol=0.0, tau=0.8).to_dict()
        scoring = info["convergence"]["scoring"]
        assert scoring["count"] > 0 and scoring["iterations_max"] == 6 and scoring["iterations_mean"] == 6.0
        assert scoring["fraction_hit_max_iter_unconverged"] == 1.0
        assert info["convergence"]["generation"]["count"] > 0
    else:
        assert "budget" not in info


def test_scores_match_a_direct_forward(checkpoints):
    """loglikelihood = sum of log-softmax (over the padded vocabulary, like lm-eval's models) at the
    continuation positions."""
    lm = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), max_iter=5, tol=0.0)
    ctx, cont = "a b c a", " b c"
    (logprob, greedy), = lm._loglikelihood_tokens([((ctx, cont), lm.tok_encode(ctx), lm.tok_encode("b c"))])
    ids = torch.tensor([lm.tok_encode("a b c a b")])
    with torch.no_grad():
        logits = lm.model.logits(lm.model(ids, Budget(max_iter=5, tol=0.0)).hidden)[0]
    assert logits.shape[-1] == 8
    lp = torch.log_softmax(logits, -1)
    expected = float(lp[3, 4] + lp[4, 5])  # "b" after "a b c a", then "c" after "... b"
    assert logprob == pytest.approx(expected, abs=1e-5)
    assert greedy == bool(lp[3].argmax() == 4 and lp[4].argmax() == 5)


@pytest.mark.parametrize("kind,extra", [("implicit", {"max_iter": 30, "tol": 1e-3}),
                                        ("implicit", {"max_iter": 4, "mode": "sequential"}),
                                        ("explicit", {})])
def test_batch_size_1_and_16_give_identical_scores(checkpoints, evaluate, kind, extra):
    args = {"pretrained": str(checkpoints[kind]), **extra}
    runs = [evaluate(f"{kind}_ssm", args, ["tiny_ll", "tiny_mc", "tiny_roll"], batch_size=b, log_samples=True)
            for b in (1, 16)]
    for task in ("tiny_ll", "tiny_mc"):
        assert metric(runs[0], task, "acc") == metric(runs[1], task, "acc")
        one, sixteen = ([s["resps"] for s in r["samples"][task]] for r in runs)
        for a, b in zip(one, sixteen):
            for (la, ga), (lb, gb) in zip([x[0] for x in a], [x[0] for x in b]):
                assert la == pytest.approx(lb, abs=1e-5) and ga == gb
    assert metric(runs[0], "tiny_roll", "bits_per_byte") == pytest.approx(
        metric(runs[1], "tiny_roll", "bits_per_byte"), rel=1e-6)


def test_multiple_choice_shares_one_forward_per_context(checkpoints, monkeypatch):
    lm = ExplicitSSMLM(pretrained=str(checkpoints["explicit"]), batch_size=64)
    rows = []
    original = lm.model.forward

    def counting(ids, *args, **kwargs):
        rows.append(ids.shape[0])
        return original(ids, *args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", counting)
    contexts = ["a b", "c a b c", "b"]
    requests = [((c, f" {w}"), lm.tok_encode(c), lm.tok_encode(w)) for c in contexts for w in "abc"]
    results = lm._loglikelihood_tokens(requests)
    assert len(results) == 9 and sum(rows) == 3  # one sequence per context, not per label


def test_generation_equals_recomputing_the_full_forward(checkpoints):
    """Greedy decoding through the recurrent state = argmax of a fresh full forward at every step."""
    for kind, extra in (("explicit", {}), ("implicit", {"max_iter": 5, "tol": 0.0, "mode": "sequential"})):
        lm = (ImplicitSSMLM if kind == "implicit" else ExplicitSSMLM)(pretrained=str(checkpoints[kind]), **extra)
        prompts = ["a b c", "c", "b b a c a"]
        texts = lm._generate(prompts, {"until": ["never"], "max_gen_toks": 6})
        for prompt, text in zip(prompts, texts):
            ids = lm.tok_encode(prompt)
            for _ in range(6):
                with torch.no_grad():
                    out = lm.model(torch.tensor([ids]), lm.budget)
                nxt = int(lm.model.logits(out.hidden[0, -1])[:6].argmax())
                if nxt == lm.eot_token_id:
                    break
                ids.append(nxt)
            assert text == lm.tok_decode(ids[len(lm.tok_encode(prompt)):]), (kind, prompt)


def test_generation_honours_stop_sequences_and_max_tokens(checkpoints):
    lm = ExplicitSSMLM(pretrained=str(checkpoints["explicit"]))
    free = lm._generate(["a b c a"], {"until": ["zzz"], "max_gen_toks": 7})[0]
    assert len(free.split()) <= 7
    if free.split():
        stop = free.split()[0]
        cut = lm._generate(["a b c a"], {"until": [stop], "max_gen_toks": 7})[0]
        assert stop not in cut and free.startswith(cut)
    with pytest.raises(ConfigError, match="only greedy decoding"):
        lm._generate(["a"], {"do_sample": True})
    with pytest.raises(ConfigError, match=r"generation_kwargs \['beams'\] are not supported"):
        lm._generate(["a"], {"beams": 2})


def test_truncation_is_counted_and_reported(checkpoints, evaluate):
    res = evaluate("explicit_ssm", {"pretrained": str(checkpoints["explicit"]), "max_length": 8}, ["tiny_ll"])
    info = res["config"]["ssm_model"]
    assert info["max_length"] == 8 and info["truncated_requests"] > 0


def test_non_finite_outputs_fail_naming_the_request(checkpoints):
    lm = ExplicitSSMLM(pretrained=str(checkpoints["explicit"]))
    with torch.no_grad():
        lm.model.layers[0].mixer.out_proj.weight.fill_(float("nan"))
    requests = [(("a b", " c"), lm.tok_encode("a b"), lm.tok_encode("c"))]
    with pytest.raises(NonFiniteError, match=r"non-finite values \(NaN/inf\) for request"):
        lm._loglikelihood_tokens(requests, names=None)


def test_device_cuda_falls_back_to_cpu_with_a_notice(checkpoints, caplog):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    lm = ExplicitSSMLM(pretrained=str(checkpoints["explicit"]), device="cuda:0")
    assert lm.device.type == "cpu"
    assert "CUDA is not available" in caplog.text


def test_defaults_come_from_the_checkpoint(checkpoints):
    lm = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), tau=0.5)
    assert lm.budget == load_checkpoint(checkpoints["implicit"]).default_budget.replace(tau=0.5)


@pytest.mark.parametrize("cls,args,match", [
    (ImplicitSSMLM, {"max_itr": 3}, r"unknown model_args \['max_itr'\]; valid ones are .*'max_iter'"),
    (ExplicitSSMLM, {"max_iter": 3}, r"\['max_iter'\] are fixed-point budget arguments"),
    (ImplicitSSMLM, {"max_iter": 0}, "max_iter must be an integer >= 1"),
    (ImplicitSSMLM, {"tol": -1}, "tol must be"),
    (ImplicitSSMLM, {"solver": "newton"}, "solver must be one of"),
    (ImplicitSSMLM, {"mode": "both"}, "mode must be one of"),
    (ImplicitSSMLM, {"dtype": "float64"}, "dtype must be one of"),
    (ImplicitSSMLM, {"batch_size": "big"}, "batch_size must be a positive integer or 'auto'"),
    (ImplicitSSMLM, {"max_length": -4}, "max_length must be a positive integer"),
    (ImplicitSSMLM, {"backend": "cuda"}, "backend must be one of"),
    (ImplicitSSMLM, {"backend": "triton"}, "backend=triton needs a CUDA device"),
    (ImplicitSSMLM, {"device": "gpu7"}, "device must be a torch device"),
])
def test_bad_model_args(checkpoints, cls, args, match):
    if args.get("backend") == "triton" and torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match=match):
        cls(pretrained=str(checkpoints["implicit"]), **args)


def test_missing_pretrained_and_wrong_kind(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="needs pretrained="):
        ImplicitSSMLM()
    with pytest.raises(ConfigError, match="holds an explicit model; use --model explicit_ssm"):
        ImplicitSSMLM(pretrained=str(checkpoints["explicit"]))


def test_checkpoint_without_tokenizer(checkpoints, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(checkpoints["explicit"], bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="has no tokenizer.json; pass tokenizer="):
        ExplicitSSMLM(pretrained=str(bare))
    lm = ExplicitSSMLM(pretrained=str(bare), tokenizer=str(checkpoints["explicit"] / "tokenizer.json"))
    assert lm.eot_token_id == 2


def test_auto_batch_size_on_cpu_uses_max_batch_size(checkpoints, evaluate):
    res = evaluate("explicit_ssm", {"pretrained": str(checkpoints["explicit"])}, ["tiny_ll"], batch_size="auto",
                   max_batch_size=5)
    assert 0 <= metric(res, "tiny_ll", "acc") <= 1
