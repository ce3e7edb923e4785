"""The transformer kind of the training command: it learns, resumes bit for bit, and its Hugging Face export reads
and scores a task through lm-eval's own `hf` model exactly as a direct computation on the token ids our adapter
feeds a Mamba2 model of the same family. Also: parameter counts, the recipes' matching and command lines, and a
packed-text family from outside the package (the text trio's data path)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from implicit_ssm_eval.harness import sizes
from implicit_ssm_eval.harness.train import ARCH_DEFAULTS, TrainConfig, Trainer, finish, run
from implicit_ssm_eval.model_adapters.config import ConfigError, ModelConfig
from implicit_ssm_eval.model_adapters.models import build_model

ROOT = Path(__file__).parents[2]
TINY = dict(task="parity", min_len=1, max_len=6, batch_size=32, lr=5e-3, warmup_steps=10, save_every=1000,
            log_every=5, arch=dict(d_model=32, n_layer=2, n_head=2, intermediate_size=64))


def log_rows(out):
    import csv

    with open(out / "train_log.csv") as fh:
        return list(csv.DictReader(fh))


def weights(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_transformer_learns_parity_of_short_strings_and_exports_an_hf_directory(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from implicit_ssm_eval.tasks.state_tracking import tokenizer_for

    model_dir = run(TrainConfig(kind="transformer", steps=150, **TINY), tmp_path, progress=False)
    rows = log_rows(tmp_path)
    first, last = float(rows[0]["loss"]), sum(float(r["loss"]) for r in rows[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    assert sum(float(r["token_acc"]) for r in rows[-3:]) / 3 > 0.75  # chance is 0.5
    assert all(float(r["tokens_per_s"]) > 0 for r in rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    assert model.config.vocab_size == 8 and model.config.max_position_embeddings == 2048  # padded 7; adapter's max
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<eos>", "<pad>", None)
    text = "0 1 1 0 odd"
    assert tok.encode(text) == tok(text)["input_ids"] == tokenizer_for("parity").encode(text).ids  # no specials added
    training = json.loads((model_dir / "training.json").read_text())
    assert training["config"]["kind"] == "transformer" and training["steps"] == 150


def test_transformer_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path):
    import dataclasses

    cfg = TrainConfig(kind="transformer", steps=12, **TINY)
    straight = run(cfg, tmp_path / "a", progress=False)
    # three calls: one stopped by its time limit (after its first step), one after 6 steps, the last to the end
    assert run(dataclasses.replace(cfg, time_limit=1e-6), tmp_path / "b", progress=False) is None
    assert torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)["step"] == 1
    assert run(cfg, tmp_path / "b", resume=True, progress=False, stop_after=6) is None
    resumed = run(cfg, tmp_path / "b", resume=True, progress=False)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["step"] for r in log_rows(tmp_path / "b")] == [r["step"] for r in log_rows(tmp_path / "a")]
    with pytest.raises(ConfigError, match=r"\['arch'\] differ from the saved run"):
        run(TrainConfig(kind="transformer", steps=12, **{**TINY, "arch": dict(TINY["arch"], n_layer=1)}),
            tmp_path / "b", resume=True, progress=False)


def test_transformer_fine_tuning_starts_from_the_exported_weights(tmp_path):
    first = run(TrainConfig(kind="transformer", steps=3, **TINY), tmp_path / "a", progress=False)
    tuned = Trainer(TrainConfig(kind="transformer", init_from=str(tmp_path / "a"), **TINY), tmp_path / "b")
    for name, value in weights(first).items():
        assert torch.equal(tuned.model.state_dict()[name], value), name
    with pytest.raises(ConfigError, match=r"architecture differs in \['hidden_size'"):
        Trainer(TrainConfig(kind="transformer", init_from=str(first), **{**TINY, "arch": dict(d_model=16)}),
                tmp_path / "c")


def test_transformer_arch_is_validated_and_recorded_in_full():
    cfg = TrainConfig(kind="transformer", arch=dict(d_model=48, n_head=3))
    assert cfg.arch == dict(d_model=48, n_layer=2, n_head=3, intermediate_size=176)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['d_state'\]"):
        TrainConfig(kind="transformer", arch=dict(d_state=16))
    with pytest.raises(ConfigError, match="even head size"):
        TrainConfig(kind="transformer", arch=dict(d_model=48, n_head=16))
    with pytest.raises(ConfigError, match="n_layer must be an integer >= 1"):
        TrainConfig(kind="transformer", arch=dict(n_layer=0))


def test_cli_arch_flags_belong_to_their_kind():
    from implicit_ssm_eval.harness.train_cli import build_parser, config_from

    def config(*flags):
        args = vars(build_parser().parse_args(["--out", "x", *flags]))
        for key in ("out", "resume", "no_progress", "export"):
            args.pop(key)
        return config_from(args)

    assert config("--kind", "transformer", "--n-head", "2").arch == dict(d_model=64, n_layer=2, n_head=2,
                                                                          intermediate_size=176)
    assert config("--kind", "explicit").arch == ARCH_DEFAULTS
    with pytest.raises(ConfigError, match=r"kind=transformer\): unknown key\(s\) \['d_state'\]"):
        config("--kind", "transformer", "--d-state", "8")
    with pytest.raises(ConfigError, match=r"arch: unknown key\(s\) \['n_head'\]"):
        config("--kind", "implicit", "--n-head", "2")


# -- lm-eval's hf model on the export ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parity_pair(tmp_path_factory):
    """A briefly trained transformer (HF directory) and explicit Mamba2 (native) on parity: the same tokenizer."""
    root = tmp_path_factory.mktemp("pair")
    hf = run(TrainConfig(kind="transformer", steps=40, **{**TINY, "lr": 2e-2}), root / "t", progress=False)
    arch = dict(d_model=16, d_state=8, headdim=8)
    native = run(TrainConfig(kind="explicit", steps=1, **{**TINY, "arch": arch}), root / "e", progress=False)
    return hf, native


def direct_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


@pytest.mark.slow
def test_lm_evals_hf_model_scores_the_export_as_computed_directly_on_our_adapters_ids(parity_pair):
    """Per document: lm-eval's hf model tokenises context and answer into exactly the ids our adapter feeds a Mamba2
    checkpoint of the family, uses the same prefix, end-of-text token and length limit, and its log-likelihood is
    the log-softmax of the Llama on those ids, summed over the answer."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import LlamaForCausalLM

    import implicit_ssm_eval.tasks
    from implicit_ssm_eval.model_adapters.adapter.lm import ExplicitSSMLM
    from implicit_ssm_eval.model_adapters.adapter.requests import Item, model_input

    hf_dir, native_dir = parity_pair
    theirs = HFLM(pretrained=str(hf_dir), device="cpu", dtype="float32", batch_size=4)
    ours = ExplicitSSMLM(pretrained=str(native_dir), device="cpu")
    assert (theirs.prefix_token_id, theirs.eot_token_id, theirs.max_length) == \
        (ours.prefix_token_id, ours.eot_token_id, ours.max_length) == (2, 2, 2048)
    manager = TaskManager(include_path=str(Path(implicit_ssm_eval.tasks.__file__).parent), include_defaults=False,
                          metadata={"st_num_docs": 6})
    results = lm_eval.simple_evaluate(model=theirs, tasks=["st_parity_id", "st_parity_ood2x"], task_manager=manager,
                                      log_samples=True, bootstrap_iters=0)
    model = LlamaForCausalLM.from_pretrained(hf_dir).eval()
    checked = 0
    for task, samples in results["samples"].items():
        for sample in samples:
            ((context, answer),) = sample["arguments"]
            item = Item(None, task, sample["doc_id"], *ours._encode_pair(context, answer))  # what our adapter scores
            assert theirs._encode_pair(context, answer) == (item.context, item.continuation)
            fed = list(model_input(item, ours.max_length)[0])
            logprobs = direct_logprobs(model, fed)[-len(item.continuation):]
            expected = float(logprobs.gather(1, torch.tensor(item.continuation)[:, None]).sum())
            greedy = bool((logprobs.argmax(-1) == torch.tensor(item.continuation)).all())
            loglik, is_greedy = sample["resps"][0][0]
            assert float(loglik) == pytest.approx(expected, abs=1e-5)
            assert is_greedy == greedy
            checked += 1
    assert checked == 12


