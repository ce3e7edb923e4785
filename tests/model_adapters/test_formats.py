"""Checkpoint formats: native round trip, golden outputs of the reference code, mamba_ssm and transformers,
and one clear error for every kind of bad checkpoint."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.formats import CheckpointError, inspect_checkpoint, load_checkpoint, save
from implicit_ssm_eval.model_adapters.testing import assert_close, tiny_model
from implicit_ssm_eval.model_adapters.tokenizer import TokenizerError

FIXTURES = Path(__file__).parents[1] / "fixtures"


def logits(ckpt, ids, budget=None):
    with torch.no_grad():
        return ckpt.model.logits(ckpt.model(ids, budget).hidden)


def word_tokenizer(path: Path, words=("a", "b", "c")) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


# -- native ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["explicit", "implicit"])
@pytest.mark.parametrize("tie", [True, False])
def test_native_round_trip_is_exact(tmp_path, kind, tie):
    model = tiny_model(kind, tie_embeddings=tie)
    save(model, tmp_path / "ckpt", tokenizer_path=word_tokenizer(tmp_path / "tok.json"), eos_token="<eos>",
         training={"steps": 3})
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.format == "native" and ckpt.config == model.cfg
    for name, tensor in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[name], tensor), name
    ids = torch.randint(0, 37, (2, 9))
    budget = Budget(max_iter=4) if kind == "implicit" else None
    assert torch.equal(logits(ckpt, ids, budget), model.logits(model(ids, budget).hidden))
    assert ckpt.tokenizer.eos_token_id == 2 and ckpt.tokenizer.encode("a c") == [3, 5]
    assert len(ckpt.content_hash) == 64
    if kind == "implicit":
        assert ckpt.default_budget == Budget(max_iter=8, tol=0.0, tau=0.8)


def test_content_hash_changes_with_the_weights(tmp_path):
    save(tiny_model("explicit", seed=0), tmp_path / "a")
    save(tiny_model("explicit", seed=1), tmp_path / "b")
    assert load_checkpoint(tmp_path / "a").content_hash != load_checkpoint(tmp_path / "b").content_hash
    assert load_checkpoint(tmp_path / "a").content_hash == load_checkpoint(tmp_path / "a").content_hash


def test_a_rewritten_checkpoint_gets_its_new_hash(tmp_path):
    """The hash is remembered per process, but never for files that changed since."""
    save(tiny_model("explicit", seed=0), tmp_path / "a")
    first = load_checkpoint(tmp_path / "a").content_hash
    shutil.rmtree(tmp_path / "a")
    save(tiny_model("explicit", seed=1), tmp_path / "a")  # same path, same sizes
    assert load_checkpoint(tmp_path / "a").content_hash != first


def test_save_is_atomic_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import implicit_ssm_eval.model_adapters.formats.native as native

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError):
        native.save(tiny_model("explicit"), tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


# -- other implementations' formats, against their own outputs -----------------------------------------
@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_reference_code_checkpoint_matches_reference_outputs(kind):
    """Golden logits written by the reference implementation itself (tests/fixtures/README.md)."""
    directory = FIXTURES / f"reference_{kind}"
    ckpt = load_checkpoint(directory)
    expected = load_file(str(directory / "expected.safetensors"))
    ids = expected["input_ids"]
    assert ckpt.format == "reference" and ckpt.config.kind == kind
    if kind == "implicit":
        budget = ckpt.default_budget
        assert budget == Budget(max_iter=6, tol=0.0, tau=0.8)  # eval_f_max_iter, f_tol, training.tau
        assert_close(logits(ckpt, ids, budget), expected["logits_simultaneous"], 1e-4, "simultaneous")
        assert_close(logits(ckpt, ids, budget.replace(mode="sequential")), expected["logits_sequential"], 1e-4,
                     "sequential")
    else:
        assert_close(logits(ckpt, ids), expected["logits_simultaneous"], 1e-4, "forward")
        state, hidden = ckpt.model.empty_state(ids.shape[0]), []
        for t in range(ids.shape[1]):
            out = ckpt.model.step(ids[:, t], state)
            state, hidden = out.state, hidden + [out.hidden]
        with torch.no_grad():
            stepped = ckpt.model.logits(torch.stack(hidden, 1))
        assert_close(stepped, expected["logits_sequential"], 1e-4, "token by token")


def test_reference_budget_rule_uses_eval_factor_when_eval_max_iter_is_zero(tmp_path):
    directory = tmp_path / "ref"
    shutil.copytree(FIXTURES / "reference_implicit", directory)
    config = json.loads((directory / "config.json").read_text())
    config["deq_params"]["solver"].update(eval_f_max_iter=0, f_max_iter=32, eval_factor=4.0, f_tol=0.05)
    (directory / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(directory).default_budget == Budget(max_iter=128, tol=0.05, tau=0.8)


def test_reference_checkpoint_as_safetensors(tmp_path):
    directory = tmp_path / "ref"
    directory.mkdir()
    shutil.copy(FIXTURES / "reference_implicit" / "config.json", directory)
    state = torch.load(FIXTURES / "reference_implicit" / "pytorch_model.bin", weights_only=True)
    state.pop("criterion.decoder.weight")  # tied: safetensors stores shared tensors once
    save_file(state, str(directory / "model.safetensors"))
    expected = load_file(str(FIXTURES / "reference_implicit" / "expected.safetensors"))
    ckpt = load_checkpoint(directory)
    assert_close(logits(ckpt, expected["input_ids"], ckpt.default_budget), expected["logits_simultaneous"], 1e-4)


def test_mamba_ssm_checkpoint_matches_mamba_ssm_outputs():
    directory = FIXTURES / "mamba_ssm_tiny"
    ckpt = load_checkpoint(directory)
    expected = load_file(str(directory / "expected.safetensors"))
    assert ckpt.format == "mamba_ssm" and ckpt.config.kind == "explicit" and ckpt.config.ngroups == 2
    assert_close(logits(ckpt, expected["input_ids"]), expected["logits"], 1e-4, "logits")


def make_transformers_checkpoint(directory: Path, ngroups: int, tie: bool):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(ngroups)
    config = Mamba2Config(num_heads=8, head_dim=8, vocab_size=50, hidden_size=32, state_size=8,
                          num_hidden_layers=2, n_groups=ngroups, expand=2, chunk_size=16, tie_word_embeddings=tie)
    model = Mamba2ForCausalLM(config).eval()
    with torch.no_grad():  # transformers initialises norms to 1 and D to 1: perturb so every term counts
        for name, p in model.named_parameters():
            is_scale = "norm" in name or name.endswith(".D")
            p.copy_(1 + 0.2 * torch.randn_like(p) if is_scale else 0.3 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("ngroups,tie", [(1, False), (2, True)])
def test_transformers_checkpoint_matches_transformers_outputs(tmp_path, ngroups, tie):
    reference = make_transformers_checkpoint(tmp_path / "hf", ngroups, tie)
    ckpt = load_checkpoint(tmp_path / "hf")
    ids = torch.randint(0, 50, (2, 21))
    with torch.no_grad():
        expected = reference(ids).logits
    assert ckpt.format == "transformers"
    assert_close(logits(ckpt, ids), expected, 1e-4, "logits")


def test_inspect_checkpoint_says_what_load_checkpoint_does_without_the_weights(tmp_path, monkeypatch):
    """Format, content hash and config of every format, from the config and the weights' headers only."""
    model = tiny_model("implicit")
    save(model, tmp_path / "native", tokenizer_path=word_tokenizer(tmp_path / "tok.json"), eos_token="<eos>")
    make_transformers_checkpoint(tmp_path / "hf", 1, False)
    tok = word_tokenizer(tmp_path / "tokenizer.json")
    cases = [(tmp_path / "native", None), (FIXTURES / "reference_implicit", None), (FIXTURES / "mamba_ssm_tiny", None),
             (FIXTURES / "mamba_ssm_tiny", tok), (tmp_path / "hf", None)]
    loaded = [load_checkpoint(path, tokenizer=t) for path, t in cases]

    def no_tensors(*a, **kw):
        raise AssertionError("inspect_checkpoint read tensor data")

    monkeypatch.setattr("implicit_ssm_eval.model_adapters.formats.read_weights", no_tensors)
    for (path, t), full in zip(cases, loaded):
        info = inspect_checkpoint(path, tokenizer=t)
        assert (info.format, info.content_hash, info.config, info.default_budget) == \
            (full.format, full.content_hash, full.config, full.default_budget), path
    assert loaded[2].content_hash != loaded[3].content_hash  # the tokenizer is part of it


