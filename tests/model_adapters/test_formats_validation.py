"""Bad checkpoints refused at load with one line naming the file and the key, in every format: non-float
weights, configs that imply huge models (refused before anything is allocated), sharded indexes that point
outside the checkpoint, wrong-typed config values; and tokenizers with and without special tokens."""

import dataclasses
import json
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import implicit_ssm_eval.model_adapters.formats as formats
from implicit_ssm_eval.model_adapters.config import ConfigError, ModelConfig
from implicit_ssm_eval.model_adapters.formats import CheckpointError, hf, load_checkpoint, mamba_ssm, reference, save
from implicit_ssm_eval.model_adapters.testing import tiny_model
from implicit_ssm_eval.model_adapters.tokenizer import Tokenizer, TokenizerError

FIXTURES = Path(__file__).parents[1] / "fixtures"


# -- one small checkpoint per format ------------------------------------------------------------------
def native_dir(root: Path) -> Path:
    return save(tiny_model("implicit"), root / "native")


def reference_dir(root: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "reference_implicit", root / "reference"))


def mamba_ssm_dir(root: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "mamba_ssm_tiny", root / "mamba_ssm"))


def transformers_dir(root: Path) -> Path:
    """What Mamba2ForCausalLM.save_pretrained writes for a tiny model (tied head stored once)."""
    directory = root / "transformers"
    directory.mkdir()
    state = {("backbone.embeddings.weight" if k == "embedding.weight" else "backbone." + k): v.contiguous()
             for k, v in tiny_model("explicit").state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(directory / "model.safetensors"))
    config = {"model_type": "mamba2", "hidden_size": 32, "expand": 2, "num_heads": 8, "head_dim": 8,
              "vocab_size": 40, "num_hidden_layers": 2, "state_size": 8, "conv_kernel": 4, "n_groups": 2,
              "chunk_size": 16, "use_conv_bias": True, "use_bias": False, "rms_norm": True,
              "tie_word_embeddings": True, "layer_norm_epsilon": 1e-5, "time_step_limit": [0.0, float("inf")]}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


MAKERS = {"native": native_dir, "reference": reference_dir, "mamba_ssm": mamba_ssm_dir,
          "transformers": transformers_dir}


def weights_path(directory: Path) -> Path:
    return next(directory / n for n in ("model.safetensors", "pytorch_model.bin") if (directory / n).is_file())


def read_state(path: Path) -> dict:
    return load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)


def write_state(state: dict, path: Path) -> None:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


def edit_weights(directory: Path, change) -> None:
    state = read_state(weights_path(directory))
    change(state)
    write_state(state, weights_path(directory))


def edit_config(directory: Path, change) -> None:
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


