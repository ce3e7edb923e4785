"""The transformer baseline of `implicit-eval train --kind transformer`: a transformers `LlamaForCausalLM` (rotary
positions, RMSNorm, SwiGLU, tied embeddings), saved as an ordinary Hugging Face directory that lm-eval's own
`--model hf` loads offline.

The directory reads a task's text with the same token ids our adapter feeds a Mamba2 checkpoint of the same family:
  * tokenizer.json is the family's tokenizer (less a post-processor, if it has one); tokenizer_config.json names
    its eos/pad/unk tokens, adds no special tokens (add_bos_token/add_eos_token false) and names no bos token, so
    lm-eval's `tok_encode` (which asks for special tokens) gets exactly the ids of our adapter's `encode` (which
    asks for none);
  * lm-eval's prefix for an empty context is the bos token if the tokenizer has one, else eos; our adapter's is
    eos unless told otherwise: with no bos both are eos;
  * max_position_embeddings is our adapter's default max_length (2048), which lm-eval reads as the model's
    max_length: both cut long inputs at the same place;
  * the vocabulary is padded to a multiple of 8 as our Mamba2 models' is, and both score log-softmax over it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..model_adapters.adapter.args import DEFAULT_MAX_LENGTH
from ..model_adapters.config import ConfigError, reject_unknown_keys
from ..model_adapters.tokenizer import EOS_CANDIDATES

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

# Sizes of the transformer, as `arch` keys (d_model: hidden size, n_layer: decoder layers, n_head: attention heads,
# each of size d_model / n_head; intermediate_size: the SwiGLU width).
TRANSFORMER_ARCH_DEFAULTS = dict(d_model=64, n_layer=2, n_head=4, intermediate_size=176)
PAD_VOCAB_MULTIPLE = 8  # every kind's embedding rows are padded to a multiple of this (as mamba_ssm pads)
NORM_EPS = 1e-5  # as the Mamba2 kinds' RMSNorms
TRAINING_FILE = "training.json"


def check_arch(arch: dict) -> dict:
    """The full transformer architecture (defaults filled in), or a ConfigError naming what is wrong. Imports
    nothing heavy: TrainConfig validates with it at construction."""
    reject_unknown_keys("arch (kind=transformer)", arch, list(TRANSFORMER_ARCH_DEFAULTS))
    full = {**TRANSFORMER_ARCH_DEFAULTS, **arch}
    for key, value in full.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"arch: {key} must be an integer >= 1, got {value!r}")
    d_model, n_head = full["d_model"], full["n_head"]
    if d_model % n_head or (d_model // n_head) % 2:
        raise ConfigError(f"arch: d_model={d_model} must be n_head={n_head} times an even head size (rotary "
                          "positions rotate pairs of channels)")
    return full


def padded_vocab_size(vocab_size: int) -> int:
    return -(-vocab_size // PAD_VOCAB_MULTIPLE) * PAD_VOCAB_MULTIPLE


def eos_token_of(tokenizer: Tokenizer) -> str | None:
    """The first of EOS_CANDIDATES in the vocabulary: the rule our adapter's Tokenizer applies when a checkpoint names
    no eos token, used for every kind's saved checkpoint."""
    vocab = tokenizer.get_vocab()
    return next((t for t in EOS_CANDIDATES if t in vocab), None)


def special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """eos (eos_token_of), pad ("<pad>", else eos) and unk ("<unk>", if present). A vocabulary without an eos token
    cannot be scored by lm-eval (empty contexts, rolling windows, generation)."""
    vocab = tokenizer.get_vocab()
    eos = eos_token_of(tokenizer)
    if eos is None:
        raise ConfigError(f"the task's tokenizer has no end-of-text token (one of {list(EOS_CANDIDATES)}), which "
                          "lm-eval needs (empty contexts, rolling windows, generation)")
    tokens = {"eos_token": eos, "pad_token": "<pad>" if "<pad>" in vocab else eos}
    if "<unk>" in vocab:
        tokens["unk_token"] = "<unk>"
    return tokens