def test_tokenizer_from_an_explicit_path(tmp_path):
    tok = word_tokenizer(tmp_path / "tokenizer.json")
    ckpt = load_checkpoint(FIXTURES / "mamba_ssm_tiny", tokenizer=tok)
    assert ckpt.tokenizer is not None and ckpt.tokenizer.eos_token_id == 2
    assert load_checkpoint(FIXTURES / "mamba_ssm_tiny").tokenizer is None


# -- bad checkpoints: one clear error naming the file and the key --------------------------------------
@pytest.fixture
def native_dir(tmp_path):
    save(tiny_model("implicit"), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def edit_config(directory: Path, change) -> None:
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


def edit_weights(directory: Path, change) -> None:
    state = load_file(str(directory / "model.safetensors"))
    change(state)
    save_file(state, str(directory / "model.safetensors"))


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_checkpoint(tmp_path / "nope")


def test_missing_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"config.json: file not found"):
        load_checkpoint(tmp_path / "empty")


def test_bad_json(native_dir):
    (native_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: not valid JSON"):
        load_checkpoint(native_dir)


def test_unknown_model_type(native_dir):
    edit_config(native_dir, lambda c: c.update(format=None, model_type="llama"))
    with pytest.raises(CheckpointError, match="unknown checkpoint format; expected one of: native"):
        load_checkpoint(native_dir)


def test_missing_weights(native_dir):
    (native_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file; expected one of"):
        load_checkpoint(native_dir)


def test_corrupt_weights(native_dir):
    (native_dir / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"model.safetensors: cannot read weights"):
        load_checkpoint(native_dir)


def test_missing_key(native_dir):
    edit_weights(native_dir, lambda s: s.pop("layers.1.mixer.A_log"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: missing key 'layers.1.mixer.A_log'"):
        load_checkpoint(native_dir)


def test_unexpected_key(native_dir):
    edit_weights(native_dir, lambda s: s.update({"layers.0.mixer.extra": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected key 'layers.0.mixer.extra'"):
        load_checkpoint(native_dir)


def test_misshaped_key(native_dir):
    edit_weights(native_dir, lambda s: s.update({"norm_f.weight": torch.ones(31)}))
    with pytest.raises(CheckpointError, match=r"key 'norm_f.weight' has shape \(31,\), the config implies \(32,\)"):
        load_checkpoint(native_dir)


def test_config_that_contradicts_the_weights(native_dir):
    edit_config(native_dir, lambda c: c["model"].update(d_state=16))
    with pytest.raises(CheckpointError, match=r"key 'layers.0.mixer.in_proj.weight' has shape"):
        load_checkpoint(native_dir)
    edit_config(native_dir, lambda c: c["model"].update(d_state=8, n_layer=3))
    with pytest.raises(CheckpointError, match=r"missing key 'layers.2"):
        load_checkpoint(native_dir)


def test_unknown_config_key(native_dir):
    edit_config(native_dir, lambda c: c["model"].update(d_stat=4))
    with pytest.raises(CheckpointError, match=r"config.json 'model': unknown key\(s\) \['d_stat'\]; valid keys"):
        load_checkpoint(native_dir)


def test_bad_budget_in_config(native_dir):
    edit_config(native_dir, lambda c: c["model"]["budget"].update(tau=2.0))
    with pytest.raises(CheckpointError, match=r"tau must be a number in \(0, 1\]"):
        load_checkpoint(native_dir)


def test_pickle_with_code_is_refused(tmp_path):
    directory = tmp_path / "ms"
    shutil.copytree(FIXTURES / "mamba_ssm_tiny", directory)
    torch.save({"x": torch.zeros(1), "evil": Budget()}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: cannot read weights \(UnpicklingError"):
        load_checkpoint(directory)


@pytest.mark.parametrize("change,match", [
    (lambda c: c["backbone_config"].update(d_inner=128), "d_inner > 0"),
    (lambda c: c["backbone_config"].update(ema_alpha=0.5), "ema_alpha"),
    (lambda c: c["backbone_config"]["block_cfg"].update(allow_negative_A_EV=True), "allow_negative_A_EV"),
    (lambda c: c["backbone_config"]["block_cfg"].update(colour="red"), r"block_cfg has unknown key\(s\) \['colour'\]"),
    (lambda c: c.update(backbone_type="hybrid"), "backbone_type must be"),
    (lambda c: c["deq_params"]["norm"].update(norm_type="spectral_norm"), "norm_type 'spectral_norm'"),
])
def test_reference_unsupported_features(tmp_path, change, match):
    directory = tmp_path / "ref"
    shutil.copytree(FIXTURES / "reference_implicit", directory)
    edit_config(directory, change)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(directory)


def test_reference_weight_norm_pair_incomplete(tmp_path):
    directory = tmp_path / "ref"
    shutil.copytree(FIXTURES / "reference_implicit", directory)
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    state.pop("backbone.injection.weight_g")
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"'backbone.injection.weight_v' has no matching"):
        load_checkpoint(directory)


def test_mamba_ssm_mamba1_is_refused(tmp_path):
    directory = tmp_path / "ms"
    shutil.copytree(FIXTURES / "mamba_ssm_tiny", directory)
    edit_config(directory, lambda c: c["ssm_cfg"].update(layer="Mamba1"))
    with pytest.raises(CheckpointError, match="only Mamba2 layers are supported"):
        load_checkpoint(directory)


def test_missing_tokenizer_file(native_dir, tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer file not found"):
        load_checkpoint(native_dir, tokenizer=tmp_path / "missing.json")
