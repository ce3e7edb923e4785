"""Is Triton's interpreter usable for mamba_ssm's bfloat16 kernels on CPU? Runs the chunk scan, the gated
RMSNorm and the fused add + RMSNorm on the same (bf16-rounded) inputs in bfloat16 and float32 and prints the
relative difference of each (about 1e-2 or less is bfloat16 rounding; far more means a wrong result).

    TRITON_INTERPRET=1 python bench/check_interpreter_bf16_scan.py     # needs mamba-ssm and triton
"""

from __future__ import annotations

import contextlib

import torch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> None:
    from triton.runtime import autotuner

    torch.cuda.device = lambda index: contextlib.nullcontext()  # the kernels enter a CUDA device context
    autotuner.Autotuner._bench = lambda self, *a, config, **kw: [0.0, 0.0, 0.0]
    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    torch.manual_seed(0)
    b, l, h, p, n = 1, 128, 8, 32, 32
    x, dt = torch.randn(b, l, h, p).bfloat16(), (torch.rand(b, l, h) * 0.1).bfloat16()
    B, C, A = torch.randn(b, l, 1, n).bfloat16(), torch.randn(b, l, 1, n).bfloat16(), -torch.rand(h)
    y16 = mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=64)
    y32 = mamba_chunk_scan_combined(x.float(), dt.float(), A, B.float(), C.float(), chunk_size=64)
    print(f"mamba_chunk_scan_combined  bf16 vs fp32: {rel(y16, y32):.3g}")
    u, w, z = torch.randn(4, 256).bfloat16(), torch.randn(256).bfloat16(), torch.randn(4, 256).bfloat16()
    g16 = rmsnorm_fn(u, w, None, z=z, group_size=256, norm_before_gate=False)
    g32 = rmsnorm_fn(u.float(), w.float(), None, z=z.float(), group_size=256, norm_before_gate=False)
    print(f"gated rmsnorm              bf16 vs fp32: {rel(g16, g32):.3g}")
    res = torch.randn(4, 256)
    o16 = rms_norm_fn(u, w, None, residual=res, prenorm=True, residual_in_fp32=True)[0]
    o32 = rms_norm_fn(u.float(), w.float(), None, residual=res, prenorm=True, residual_in_fp32=True)[0]
    print(f"add + rmsnorm              bf16 vs fp32: {rel(o16, o32):.3g}")


if __name__ == "__main__":
    main()
