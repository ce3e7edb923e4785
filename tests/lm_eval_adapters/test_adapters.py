"""The lm-eval adapters through lm-eval's Python API: every request type for both models, batching,
results metadata, generation, errors."""

import math
from pathlib import Path

import pytest
import torch
from lm_eval_adapters.by_hand import direct_logprobs, expected_ll_acc, expected_mc_acc, tiny_docs  # tests/ on sys.path

from implicit_ssm_eval.model_adapters.adapter.lm import ExplicitSSMLM, ImplicitSSMLM
from implicit_ssm_eval.model_adapters.adapter.records import Answer
from implicit_ssm_eval.model_adapters.config import Budget, ConfigError
from implicit_ssm_eval.model_adapters.errors import NonFiniteError
from implicit_ssm_eval.model_adapters.formats import load_checkpoint

ALL_TASKS = ["tiny_ll", "tiny_mc", "tiny_gen", "tiny_roll"]


def metric(results, task, name):
    return results["results"][task][f"{name},none"]


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_all_request_types_give_the_scores_of_direct_forwards(checkpoints, evaluate, kind):
    args = {"pretrained": str(checkpoints[kind])}
    if kind == "implicit":
        args.update(max_iter=6, tol=0.0)
    res = evaluate(f"{kind}_ssm", args, ALL_TASKS)
    lm = (ImplicitSSMLM if kind == "implicit" else ExplicitSSMLM)(**args)
    docs = tiny_docs()
    assert metric(res, "tiny_ll", "acc") == pytest.approx(expected_ll_acc(lm, docs))
    assert metric(res, "tiny_mc", "acc") == pytest.approx(expected_mc_acc(lm, docs))
    assert 0 < expected_ll_acc(lm, docs) < 1 or 0 < expected_mc_acc(lm, docs) < 1  # the checks can tell apart
    nats = sum(float(direct_logprobs(lm, "<eos> " + d["text"])[:-1].gather(
        1, torch.tensor(lm.tok_encode(d["text"]))[:, None]).sum()) for d in docs)
    chars = sum(len(d["text"].encode()) for d in docs)
    assert metric(res, "tiny_roll", "bits_per_byte") == pytest.approx(-nats / chars / math.log(2), rel=1e-5)
    info = res["config"]["ssm_model"]
    assert info["kind"] == kind and info["format"] == "native" and len(info["content_hash"]) == 64
    assert info["backend"] == "torch" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["tasks"]["tiny_ll"]["documents"] == 20 and info["tasks"]["tiny_ll"]["unknown_tokens"] == 0
    if kind == "implicit":
        assert info["budget"] == Budget(max_iter=6, tol=0.0, tau=0.8).to_dict() and info["unit"] == "sequence"
        scoring = info["convergence"]["scoring"]
        assert scoring["count"] > 0 and scoring["iterations_max"] == 6 and scoring["iterations_mean"] == 6.0
        assert scoring["fraction_hit_max_iter_unconverged"] == 1.0
        assert info["convergence"]["generation"]["count"] > 0
        assert info["tasks"]["tiny_ll"]["convergence"]["count"] == 20  # one sequence per document
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


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_scoring_computes_no_recurrent_state(checkpoints, monkeypatch, kind):
    """Scores need the hidden states only: no layer computes the conv window and SSM state it would end in."""
    from implicit_ssm_eval.model_adapters import mamba2

    lm = (ImplicitSSMLM if kind == "implicit" else ExplicitSSMLM)(pretrained=str(checkpoints[kind]))
    requests = [((c, " b"), lm.tok_encode(c), lm.tok_encode("b")) for c in ("a b c a", "c a")]
    expected = lm._loglikelihood_tokens(requests)

    def refuse(*args):
        raise AssertionError("a final state was computed for scoring")

    monkeypatch.setattr(mamba2, "_last_inputs", refuse)
    assert lm._loglikelihood_tokens(requests) == expected


