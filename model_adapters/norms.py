"""RMSNorm and the gated, grouped RMSNorm of Mamba2, computed in float32 whatever the input dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tensors import compute_dtype


def rmsnorm_ref(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / rms(x) * weight over the last dim, in float32 (float64 stays float64)."""
    cd = compute_dtype(x)
    x = x.to(cd)
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight.to(cd)


def gated_rmsnorm_ref(x: Tensor, z: Tensor, weight: Tensor, eps: float, group_size: int) -> Tensor:
    """RMSNorm(x * SiLU(z)) per group of `group_size` channels (mamba_ssm's norm_before_gate=False)."""
    cd = compute_dtype(x)
    y = x.to(cd) * F.silu(z.to(cd))
    groups = y.unflatten(-1, (-1, group_size))
    groups = groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + eps)
    return groups.flatten(-2) * weight.to(cd)


def add_rmsnorm_ref(x: Tensor | None, residual: Tensor, weight: Tensor, eps: float,
                    out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The residual add of one block fused with the norm of the next: residual <- residual + x (x None: nothing to
    add), returns (RMSNorm(residual) in out_dtype, residual). The residual keeps its own dtype (float32)."""
    residual = residual if x is None else residual + x.to(residual.dtype)
    return rmsnorm_ref(residual, weight, eps).to(out_dtype), residual


class RMSNorm(nn.Module):
    """Returns float32 (or float64); callers cast to the compute dtype they need."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        return rmsnorm_ref(x, self.weight, self.eps)