@pytest.mark.slow
def test_lm_evals_rolling_perplexity_of_the_export_starts_from_the_eos_prefix(parity_pair, tmp_path):
    """ppl_local_text through lm-eval's hf model: each document is scored after one end-of-text token, the prefix
    our adapter also uses, with the same token ids."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import LlamaForCausalLM

    import implicit_ssm_eval.tasks
    from implicit_ssm_eval.tasks.state_tracking import tokenizer_for

    hf_dir, _ = parity_pair
    texts = ["0 1 1 0 1 odd even", "1 1 0"]
    (tmp_path / "text.txt").write_text("\n\n".join(texts) + "\n")
    manager = TaskManager(include_path=str(Path(implicit_ssm_eval.tasks.__file__).parent), include_defaults=False,
                          metadata={"ppl_text_path": str(tmp_path / "text.txt"), "ppl_split": "paragraphs"})
    results = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(hf_dir)}, device="cpu", batch_size=2,
                                      tasks=["ppl_local_text"], task_manager=manager, log_samples=True,
                                      bootstrap_iters=0)  # as `lm_eval --model hf --model_args pretrained=DIR`
    model = LlamaForCausalLM.from_pretrained(hf_dir).eval()
    samples = sorted(results["samples"]["ppl_local_text"], key=lambda s: s["doc_id"])
    for text, sample in zip(texts, samples):
        ids = [2, *tokenizer_for("parity").encode(text).ids]
        logprobs = direct_logprobs(model, ids[:-1])
        expected = float(logprobs.gather(1, torch.tensor(ids[1:])[:, None]).sum())
        assert float(sample["resps"][0][0]) == pytest.approx(expected, abs=1e-5)


# -- a family from outside the package: packed text -----------------------------------------------------------------

@pytest.fixture
def packed_text_family(monkeypatch):
    """A registered family whose tokenizer has <|endoftext|> and no <pad>, and whose batches are packed rows of
    random words with next-token labels: what the text family's training data look like."""
    from implicit_ssm_eval.tasks import registry
    from implicit_ssm_eval.tasks.registry import BucketInfo, Family, no_chance, register_family

    monkeypatch.setattr(registry, "_FAMILIES", registry.families())  # registered for this test only
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<unk>", "<|endoftext|>", *[f"w{i}" for i in range(20)]]

    def tokenizer(task):  # with a template that puts <|endoftext|> first when special tokens are asked for
        tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tk.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                          special_tokens=[("<|endoftext|>", 1)])
        return tk

    def batches(task, *, min_len, max_len, batch_size, seed, start=0):
        step = start
        while True:
            g = torch.Generator().manual_seed(seed * 7919 + step)
            tokens = torch.randint(1, len(words), (batch_size, max_len + 1), generator=g)
            yield {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
            step += 1

    info = BucketInfo("id", (1, 1), 1.0, None, "packed")
    register_family(Family("toytext", "toytext", "toytext_all", ("toy_packed",), "toytext_", None,
                           lambda task: (info,), no_chance, lambda task: 1, tokenizer, batches))
    return "toy_packed"


@pytest.mark.parametrize("kind", ["implicit", "explicit", "transformer"])
def test_every_kind_trains_on_a_packed_text_family_and_names_its_eos(tmp_path, packed_text_family, kind):
    from implicit_ssm_eval.model_adapters.formats import load_checkpoint

    # the text recipes' Mamba2 shape at half the width: 4 layers, d_state 64, headdim 64
    arch = TINY["arch"] if kind == "transformer" else dict(d_model=128, n_layer=4, d_state=64, headdim=64)
    cfg = TrainConfig(task=packed_text_family, kind=kind, min_len=12, max_len=12, batch_size=4, steps=2, arch=arch)
    out = run(cfg, tmp_path, progress=False)
    assert float(log_rows(tmp_path)[-1]["tokens_per_s"]) > 0
    if kind == "transformer":
        from transformers import AutoTokenizer

        from implicit_ssm_eval.tasks.registry import family_for_task

        tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
        assert (tokenizer_config["eos_token"], tokenizer_config["pad_token"]) == ("<|endoftext|>",) * 2
        ours = family_for_task(packed_text_family).tokenizer_for(packed_text_family)
        assert AutoTokenizer.from_pretrained(out).encode("w3 w1 w7") == ours.encode("w3 w1 w7",
                                                                                    add_special_tokens=False).ids
    else:
        assert load_checkpoint(out).tokenizer.eos_token == "<|endoftext|>"


# -- parameter counts ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    dict(kind="implicit"), dict(kind="explicit"),
    dict(kind="implicit", ngroups=2, bias=True, D_has_hdim=True, rmsnorm=False, conv_bias=False),
    dict(kind="explicit", n_layer=3, tie_embeddings=False, vocab_size=61, pad_vocab_size_multiple=16),
])
def test_mamba2_counts_are_the_built_models(overrides):
    cfg = ModelConfig.tiny(**overrides)
    model = build_model(cfg)
    counts = sizes.mamba2_counts(cfg)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.embedding == model.embedding.weight.numel()