@pytest.mark.gpu
@pytest.mark.parametrize("kind,extra", [("explicit", {}), ("implicit", {"max_iter": 6, "tol": 0.0, "anytime": "1;3"}),
                                        ("implicit", {"max_iter": 30, "tol": 1e-3})])
def test_graphed_scoring_through_lm_eval_scores_as_eager_scoring(checkpoints, evaluate, kind, extra, monkeypatch):
    """On a GPU, cuda_graphs=auto captures the scoring forwards of (padded) shapes that come twice in a row (at batch
    size 1 these tasks have a few) and replays them when the same model evaluates again: every request's answer is
    the eager one, at every budget, to 1e-5 (at tol > 0 the graphs are runtime.readings.MaskedReadingGraph's)."""
    from implicit_ssm_eval.model_adapters.runtime import graphs as graph_module
    from implicit_ssm_eval.model_adapters.runtime import readings

    replays = []
    for cls in (graph_module.ForwardGraph, readings.MaskedReadingGraph):
        monkeypatch.setattr(cls, "__call__", lambda *a, replay=cls.__call__: replays.append(1) or replay(*a))
    runs, used = {}, {}
    for graphs in ("auto", "false"):
        lm = (ImplicitSSMLM if kind == "implicit" else ExplicitSSMLM)(
            pretrained=str(checkpoints[kind]), device="cuda", cuda_graphs=graphs, batch_size=1, **extra)
        evaluate(lm, None, ["tiny_ll", "tiny_mc"])  # the captures
        replays[:] = []
        res = evaluate(lm, None, ["tiny_ll", "tiny_mc"], log_samples=True)  # the replays
        runs[graphs] = {task: [s["resps"] for s in res["samples"][task]] for task in ("tiny_ll", "tiny_mc")}
        runs[graphs]["results"] = res["results"]  # anytime budgets included
        used[graphs] = len(replays)
    assert used["auto"] > 0 and used["false"] == 0
    for task, metrics in runs["false"]["results"].items():  # anytime budgets included
        for name, value in metrics.items():
            expected = pytest.approx(value, abs=1e-5) if isinstance(value, float) else value
            assert runs["auto"]["results"][task][name] == expected, (task, name)
    for task in ("tiny_ll", "tiny_mc"):
        graphed, eager = ([x[0] for doc in runs[g][task] for x in doc] for g in ("auto", "false"))
        assert len(graphed) == len(eager) > 0
        for (lg, gg), (le, ge) in zip(graphed, eager):
            assert lg == pytest.approx(le, abs=1e-5) and gg == ge


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
    (ImplicitSSMLM, {"max_iter": 0}, r"max_iter must be an integer in \[1, 4096\], got 0"),
    (ImplicitSSMLM, {"max_iter": 5000}, r"max_iter must be an integer in \[1, 4096\], got 5000"),
    (ImplicitSSMLM, {"tol": -1}, "tol must be"),
    (ImplicitSSMLM, {"solver": "newton"}, "solver must be one of"),
    (ImplicitSSMLM, {"mode": "both"}, "mode must be one of"),
    (ImplicitSSMLM, {"dtype": "float64"}, "dtype must be one of"),
    (ImplicitSSMLM, {"batch_size": "big"}, "batch_size must be a positive integer or 'auto'"),
    (ImplicitSSMLM, {"max_length": -4}, "max_length must be a positive integer"),
    (ImplicitSSMLM, {"backend": "cuda"}, "backend must be one of"),
    (ImplicitSSMLM, {"backend": "triton"}, "backend=triton needs a CUDA device"),
    (ImplicitSSMLM, {"device": "gpu7"}, "device must be a torch device"),
    (ImplicitSSMLM, {"mode": "blockwise"}, "mode=blockwise needs block_size"),
    (ImplicitSSMLM, {"anytime": "1;x"}, "anytime must be integers"),
    (ImplicitSSMLM, {"anytime": "9", "max_iter": 4, "tol": 0}, r"anytime budgets must be integers in \[1, max_iter="),
    (ImplicitSSMLM, {"anytime": "2", "mode": "sequential"}, "anytime budgets need mode=simultaneous.*got "
                                                            "mode=sequential.*implicit-eval sweep CKPT --modes MODE"),
    (ImplicitSSMLM, {"unknown_tokens": "ignore"}, r"unknown_tokens must be one of \['refuse', 'flag'\]"),
    (ImplicitSSMLM, {"cuda_graphs": "yes"}, "cuda_graphs must be true, false or auto, got 'yes'"),
    (ImplicitSSMLM, {"cuda_graphs": "TRUE"}, "cuda_graphs=true needs a CUDA device"),
    (ImplicitSSMLM, {"state_dtype": "float16"}, r"state_dtype must be one of \['float32', 'bfloat16'\], got 'float16'"),
    (ImplicitSSMLM, {"lanes": 0}, "lanes must be a positive integer, got 0"),
    (ImplicitSSMLM, {"lanes": "two"}, "lanes must be a positive integer, got 'two'"),
    (ExplicitSSMLM, {"lanes": 2}, r"unknown model_args \['lanes'\]"),
])
def test_bad_model_args(checkpoints, cls, args, match):
    if (args.get("backend") == "triton" or args.get("cuda_graphs") == "TRUE") and torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match=match):
        cls(pretrained=str(checkpoints["implicit"]), **args)


