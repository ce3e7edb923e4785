"""Rules every layer shares, written once: the compute dtype, the valid-token mask, and per-row gathering.

- Compute dtype: scans, convolutions, norms, the residual stream and the fixed-point iterate run in float32
  whatever the parameter dtype (float64 stays float64, for the equivalence tests).
- Valid mask: a right-padded batch of sequences with `lengths` (B,) marks its real tokens with a (B, L) mask.
- Rows: the solver and the readings hand work over to a subset of batch rows; `take_rows` / `put_rows` do it for
  a tensor or any nesting of tuples, lists, dicts and NamedTuples of tensors (batch first).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor


def compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def valid_mask(lengths: Tensor | None, length: int) -> Tensor | None:
    """(B, length) bool, True at the real tokens of a right-padded batch; None when there is no padding info."""
    if lengths is None:
        return None
    return torch.arange(length, device=lengths.device) < lengths[:, None]


def broadcast_mask(valid: Tensor, like: Tensor) -> Tensor:
    """A (B, L) mask broadcast to the shape of `like` (B, L, ...)."""
    return valid.reshape(*valid.shape, *([1] * (like.dim() - valid.dim()))).expand(like.shape)


def map_tensors(tree: Any, fn) -> Any:
    """`tree` with fn applied to every tensor in it (tuples, NamedTuples, lists, dicts, dataclasses); any other leaf
    is kept as it is."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # NamedTuple
        return type(tree)(*(map_tensors(t, fn) for t in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tensors(t, fn) for t in tree)
    if isinstance(tree, dict):
        return {k: map_tensors(v, fn) for k, v in tree.items()}
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return dataclasses.replace(tree, **{f.name: map_tensors(getattr(tree, f.name), fn)
                                            for f in dataclasses.fields(tree)})
    return tree


def take_rows(tree: Any, rows: Tensor | None) -> Any:
    """The batch rows `rows` of every tensor in `tree`; rows None means all rows (no copy). A non-tensor leaf is
    shared by every row."""
    return tree if rows is None else map_tensors(tree, lambda t: t[rows])


def put_rows(tree: Any, rows: Tensor | None, new: Any) -> Any:
    """`tree` with its batch rows `rows` replaced by `new` (out of place); rows None replaces everything."""
    if rows is None:
        return new
    if isinstance(tree, Tensor):
        return tree.index_copy(0, rows, new.to(tree.dtype))
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(put_rows(t, rows, n) for t, n in zip(tree, new)))
    if isinstance(tree, (list, tuple)):
        return type(tree)(put_rows(t, rows, n) for t, n in zip(tree, new))
    if isinstance(tree, dict):
        return {k: put_rows(v, rows, new[k]) for k, v in tree.items()}
    return tree