def test_counts_of_a_trained_implicit_model_are_its_export_not_its_weight_norm(tmp_path):
    from implicit_ssm_eval.harness.model_card import parameter_count

    cfg = TrainConfig(kind="implicit", steps=1, **{**TINY, "arch": dict(d_model=16, n_layer=2, d_state=8, headdim=8)})
    trainer = Trainer(cfg, tmp_path)
    exported = parameter_count(finish(trainer, tmp_path))
    assert sizes.counts_of("implicit", cfg.arch, 7).total == exported
    assert sum(p.numel() for p in trainer.model.parameters()) > exported  # the magnitudes g, training only


@pytest.mark.parametrize("arch", [dict(d_model=32, n_layer=2, n_head=2, intermediate_size=64),
                                  dict(d_model=48, n_layer=3, n_head=3, intermediate_size=100)])
def test_llama_counts_are_the_built_models(arch):
    from tokenizers import Tokenizer, models

    from implicit_ssm_eval.harness.transformer import build_transformer

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>", *"abcdefghij"])},
                                     unk_token="<unk>"))
    model = build_transformer(arch, tok)
    counts = sizes.llama_counts(arch, tok.get_vocab_size())
    assert counts.total == sum(p.numel() for p in model.parameters())  # the tied head once
    assert counts.embedding == model.model.embed_tokens.weight.numel() == 16 * arch["d_model"]