def test_a_max_iter_above_256_warns_with_its_cost(checkpoints, caplog):
    ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), max_iter=1000, tol=0)
    assert ("max_iter=1000 at tol=0: up to 1000 forward passes per sequence (tol=0 never stops early); the "
            "checkpoint's default is max_iter=8; valid up to 4096") in caplog.text
    caplog.clear()
    ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), max_iter=256, tol=0)
    assert "forward passes" not in caplog.text


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


def test_auto_batch_probe_runs_the_forward_scoring_runs(checkpoints):
    """batch_size=auto's memory probe must cost what a scoring batch costs: the anytime budgets' hidden states kept
    and log-probabilities over a whole row, not one position at one budget (else the size it picks runs out)."""
    lm = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), max_iter=4, tol=0.0, anytime="1;2")
    calls, logit_rows = [], []
    runtime = lm.runtime

    class Spy:
        def __call__(self, ids, budget, **kwargs):
            calls.append((tuple(ids.shape), kwargs.get("anytime")))
            return runtime(ids, budget, **kwargs)

        def logits(self, hidden):
            logit_rows.append(tuple(hidden.shape[:-1]))
            return runtime.logits(hidden)

    lm.runtime = Spy()
    lm._probe(3, 7)
    assert calls == [((3, 7), lm.anytime)] and len(lm.anytime) == 3
    assert logit_rows == [(7,)]


def test_auto_batch_never_probes_past_int32_indexing(checkpoints):
    """On an H200, probing 1024 x 2048 tokens of the 130M model crashed cuBLAS (an illegal memory access, not an
    out-of-memory): the first probe must already keep the widest activation under 2**31 elements."""
    from implicit_ssm_eval.model_adapters.adapter.batching import BatchSizer, indexed_rows, widest_activation

    lm = ExplicitSSMLM(pretrained=str(checkpoints["explicit"]))
    width = widest_activation(lm.model)
    assert width == max(layer.mixer.in_proj.out_features for layer in lm.model.layers)
    probed = []
    sizer = BatchSizer("auto", 1024, torch.device("cuda"), lambda size, length: probed.append(size), width=3352)
    assert sizer.size(2048) == 312 == indexed_rows(2048, 3352) and probed == [312]
    assert 312 * 2048 * 3352 < 2**31 <= 313 * 2048 * 3352
    small = BatchSizer("auto", 64, torch.device("cuda"), lambda size, length: probed.append(size), width=3352)
    assert small.size(128) == 64  # far from the bound: max_batch_size as before