def refused(directory: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(directory)
    assert "\n" not in str(info.value)


# -- 1. weights that are not floating point -----------------------------------------------------------
NON_FLOAT_CASES = [
    ("native", "layers.0.mixer.A_log"),
    ("native", "embedding.weight"),
    ("reference", "backbone.layers.0.mixer.D"),
    ("reference", "backbone.layers.0.mixer.in_proj.weight_v"),  # weight-normed: folded after the check
    ("reference", "backbone.injection.weight_g"),
    ("mamba_ssm", "backbone.layers.1.mixer.conv1d.weight"),
    ("transformers", "backbone.layers.0.mixer.dt_bias"),
]


@pytest.mark.parametrize("fmt,key", NON_FLOAT_CASES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_float_weights_are_refused(tmp_path, fmt, key, dtype):
    directory = MAKERS[fmt](tmp_path)
    edit_weights(directory, lambda s: s.update({key: s[key].to(dtype)}))
    dtype_name = str(dtype).removeprefix("torch.")
    refused(directory, rf"{weights_path(directory).name}: key '{key}' has dtype {dtype_name}, expected floating "
                       r"point \(float32, float16, bfloat16 or float64\)")


def test_every_float_parameter_is_checked(tmp_path):
    directory = native_dir(tmp_path)
    original = load_file(str(directory / "model.safetensors"))
    assert len(original) > 20
    for key in original:
        save_file({**original, key: original[key].to(torch.int16)}, str(directory / "model.safetensors"))
        refused(directory, rf"key '{key}' has dtype int16")


def test_safetensors_dtype_this_loader_does_not_know(tmp_path):
    """A 4-bit float (safetensors "F4") has no torch dtype here: refused by name, not with a traceback."""
    directory = native_dir(tmp_path)
    header = json.dumps({"embedding.weight": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}).encode()
    header += b" " * (-len(header) % 8)
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0")
    refused(directory, r"model.safetensors: key 'embedding.weight' has dtype F4, which this loader does not know; "
                       r"expected a floating-point tensor \(F32, F16, BF16 or F64\)")


def test_half_precision_weights_still_load(tmp_path):
    directory = native_dir(tmp_path)
    edit_weights(directory, lambda s: s.update({k: v.to(torch.bfloat16) for k, v in s.items()}))
    assert load_checkpoint(directory).model.embedding.weight.dtype == torch.float32


# -- 2. huge configs: shapes compared before anything is allocated ----------------------------------------
HUGE = 2_000_000_000
HUGE_CASES = [
    ("native", lambda c: c["model"].update(vocab_size=HUGE), rf"key 'embedding.weight' has shape \(40, 32\), the "
                                                              rf"config implies \({HUGE}, 32\)"),
    ("native", lambda c: c["model"].update(d_state=HUGE), r"key 'layers.0.mixer.in_proj.weight' has shape"),
    ("native", lambda c: c["model"].update(d_model=HUGE, headdim=HUGE), "the config implies tensors too large"),
    ("native", lambda c: c["model"].update(n_layer=HUGE), f"the config has n_layer={HUGE} but the weights hold"),
    # Without the layer count check this one builds 20000 meta layers (~40 s here); the one above never ends.
    ("native", lambda c: c["model"].update(n_layer=20_000), "the config has n_layer=20000 but the weights hold"),
    ("reference", lambda c: c.update(n_tokens=HUGE), rf"the config implies \({HUGE}, 64\)"),
    ("mamba_ssm", lambda c: c.update(vocab_size=HUGE), rf"the config implies \({HUGE}, 64\)"),
    ("transformers", lambda c: c.update(vocab_size=HUGE), rf"the config implies \({HUGE}, 32\)"),
]


@pytest.mark.parametrize("fmt,change,match", HUGE_CASES)
def test_huge_config_fails_fast_without_allocating(tmp_path, monkeypatch, fmt, change, match):
    directory = MAKERS[fmt](tmp_path)
    load_checkpoint(directory)  # warm up: the first meta-device op imports torch internals (once per process)
    edit_config(directory, change)

    def no_real_model(cfg):
        raise AssertionError("the real model was built before the shape check")

    def no_data(files):
        raise AssertionError("tensor data was read before the shape check")

    monkeypatch.setattr(formats, "build_model", no_real_model)
    monkeypatch.setattr(formats, "read_weights", no_data)
    start = time.perf_counter()
    refused(directory, match)
    assert time.perf_counter() - start < 0.5


# -- 3. sharded indexes stay inside the checkpoint directory -------------------------------------------
def sharded(directory: Path, index_name: str) -> dict:
    """Replace the weights file by an index over two shards (one in a subfolder), all inside `directory`."""
    path = weights_path(directory)
    state, suffix = read_state(path), path.suffix
    path.unlink()
    keys = sorted(state)
    shards = {f"part-1{suffix}": keys[: len(keys) // 2], f"sub/part-2{suffix}": keys[len(keys) // 2:]}
    for name, part in shards.items():
        (directory / name).parent.mkdir(exist_ok=True)
        write_state({k: state[k] for k in part}, directory / name)
    weight_map = {k: name for name, part in shards.items() for k in part}
    (directory / index_name).write_text(json.dumps({"weight_map": weight_map}))
    return weight_map


def point_outside(directory: Path, index_name: str, how: str) -> str:
    """Move shard part-1 out of the checkpoint (it still loads from there) and point the index at it."""
    outside = directory.parent / "elsewhere"
    outside.mkdir()
    suffix = ".safetensors" if "safetensors" in index_name else ".bin"
    shutil.move(directory / f"part-1{suffix}", outside / f"part-1{suffix}")
    entry = {"dotdot": f"../elsewhere/part-1{suffix}", "absolute": str(outside / f"part-1{suffix}"),
             "symlink": f"part-1{suffix}"}[how]
    if how == "symlink":
        (directory / entry).symlink_to(outside / f"part-1{suffix}")
    index = json.loads((directory / index_name).read_text())
    index["weight_map"] = {k: entry if v == f"part-1{suffix}" else v for k, v in index["weight_map"].items()}
    (directory / index_name).write_text(json.dumps(index))
    return entry


@pytest.mark.parametrize("fmt,index_name", [("native", "model.safetensors.index.json"),
                                            ("mamba_ssm", "pytorch_model.bin.index.json")])
def test_sharded_checkpoint_loads(tmp_path, fmt, index_name):
    directory = MAKERS[fmt](tmp_path)
    whole = load_checkpoint(directory)
    sharded(directory, index_name)
    ckpt = load_checkpoint(directory)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[name], tensor), name
    assert ckpt.content_hash != whole.content_hash


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
@pytest.mark.parametrize("fmt,index_name", [("native", "model.safetensors.index.json"),
                                            ("transformers", "model.safetensors.index.json"),
                                            ("reference", "pytorch_model.bin.index.json")])
def test_index_pointing_outside_is_refused(tmp_path, fmt, index_name, how):
    directory = MAKERS[fmt](tmp_path)
    sharded(directory, index_name)
    entry = point_outside(directory, index_name, how)
    refused(directory, rf"{index_name}: weight_map entry '{entry}' points outside the checkpoint directory "
                       rf".*; shards must be files inside it")


@pytest.mark.parametrize("entry,match", [
    ("model.safetensors.index.json", "is not a .safetensors or .bin file name"),  # would recurse for ever
    (7, "weight_map entry 7 is not a .safetensors or .bin file name"),
])
def test_index_entries_that_are_not_shards(tmp_path, entry, match):
    directory = native_dir(tmp_path)
    weight_map = sharded(directory, "model.safetensors.index.json")
    weight_map[next(iter(weight_map))] = entry
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    refused(directory, match)


def test_a_key_in_two_shards_is_refused(tmp_path):
    directory = native_dir(tmp_path)
    sharded(directory, "model.safetensors.index.json")
    first = load_file(str(directory / "part-1.safetensors"))
    second = load_file(str(directory / "sub/part-2.safetensors"))
    key = next(iter(first))
    save_file({**second, key: first[key]}, str(directory / "sub/part-2.safetensors"))
    refused(directory, rf"part-2.safetensors: key '{key}' is stored in another shard too")


def test_pickle_holding_more_than_tensors_is_refused(tmp_path):
    directory = mamba_ssm_dir(tmp_path)
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    torch.save({"model": state, "step": 3}, directory / "pytorch_model.bin")
    refused(directory, r"pytorch_model.bin: entry 'model' is not a tensor \(OrderedDict\); expected a flat state dict")


# -- 4. wrong-typed config values ----------------------------------------------------------------------
# Wrong values per annotation of a ModelConfig field; every field but kind and budget (checked on their own).
WRONG = {"int": [2.0, "2", True, 0, None], "float": ["abc", True, float("nan"), float("inf"), 0.0, -1e-5],
         "bool": ["yes", 1, None], "tuple[float, float]": [(1.0,), (16.0, 1.0), ("a", "b"), (0.0, 1.0), 5]}
EXPECTED = {"int": "a positive integer", "float": r"a finite number > 0", "bool": "true or false",
            "tuple[float, float]": r"a pair \[low, high\] of finite numbers with 0 < low <= high"}


def model_field_cases():
    fields = [f for f in dataclasses.fields(ModelConfig) if f.name not in ("kind", "budget")]
    assert {f.type for f in fields} == set(WRONG)  # a new kind of field needs its wrong values here
    return [(f.name, f.type, value) for f in fields for value in WRONG[f.type]]


@pytest.mark.parametrize("name,annotation,value", model_field_cases())
def test_model_config_refuses_wrong_types(name, annotation, value):
    with pytest.raises(ConfigError, match=rf"^{name} must be {EXPECTED[annotation]}, got "):
        ModelConfig.tiny(**{name: value})


@pytest.mark.parametrize("field,value,match", [
    ("norm_eps", "abc", "norm_eps must be a finite number > 0, got 'abc'"),
    ("rmsnorm", "yes", "rmsnorm must be true or false, got 'yes'"),
    ("d_model", 32.0, "d_model must be a positive integer, got 32.0"),
    ("A_init_range", [1.0, 2.0, 3.0], r"A_init_range must be a pair \[low, high\]"),
    ("A_init_range", 5, r"A_init_range must be a pair \[low, high\] .*, got 5"),
    ("A_init_range", "ab", r"A_init_range must be a pair \[low, high\] .*, got 'ab'"),
])
def test_native_config_with_wrong_types(tmp_path, field, value, match):
    directory = native_dir(tmp_path)
    edit_config(directory, lambda c: c["model"].update({field: value}))
    refused(directory, rf"config.json 'model': {match}")


@pytest.mark.parametrize("change,match", [
    (lambda c: c.update(model=[1, 2]), r"config.json 'model' must be a JSON object of model settings, got \[1, 2\]"),
    (lambda c: c.update(format_version=True), "format_version must be 1, got True"),
    (lambda c: c.update(eos_token=2), "eos_token must be a string"),
])
def test_native_config_with_wrong_shapes(tmp_path, change, match):
    directory = native_dir(tmp_path)
    edit_config(directory, change)
    refused(directory, match)


WRONG_JSON = {int: ["7", 1.5, True, None], float: ["abc", True, None, float("inf")], bool: ["yes", 1, None],
              dict: [[], "x"], list: ["x", {}]}


def foreign_type_cases():
    """Every key each foreign format reads, with its section, the type it needs and a wrong value."""
    sections = {"reference": reference.TYPES, "mamba_ssm": {"": mamba_ssm.TYPES}, "transformers": {"": hf.TYPES}}
    mixer = {k: type(v) for k, v in formats.common.MAMBA2_DEFAULTS.items()}
    sections["reference"] = {**sections["reference"], "backbone_config.block_cfg.": mixer}
    sections["mamba_ssm"]["ssm_cfg."] = mixer
    return [(fmt, label, key, value) for fmt, by_label in sections.items() for label, types in by_label.items()
            for key, kind in types.items() for value in WRONG_JSON[kind]]


@pytest.mark.parametrize("fmt,label,key,value", foreign_type_cases())
def test_foreign_config_with_wrong_types(tmp_path, fmt, label, key, value):
    directory = MAKERS[fmt](tmp_path)

    def change(config):
        section = config
        for name in label.split(".")[:-1]:
            section = section.setdefault(name, {})
        section[key] = value

    edit_config(directory, change)
    refused(directory, rf"config.json: {label}{key} must be ")


@pytest.mark.parametrize("fmt,change,match", [
    ("transformers", lambda c: c.update(time_step_limit=[0.0, "abc"]), "time_step_limit must hold two numbers"),
    ("transformers", lambda c: c.update(time_step_limit=[0.0, {"__float__": "Infinity"}]), None),
    ("reference", lambda c: c.update(d_embed=None), None),  # the reference's default: d_embed = d_model
])
def test_foreign_config_values(tmp_path, fmt, change, match):
    directory = MAKERS[fmt](tmp_path)
    edit_config(directory, change)
    if match is None:
        assert load_checkpoint(directory).format == fmt
    else:
        refused(directory, match)


@pytest.mark.parametrize("key,cut,match", [
    ("backbone.injection.weight_g", lambda t: t[:5],
     r"'backbone.injection.weight_g' has shape \(5, 1\), expected 296 scales, one per row of "
     r"'backbone.injection.weight_v'"),
    ("backbone.injection.weight_v", lambda t: t[:, 0],
     r"'backbone.injection.weight_v' has shape \(296,\); weight norm needs a weight of at least 2 dimensions"),
])
def test_weight_norm_pair_of_the_wrong_shape(tmp_path, key, cut, match):
    directory = reference_dir(tmp_path)
    edit_weights(directory, lambda s: s.update({key: cut(s[key]).contiguous()}))
    refused(directory, match)


# -- 5. tokenizers with and without special tokens ------------------------------------------------------
def word_tokenizer(path: Path, specials=("<pad>", "<unk>", "<eos>"), words=("a", "b", "c")) -> Path:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {w: i for i, w in enumerate([*specials, *words])}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


def test_tokenizer_without_an_end_of_text_token_loads(tmp_path):
    path = word_tokenizer(tmp_path / "tokenizer.json", specials=("<pad>", "<unk>", "<s>"))
    tok = Tokenizer(path)
    assert tok.eos_token is None and tok.eos_token_id is None and tok.prefix_token_id is None
    assert tok.encode("a c") == [3, 5]
    directory = save(tiny_model("explicit"), tmp_path / "ckpt", tokenizer_path=path)
    assert load_checkpoint(directory).tokenizer.eos_token_id is None


def test_tokenizer_special_tokens_found_and_given(tmp_path):
    path = word_tokenizer(tmp_path / "tokenizer.json", specials=("<pad>", "<unk>", "<s>", "</s>"))
    assert Tokenizer(path).eos_token_id == 3  # a known end-of-text name
    tok = Tokenizer(path, eos_token="<pad>", prefix_token="<s>")
    assert (tok.eos_token_id, tok.prefix_token, tok.prefix_token_id) == (0, "<s>", 2)
    directory = save(tiny_model("explicit"), tmp_path / "ckpt", tokenizer_path=path)
    assert load_checkpoint(directory, prefix_token="<s>").tokenizer.prefix_token_id == 2


@pytest.mark.parametrize("kwargs,match", [
    ({"eos_token": "<eos>"}, "eos token '<eos>' is not in the vocabulary"),
    ({"prefix_token": "<bos>"}, "prefix token '<bos>' is not in the vocabulary"),
])
def test_tokenizer_refuses_a_named_token_it_lacks(tmp_path, kwargs, match):
    path = word_tokenizer(tmp_path / "tokenizer.json", specials=("<pad>", "<unk>"))
    with pytest.raises(TokenizerError, match=rf"tokenizer.json: {match}$"):
        Tokenizer(path, **kwargs)


@pytest.mark.parametrize("kwargs", [{"prefix_token": "<s>"}, {"eos_token": "<eos>"}])
def test_special_token_without_a_tokenizer_is_refused(tmp_path, kwargs):
    directory = save(tiny_model("explicit"), tmp_path / "ckpt")
    [(name, token)] = kwargs.items()
    with pytest.raises(TokenizerError, match=f"{name} '{token}' given but there is no tokenizer.json"):
        load_checkpoint(directory, **kwargs)


def test_eos_token_given_to_the_loader_overrides_the_checkpoints(tmp_path):
    path = word_tokenizer(tmp_path / "tokenizer.json", specials=("<pad>", "<unk>", "<eos>"))
    directory = save(tiny_model("explicit"), tmp_path / "ckpt", tokenizer_path=path, eos_token="<eos>")
    assert load_checkpoint(directory).tokenizer.eos_token_id == 2
    assert load_checkpoint(directory, eos_token="<pad>").tokenizer.eos_token_id == 0
    with pytest.raises(TokenizerError, match="eos token '</s>' is not in the vocabulary"):
        load_checkpoint(directory, eos_token="</s>")


@pytest.mark.parametrize("content,match", [
    ('{"eos_token": "</s>"}', r"eos token '</s>' \(named in tokenizer_config.json\) is not in the vocabulary"),
    ('{"eos_token": {"content": "<pad>"}}', None),
    ("{not json", "tokenizer_config.json: not valid JSON"),
])
def test_tokenizer_config_eos(tmp_path, content, match):
    path = word_tokenizer(tmp_path / "tokenizer.json", specials=("<pad>", "<unk>"))
    (tmp_path / "tokenizer_config.json").write_text(content)
    if match is None:
        assert Tokenizer(path).eos_token_id == 0
    else:
        with pytest.raises(TokenizerError, match=match):
            Tokenizer(path)


@pytest.mark.parametrize("eos_id,expected", [(2, ("c", 2)), (99, (None, None))])
def test_transformers_eos_token_id_names_a_token_of_the_vocabulary(tmp_path, eos_id, expected):
    directory = transformers_dir(tmp_path)
    edit_config(directory, lambda c: c.update(eos_token_id=eos_id))
    word_tokenizer(directory / "tokenizer.json", specials=(), words=("a", "b", "c"))
    tok = load_checkpoint(directory).tokenizer
    assert (tok.eos_token, tok.eos_token_id) == expected



def test_a_shard_symlinked_from_inside_the_folder_loads(tmp_path):
    """Hugging Face cache snapshots link their shards to ../../blobs: the entry is inside, so it is followed."""
    directory = native_dir(tmp_path)
    whole = load_checkpoint(directory)
    sharded(directory, "model.safetensors.index.json")
    point_outside(directory, "model.safetensors.index.json", "symlink")
    ckpt = load_checkpoint(directory)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[name], tensor), name