def llama_config(arch: dict, tokenizer: Tokenizer) -> LlamaConfig:
    """The LlamaConfig of `arch` (see TRANSFORMER_ARCH_DEFAULTS) over the task's tokenizer."""
    from transformers import LlamaConfig

    full = check_arch(arch)
    specials = special_tokens(tokenizer)
    return LlamaConfig(
        vocab_size=padded_vocab_size(tokenizer.get_vocab_size()), hidden_size=full["d_model"],
        intermediate_size=full["intermediate_size"], num_hidden_layers=full["n_layer"],
        num_attention_heads=full["n_head"], num_key_value_heads=full["n_head"], hidden_act="silu",
        max_position_embeddings=DEFAULT_MAX_LENGTH, rms_norm_eps=NORM_EPS, tie_word_embeddings=True,
        attention_bias=False, mlp_bias=False, attention_dropout=0.0, initializer_range=0.02,
        eos_token_id=tokenizer.token_to_id(specials["eos_token"]),
        pad_token_id=tokenizer.token_to_id(specials["pad_token"]), bos_token_id=None)


def build_transformer(arch: dict, tokenizer: Tokenizer) -> LlamaForCausalLM:
    """A freshly initialised LlamaForCausalLM (transformers' own initialisation, from torch's global seed)."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(llama_config(arch, tokenizer))


def transformer_logits(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """ids (B, L), right padded -> logits (B, L, V). No attention mask: causal attention keeps padding (after the
    tokens) out of every real position, and SDPA takes its causal fast path. No cache: this is training."""
    return model(input_ids=ids, use_cache=False).logits


def is_transformer_dir(directory: Path) -> bool:
    """Whether `directory` holds a transformer saved by save_hf (scored by lm-eval's `hf` model, not our adapters)."""
    record = Path(directory) / TRAINING_FILE
    if not record.is_file():
        return False
    return json.loads(record.read_text()).get("config", {}).get("kind") == "transformer"


def resolve_model_dir(directory: Path) -> Path:
    """A saved transformer: the directory itself, or a run folder's `model/`."""
    for candidate in (directory, directory / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(f"{directory}: no Hugging Face model directory here (no config.json, nor model/config.json)")


def load_transformer_weights(model: LlamaForCausalLM, directory: Path) -> None:
    """Weights of a saved transformer of the same architecture (fine-tuning)."""
    from transformers import LlamaForCausalLM

    source = resolve_model_dir(directory)
    theirs = LlamaForCausalLM.from_pretrained(source)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "tie_word_embeddings")
    changed = sorted(k for k in keys if getattr(model.config, k) != getattr(theirs.config, k))
    if changed:
        raise ConfigError(f"init_from={directory}: its architecture differs in {changed}")
    model.load_state_dict(theirs.state_dict())


def save_hf(model: LlamaForCausalLM, tokenizer_path: Path, directory: Path, training: dict) -> Path:
    """Write the model as an ordinary Hugging Face directory, atomically (a temporary sibling renamed into place):
    config.json, model.safetensors (save_pretrained), the family's tokenizer.json, tokenizer_config.json and
    special_tokens_map.json (a PreTrainedTokenizerFast), and training.json (how it was trained)."""
    from tokenizers import Tokenizer

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model.save_pretrained(tmp)
        write_tokenizer_files(Tokenizer.from_file(str(tokenizer_path)), tokenizer_path, tmp)
        (tmp / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def write_tokenizer_files(tokenizer: Tokenizer, tokenizer_path: Path, directory: Path) -> None:
    """tokenizer.json, and the transformers files that make it a PreTrainedTokenizerFast adding no special tokens.
    Written by hand, not by save_pretrained, so the files do not depend on the transformers version (5.x names its
    own class, which 4.x cannot load). The tokenizer.json is the family's, less any post-processor: lm-eval's `hf`
    encodes with special tokens, our adapter without, and a post-processor is what would add them (a BOS template)."""
    if tokenizer.post_processor is None:
        shutil.copyfile(tokenizer_path, directory / "tokenizer.json")
    else:
        tokenizer.post_processor = None
        tokenizer.save(str(directory / "tokenizer.json"))
    specials = special_tokens(tokenizer)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "bos_token": None, "add_bos_token": False,
              "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": DEFAULT_MAX_LENGTH}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