def test_left_truncation_keeps_exactly_the_last_max_length_tokens(checkpoints, evaluate):
    """A request longer than max_length is cut from the left: the continuation is predicted from exactly the
    max_length tokens before it."""
    lm = ExplicitSSMLM(pretrained=str(checkpoints["explicit"]), max_length=5)
    context, target = "a b c a b c a", "b"
    ctx, cont = lm.tok_encode(context), lm.tok_encode(target)
    (logprob, greedy), = lm._loglikelihood_tokens([((context, " b"), ctx, cont)])
    window = (ctx + cont)[-6:-1]  # the 5 tokens before the target
    expected = direct_logprobs(lm, lm.tok_decode(window))[-1, cont[0]]
    assert logprob == pytest.approx(float(expected), abs=1e-6)
    assert logprob != pytest.approx(float(direct_logprobs(lm, lm.tok_decode(window[1:]))[-1, cont[0]]), abs=1e-6)
    assert lm.view.truncated == 0 and lm.scorer.truncated == 1  # merged at the end of a request type
    res = evaluate("explicit_ssm", {"pretrained": str(checkpoints["explicit"]), "max_length": 8}, ["tiny_ll"])
    long_docs = sum(len(lm.tok_encode(d["text"])) + 1 > 9 for d in tiny_docs())
    assert res["config"]["ssm_model"]["truncated_requests"] == long_docs > 0


def overflowing_checkpoint(tmp_path, checkpoints) -> Path:
    """An untied head scaled so that finite hidden states give infinite logits."""
    from implicit_ssm_eval.model_adapters.formats import save
    from implicit_ssm_eval.model_adapters.testing import tiny_model

    model = tiny_model("explicit", vocab_size=6, pad_vocab_size_multiple=8, tie_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.fill_(3e38)  # each weight finite, the products overflow
    return save(model, tmp_path / "overflow", tokenizer_path=checkpoints["explicit"] / "tokenizer.json")


def test_non_finite_logits_never_become_scores(checkpoints, tmp_path):
    lm = ExplicitSSMLM(pretrained=str(overflowing_checkpoint(tmp_path, checkpoints)))
    with torch.no_grad():
        assert torch.isfinite(lm.model(torch.tensor([[3, 4]])).hidden).all()  # the hidden states are finite
    requests = [(("a b", " c"), lm.tok_encode("a b"), lm.tok_encode("c"))]
    with pytest.raises(NonFiniteError, match=r"non-finite logits \(NaN/inf\)"):
        lm._loglikelihood_tokens(requests)
    with pytest.raises(NonFiniteError, match="while generating"):
        lm._generate(["a b"], {"until": ["never"], "max_gen_toks": 3})


def test_non_finite_anytime_budgets_are_refused_too(checkpoints):
    lm = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), max_iter=4, tol=0, anytime="1;2")
    original = lm.model.f

    def blows_up_early(z, u, state=None, valid=None, commit=True, ops=None):  # the first evaluation NaN, later not
        out, new_state = original(z, u, state, valid, commit, ops)
        return (out * float("nan") if not z.abs().sum() else out), new_state

    lm.model.f = blows_up_early
    with pytest.raises(NonFiniteError, match="at max_iter=1"):
        lm._loglikelihood_tokens([(("a b", " c"), lm.tok_encode("a b"), lm.tok_encode("c"))])


def successor_checkpoint(tmp_path, checkpoints) -> Path:
    """An explicit model that always predicts the successor of its input token: a -> b -> c -> a (blocks silenced,
    an untied head that maps each embedding to its successor's row)."""
    from implicit_ssm_eval.model_adapters.formats import save
    from implicit_ssm_eval.model_adapters.testing import tiny_model

    model = tiny_model("explicit", vocab_size=6, pad_vocab_size_multiple=8, tie_embeddings=False)
    with torch.no_grad():
        for layer in model.layers:
            layer.mixer.out_proj.weight.zero_()
        emb = model.embedding.weight
        model.lm_head.weight.zero_()
        for token, successor in ((3, 4), (4, 5), (5, 3)):
            model.lm_head.weight[successor] = 10 * emb[token] / emb[token].norm()
    return save(model, tmp_path / "successor", tokenizer_path=checkpoints["explicit"] / "tokenizer.json")