def test_matching_helpers_land_within_ten_percent():
    text = {**ARCH_DEFAULTS, "d_model": 256, "n_layer": 4, "d_state": 64, "headdim": 64}
    target = sizes.counts_of("implicit", text, 8000).non_embedding
    assert sizes.explicit_layers_for(target, text) == 5
    for n_layer in (2, 3, 4):
        width = sizes.intermediate_size_for(target, 256, n_layer)
        got = sizes.llama_counts(dict(d_model=256, n_layer=n_layer, n_head=4, intermediate_size=width), 8000)
        assert abs(sizes.relative_gap(got.non_embedding, target)) < 0.02, (n_layer, width)


# -- the recipes --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recipes():
    sys.path.insert(0, str(ROOT / "checkpoints"))
    try:
        import recipes
    finally:
        sys.path.remove(str(ROOT / "checkpoints"))
    return recipes


@pytest.mark.parametrize("twin,implicit,vocab", [
    ("parity-transformer", "parity-implicit", 7), ("a5-transformer", "a5-implicit", 63),
    ("a5-transformer-v1", "a5-implicit", 63), ("a5-transformer-ft", "a5-implicit", 63),
    ("text-transformer", "text-implicit", 8000), ("text-explicit-deep", "text-implicit", 8000),
])
def test_recipe_twins_match_their_implicit_models_parameters(recipes, twin, implicit, vocab):
    a, b = recipes.training_config(twin), recipes.training_config(implicit)
    ours, theirs = sizes.counts_of(a.kind, a.arch, vocab), sizes.counts_of(b.kind, b.arch, vocab)
    assert abs(sizes.relative_gap(ours.total, theirs.total)) < 0.10
    assert abs(sizes.relative_gap(ours.non_embedding, theirs.non_embedding)) < 0.10


def test_recipe_twins_share_data_steps_and_schedule(recipes):
    shared = ("task", "data_seed", "min_len", "max_len", "data_options", "steps", "batch_size", "lr", "weight_decay",
              "warmup_steps", "min_lr_ratio", "clip", "seed")
    for group in (["parity-implicit", "parity-explicit", "parity-transformer"],
                  ["a5-implicit", "a5-explicit", "a5-transformer"], ["a5-implicit-ft", "a5-transformer-ft"],
                  ["a5-implicit-v1", "a5-transformer-v1"],
                  ["text-implicit", "text-explicit", "text-explicit-deep", "text-transformer"]):
        configs = [recipes.training_config(name) for name in group]
        for field in shared:
            assert len({json.dumps(getattr(c, field)) for c in configs}) == 1, (group, field)


