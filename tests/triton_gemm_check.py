"""Checks of the few-rows matrix product (backends/triton_gemm.py) against torch's addmm in float32 (run by
model_adapters/test_triton_kernels.py): in-process on CUDA, in a subprocess with TRITON_INTERPRET=1 on the CPU."""

import itertools

import torch

from implicit_ssm_eval.model_adapters.testing import rel_err, run_kernel_check


def check(device: str) -> list[str]:
    """The cases that fail, with their error (empty: all pass): one row (decoding at batch 1) to 64, rows that are
    not a multiple of 16, column and inner sizes that are not multiples of the tiles (the 130M model's in_proj has
    3,352 columns), with and without the add, the add read from a slice of a wider tensor, every tile the kernel
    offers, float32 (IEEE, to 1e-6) and bfloat16 (one rounding of the float32 sum, so to bfloat16's ulp)."""
    from implicit_ssm_eval.model_adapters.backends import triton_gemm

    failures = []
    shapes = ((1, 96, 200), (16, 160, 419), (21, 64, 64), (64, 48, 33))
    for (rows, inner, cols), dtype, with_add in itertools.product(shapes, (torch.float32, torch.bfloat16),
                                                                  (False, True)):
        torch.manual_seed(rows * inner + cols)
        x = torch.randn(rows, inner, device=device).to(dtype)
        w = (torch.randn(cols, inner, device=device) / inner ** 0.5).to(dtype)
        add = torch.randn(rows, cols + 5, device=device).to(dtype)[:, 3: 3 + cols] if with_add else None
        ref = torch.addmm(add.float() if with_add else torch.zeros(rows, cols, device=device), x.float(),
                          w.float().t())
        for tile in (None, (16, 16, 32, 1, 1), (64, 64, 64, 4, 2)):
            if tile and tile[0] < rows:
                continue
            got = triton_gemm.skinny_linear(x, w, add, tile)
            tol = 1e-6 if dtype == torch.float32 else 4e-3
            if got.dtype != dtype or got.shape != ref.shape or rel_err(got.float(), ref) > tol:
                failures.append(f"{rows}x{inner}x{cols} {dtype} add={with_add} tile={tile}: "
                                f"{rel_err(got.float(), ref):.2e}")
    return failures + check_routed(device)


def check_routed(device: str) -> list[str]:
    """routed(model): the sequential reading of a tiny implicit model (float32) with its projections through the
    kernel reads as without, the kernel takes every one-token projection (two a layer and evaluation), and the
    model is as before once the block ends."""
    from implicit_ssm_eval.model_adapters.backends import triton_gemm
    from implicit_ssm_eval.model_adapters.config import Budget
    from implicit_ssm_eval.model_adapters.mamba2 import Mamba2
    from implicit_ssm_eval.model_adapters.testing import tiny_model

    model = tiny_model("implicit", contractive=True).to(device)
    ids = torch.randint(0, model.cfg.vocab_size, (3, 5), device=device)
    budget = Budget(max_iter=4, tol=0.0, mode="sequential")
    default, calls = Mamba2._project, []
    kernel = triton_gemm.skinny_linear
    triton_gemm.skinny_linear = lambda *args: calls.append(1) or kernel(*args)
    try:
        with torch.no_grad():
            plain = model(ids, budget).hidden
            with triton_gemm.routed(model):
                routed = model(ids, budget).hidden
            after = model(ids, budget).hidden
    finally:
        triton_gemm.skinny_linear = kernel
    failures = []
    expected = 2 * model.cfg.n_layer * budget.max_iter * ids.shape[1]
    if len(calls) != expected:
        failures.append(f"routed: the kernel took {len(calls)} projections, expected {expected}")
    if rel_err(routed, plain) > 1e-5:
        failures.append(f"routed: the reading moved by {rel_err(routed, plain):.2e}")
    mixers = [m for m in model.modules() if isinstance(m, Mamba2)]
    if Mamba2._project is not default or any("forward" in vars(m.out_proj) for m in mixers) or not torch.equal(
            after, plain):
        failures.append("routed: the model is not as before after the block")
    return failures


if __name__ == "__main__":
    run_kernel_check(check)