def test_generation_honours_stop_sequences_and_max_tokens(checkpoints, tmp_path):
    lm = ExplicitSSMLM(pretrained=str(successor_checkpoint(tmp_path, checkpoints)))
    assert lm._generate(["c a"], {"until": ["zzz"], "max_gen_toks": 7}) == ["b c a b c a b"]
    assert lm._generate(["c a"], {"until": ["a"], "max_gen_toks": 7}) == ["b c "]  # cut before the stop
    assert lm._generate(["b", "c a"], {"until": ["zzz"], "max_gen_toks": 2}) == ["c a", "b c"]
    with pytest.raises(ConfigError, match="only greedy decoding"):
        lm._generate(["a"], {"do_sample": True})
    with pytest.raises(ConfigError, match=r"generation_kwargs \['beams'\] are not supported"):
        lm._generate(["a"], {"beams": 2})


def test_anytime_answers_equal_separate_runs_request_by_request(checkpoints):
    """Every anytime budget's answers are the answers of a run at that budget, not the largest budget's."""
    docs = tiny_docs()
    run = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), max_iter=6, tol=0, anytime="1;2;4")
    requests = [lm_request(run, d["text"], d["target"]) for d in docs]
    run.loglikelihood(requests)
    by_budget = {}
    for k in (1, 2, 4, 6):
        alone = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), max_iter=k, tol=0)
        expected = alone.loglikelihood(requests)
        got = run.at_budget(k).loglikelihood(requests)
        for (a, ga), (b, gb) in zip(got, expected):
            assert a == pytest.approx(b, abs=1e-6) and ga == gb, k
        by_budget[k] = [a for a, _ in got]
        info = run.at_budget(k).get_model_info()["ssm_model"]
        assert info["budget"]["max_iter"] == k and info["convergence"]["scoring"]["iterations_mean"] == k
        assert info["fingerprint"] == alone.fingerprint()
    assert by_budget[1] != pytest.approx(by_budget[6], abs=1e-3)  # budgets do differ: the check has teeth


def lm_request(lm, context: str, target: str):
    from lm_eval.api.instance import Instance

    return Instance(request_type="loglikelihood", doc={}, arguments=(context + " ", target), idx=0,
                    metadata=("tiny_ll", 0, 1))


def test_pairs_are_split_by_lm_evals_own_tokenisation(checkpoints, monkeypatch):
    """Each pair is split exactly as lm-eval's TemplateLM splits it (its _encode_pair: trailing whitespace of the
    context moves to the continuation; an empty context becomes the prefix token), and the items keep their task."""
    from lm_eval.api.instance import Instance
    from tokenizers import Tokenizer, models, pre_tokenizers

    lm = ExplicitSSMLM(pretrained=str(checkpoints["explicit"]), unknown_tokens="flag")
    # Spaces are tokens here ("a b " is a, _b, _), so where a context's trailing space goes changes the split.
    words = ["<unk>", "a", "b", "c", "\u2581", "\u2581a", "\u2581b", "\u2581c", "\n", "\u2581\u2581"]
    spaced = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    spaced.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    lm.tokenizer._tk = spaced
    pairs = [("a b c", " a"), ("a b ", "c a"), ("a\n\n", "b"), ("a b", "c"), ("", "a b"), ("  ", "a"),
             ("c a b", " b c a b"), ("a zz", " q")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=0, metadata=("tiny_ll", i, 1))
                for i, p in enumerate(pairs)]
    seen = []
    monkeypatch.setattr(lm.scorer, "score", lambda items, bar, *share: seen.extend(items) or [
        {0: Answer(0.0, False)} for _ in items])
    lm.loglikelihood(requests)
    for (context, continuation), item in zip(pairs, seen):
        cont = lm.tok_encode(continuation)
        expected = (([lm.prefix_token_id], cont) if lm.prefix_token_id != cont[0] else (cont[:1], cont[1:])) \
            if context == "" else lm._encode_pair(context, continuation)
        assert (item.context, item.continuation) == expected, (context, continuation)
        assert item.task == "tiny_ll" and item.key == ("loglikelihood", (context, continuation))
    assert [len(i.context) for i in seen] == [3, 2, 1, 2, 1, 0, 3, 2]  # the cases differ