def test_text_recipes_follow_the_papers_implicit_recipe(recipes):
    imp = recipes.training_config("text-implicit")
    assert imp.kind == "implicit" and imp.max_len == imp.min_len == recipes.TEXT_CONTEXT == 256
    assert {k: imp.arch[k] for k in ("d_model", "n_layer", "d_state", "headdim", "expand")} == \
        dict(d_model=256, n_layer=4, d_state=64, headdim=64, expand=2)
    assert 16 <= imp.train_budget.max_iter <= 24 and imp.train_budget.tau == 0.8 and imp.grad_steps == 4
    assert 0 < imp.unroll_steps < imp.steps and imp.weight_norm
    assert recipes.training_config("text-explicit").arch == imp.arch
    assert recipes.training_config("text-transformer").arch == dict(d_model=256, n_layer=4, n_head=4,
                                                                    intermediate_size=320)


def test_the_driver_names_text_task_until_the_family_lands(recipes, capsys):
    if recipes.TEXT_TASK != "TEXT_TASK_NOT_SET":
        pytest.skip("TEXT_TASK is set")
    with pytest.raises(SystemExit, match="set TEXT_TASK in checkpoints/recipes.py"):
        recipes.main(["text-implicit", "--runs", "unused"])
    assert "parity-transformer: transformer, 47,648 parameters" in recipes.describe("parity-transformer")


def test_the_driver_skips_runs_that_finished_all_their_steps(recipes, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "training.json").write_text(json.dumps({"steps": 1499}))
    assert not recipes.finished(tmp_path, 1500)  # an --export mid-run
    (tmp_path / "training.json").write_text(json.dumps({"steps": 1500}))
    assert recipes.finished(tmp_path, 1500)


def test_model_card_of_a_transformer_reads_lm_evals_hf_results(tmp_path):
    from implicit_ssm_eval.harness.model_card import main as card_main

    run(TrainConfig(kind="transformer", steps=4, **TINY), tmp_path / "run", progress=False)
    results = {"results": {"st_parity_id": {"acc,none": 0.73, "alias": " - st_parity_id"},
                           "st_parity_ood2x": {"acc,none": 0.46}, "st_parity_ones10": {"acc,none": 0.53},
                           "st_parity": {"acc,none": 0.57}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    target = tmp_path / "parity-transformer"
    assert card_main([str(tmp_path / "run"), str(target), "--lm-eval-results", str(tmp_path / "results.json"),
                      "--copy", "--command", "implicit-eval train --kind transformer"]) == 0
    text = (target / "README.md").read_text()
    params = sum(t.numel() for t in weights(target).values())
    for needle in ("# parity-transformer", f"parameters: {params:,}", "`st_parity` through lm-eval's own `--model hf`",
                   "| reading   |   id (1-40) |   2x (80) |", "| one pass  |        0.73 |      0.46 |",
                   "10% '1' (80)", "command: `implicit-eval train --kind transformer`", "4 steps"):
        assert needle in text, needle
    assert (target / "training_curve.png").stat().st_size > 0
    assert {"tokenizer_config.json", "special_tokens_map.json", "training.json"} <= {p.name for p in target.iterdir()}


def test_the_bundle_holds_the_transformer_twins_by_family():
    """The sweep plans transformer twins as lm-eval `hf` jobs (sweep.hf_checkpoint); the bundle is split by the family
    each checkpoint was trained on (the main job's state-tracking and language parts)."""
    from implicit_ssm_eval.harness.sweep import HFCheckpoint, hf_checkpoint
    from implicit_ssm_eval.harness.sweep_cli import bundled_checkpoints

    names = {p.name for p in bundled_checkpoints("state_tracking")}
    assert {"parity-implicit", "a5-implicit", "a5-explicit-2l", "parity-transformer", "a5-transformer"} <= names
    assert {p.name for p in bundled_checkpoints("pydoc")} == {"text-implicit", "text-explicit", "text-explicit-deep",
                                                              "text-transformer"}
    assert isinstance(hf_checkpoint(ROOT / "checkpoints" / "parity-transformer"), HFCheckpoint)
    assert hf_checkpoint(ROOT / "checkpoints" / "parity-implicit") is None
