"""Parameter counts of the three kinds from their sizes alone (nothing is built), and the choices that match a
transformer or a deeper explicit model to an implicit one.

Counts are of the saved model: a tied head counts once, and an implicit model's weight-norm magnitudes (training
only; folded on export) do not count. The comparison that matters is the non-embedding count: models of one task
share the vocabulary, and at the same width the same embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model_adapters.config import ModelConfig
from .transformer import PAD_VOCAB_MULTIPLE, check_arch, padded_vocab_size


@dataclass(frozen=True)
class Counts:
    total: int
    embedding: int  # the (padded) embedding table, shared with a tied head

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def mamba2_counts(cfg: ModelConfig) -> Counts:
    """An explicit or implicit Mamba2 LM (models.build_model) of this config."""
    d, inner, heads, proj = cfg.d_model, cfg.d_inner, cfg.nheads, cfg.d_in_proj
    mixer = (d * proj + cfg.bias * proj  # in_proj
             + cfg.conv_dim * cfg.d_conv + cfg.conv_bias * cfg.conv_dim  # depthwise conv1d
             + 2 * heads + (inner if cfg.D_has_hdim else heads)  # dt_bias, A_log, D
             + cfg.rmsnorm * inner  # gated RMSNorm
             + inner * d + cfg.bias * d)  # out_proj
    layers = cfg.n_layer * (d + mixer)  # each block's pre-norm and its mixer
    embedding = cfg.padded_vocab_size * d
    head = 0 if cfg.tie_embeddings else embedding
    injection = d + d * proj + proj if cfg.kind == "implicit" else 0  # RMSNorm_u, then W_u and b_u
    return Counts(embedding + layers + d + injection + head, embedding)  # + d: the final norm


def llama_counts(arch: dict, vocab_size: int) -> Counts:
    """The transformer of harness/transformer.py (tied, no biases, as many key/value heads as heads) over a
    vocabulary of vocab_size real tokens."""
    a = check_arch(arch)
    d, ffn = a["d_model"], a["intermediate_size"]
    layer = 4 * d * d + 3 * d * ffn + 2 * d  # q, k, v, o; gate, up, down; two RMSNorms
    embedding = padded_vocab_size(vocab_size) * d
    return Counts(embedding + a["n_layer"] * layer + d, embedding)


def counts_of(kind: str, arch: dict, vocab_size: int) -> Counts:
    """Counts of a TrainConfig's model: kind and (full) arch as TrainConfig records them."""
    if kind == "transformer":
        return llama_counts(arch, vocab_size)
    padding = PAD_VOCAB_MULTIPLE
    return mamba2_counts(ModelConfig(**arch, kind=kind, vocab_size=vocab_size, pad_vocab_size_multiple=padding))


def intermediate_size_for(non_embedding: int, d_model: int, n_layer: int, multiple: int = 16) -> int:
    """The SwiGLU width (a multiple of `multiple`) that brings a transformer of this width and depth closest to
    `non_embedding` parameters outside its embedding."""
    per_layer = (non_embedding - d_model) / n_layer - 4 * d_model * d_model - 2 * d_model
    return max(multiple, round(per_layer / (3 * d_model) / multiple) * multiple)


def explicit_layers_for(non_embedding: int, arch: dict) -> int:
    """The explicit Mamba2 depth (same width and mixer) whose non-embedding count is closest to `non_embedding`."""
    one = mamba2_counts(ModelConfig(**{**arch, "n_layer": 1}, kind="explicit", vocab_size=8)).non_embedding
    two = mamba2_counts(ModelConfig(**{**arch, "n_layer": 2}, kind="explicit", vocab_size=8)).non_embedding
    per_layer = two - one
    return max(1, round((non_embedding - (one - per_layer)) / per_layer))


def relative_gap(count: int, target: int) -> float:
    return count / target - 1