def test_a_task_the_tokenizer_cannot_read_is_refused_or_flagged(checkpoints):
    requests = [lm_request(None, "a b zz yy", "c"), lm_request(None, "a b", "q")]
    lm = ExplicitSSMLM(pretrained=str(checkpoints["explicit"]))
    with pytest.raises(ConfigError, match=r"cannot read 1 task\(s\): tiny_ll: 37.5% of 8 tokens unknown \(e.g. 'zz', "
                                          r"'yy', 'q'\).*unknown_tokens=flag"):
        lm.loglikelihood(requests)
    flagged = ExplicitSSMLM(pretrained=str(checkpoints["explicit"]), unknown_tokens="flag")
    assert len(flagged.loglikelihood(requests)) == 2
    task = flagged.get_model_info()["ssm_model"]["tasks"]["tiny_ll"]
    assert task["unknown_tokens"] == 3 and task["tokens"] == 8


def test_a_tokenizer_without_end_of_text_scores_and_fails_only_what_needs_it(checkpoints, tmp_path):
    import json
    import shutil

    bare = tmp_path / "no_eos"
    shutil.copytree(checkpoints["explicit"], bare)
    tok = json.loads((bare / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {("<end>" if w == "<eos>" else w): i for w, i in tok["model"]["vocab"].items()}
    (bare / "tokenizer.json").write_text(json.dumps(tok))
    config = json.loads((bare / "config.json").read_text())
    config.pop("eos_token", None)
    (bare / "config.json").write_text(json.dumps(config))
    lm = ExplicitSSMLM(pretrained=str(bare))
    assert lm.tokenizer.eos_token_id is None
    (score, _), = lm.loglikelihood([lm_request(lm, "a b", "c")])
    assert math.isfinite(score)
    with pytest.raises(ConfigError, match="has no end-of-text token.*pass eos_token=<token>"):
        lm._generate(["a"], {"max_gen_toks": 2})
    named = ExplicitSSMLM(pretrained=str(bare), eos_token="<end>", prefix_token="c")
    assert named.eot_token_id == 2 and named.prefix_token_id == 5
    with pytest.raises(Exception, match="eos token '<nope>' is not in the vocabulary"):
        ExplicitSSMLM(pretrained=str(bare), eos_token="<nope>")


def test_device_and_batch_size_in_model_args_win_over_the_cli_flags(checkpoints):
    lm = ExplicitSSMLM.create_from_arg_string(f"pretrained={checkpoints['explicit']},batch_size=3,device=cpu",
                                              {"batch_size": 1, "device": "cuda:0", "max_batch_size": None})
    assert lm.args.batch_size == 3 and lm.device.type == "cpu"


def test_record_greedy_into_a_missing_folder_fails_before_scoring(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match=r"record_greedy=.*folder .*missing does not exist"):
        ExplicitSSMLM(pretrained=str(checkpoints["explicit"]), record_greedy=str(tmp_path / "missing" / "g.jsonl"))


def test_an_oscillating_model_is_warned_about(checkpoints, caplog):
    """f(z) = -z + 1 has no fixed point damped iteration at tau = 1 reaches: every sequence hits max_iter."""
    import logging

    lm = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), max_iter=12, tol=1e-4, tau=1.0)
    lm.model.f = lambda z, u, state=None, valid=None, commit=True, ops=None: (-z + 1.0, state)
    with caplog.at_level(logging.WARNING):
        lm.loglikelihood([lm_request(lm, "a b", "c")])
    assert "tiny_ll: 100% of its sequences hit max_iter=12 unconverged" in caplog.text
    info = lm.get_model_info()["ssm_model"]
    assert info["convergence"]["scoring"]["fraction_hit_max_iter_unconverged"] == 1.0
