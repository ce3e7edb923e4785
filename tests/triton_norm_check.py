"""Checks of the row-blocked RMSNorm kernels (backends/triton_norm.py) against their torch twins (run by
model_adapters/test_triton_kernels.py): in-process on CUDA, in a subprocess with TRITON_INTERPRET=1 on the CPU."""

import itertools

import torch

from implicit_ssm_eval.model_adapters.testing import rel_err, run_kernel_check


def check(device: str) -> list[str]:
    """The cases that fail, with their error (empty: all pass): one row a program and several, row counts that are
    not a multiple of the kernel's rows per program, widths that are not a power of two, a gate read from a slice of
    a wider tensor (the in_proj output), several groups, no residual to add, bfloat16 inputs and outputs."""
    from implicit_ssm_eval.model_adapters.backends import torch_ops, triton_norm

    failures = []
    # 513 rows: four rows a program (triton_norm._tiles), the last program holding one
    for (batch, length), width, dtype in itertools.product(((3, 1), (5, 37), (19, 27)), (96, 128), (torch.float32,
                                                                                                   torch.bfloat16)):
        torch.manual_seed(batch * length + width)
        residual = torch.randn(batch, length, width, device=device)
        x = torch.randn(batch, length, width, device=device).to(dtype)
        w = (1 + 0.1 * torch.randn(width, device=device)).to(dtype)
        for add, out_dtype in itertools.product((None, x), (dtype, torch.float32)):
            got, res = triton_norm.add_rmsnorm(add, residual, w, 1e-5, out_dtype)
            ref, res_ref = torch_ops.add_rmsnorm(add, residual, w, 1e-5, out_dtype)
            tol = 1e-5 if out_dtype == torch.float32 else 1e-2
            if got.dtype != out_dtype or rel_err(got.float(), ref.float()) > tol or rel_err(res, res_ref) > 1e-6:
                failures.append(f"add_rmsnorm {batch}x{length}x{width} add={add is not None} {dtype}->{out_dtype}: "
                                f"{rel_err(got.float(), ref.float()):.2e}")
        for groups, out_dtype, injected in itertools.product((1, 2), (None, dtype), (False, True)):
            y = torch.randn(batch, length, width, device=device)
            wide = torch.randn(batch, length, width + 45, device=device).to(dtype)
            z = wide[..., 7: 7 + width]  # a strided slice, as the gate is of the projection's output
            added = {"z_added": wide[..., 40: 40 + width].flip(-1).contiguous()[..., :width]} if injected else {}
            got = triton_norm.gated_rmsnorm(y, z, w, 1e-5, width // groups, out_dtype, **added)
            ref = torch_ops.gated_rmsnorm(y, z, w, 1e-5, width // groups, out_dtype, **added)
            # z + z_added rounded to bfloat16: Triton's interpreter rounds toward zero where torch rounds to nearest
            tol = 1e-5 if got.dtype == torch.float32 and not (injected and dtype == torch.bfloat16) else 1e-2
            if got.dtype != (out_dtype or torch.float32) or rel_err(got.float(), ref.float()) > tol:
                failures.append(f"gated_rmsnorm {batch}x{length}x{width} groups={groups} {dtype}->{out_dtype} "
                                f"injected={injected}: {rel_err(got.float(), ref.float()):.2e}")
    return failures + check_wide_narrowing(device)


def check_wide_narrowing(device: str) -> list[str]:
    """Groups wider than WIDEST, which triton_ops hands these kernels when the norm writes bfloat16 (the 130M
    model's 1,536 channels ahead of out_proj): one program per row holds the whole group."""
    from implicit_ssm_eval.model_adapters.backends import torch_ops, triton_norm

    failures = []
    for rows, width, groups in ((16, 1536, 1), (5, 2048, 2), (3, 4096, 1)):
        torch.manual_seed(rows + width)
        assert triton_norm.takes_narrowing(width // groups) and not triton_norm.takes(width // groups)
        y = torch.randn(rows, width, device=device)
        z = torch.randn(rows, width + 45, device=device).to(torch.bfloat16)[:, 7: 7 + width]
        w = (1 + 0.1 * torch.randn(width, device=device)).to(torch.bfloat16)
        got = triton_norm.gated_rmsnorm(y, z, w, 1e-5, width // groups, torch.bfloat16)
        ref = torch_ops.gated_rmsnorm(y, z, w, 1e-5, width // groups, torch.float32)
        if got.dtype != torch.bfloat16 or rel_err(got.float(), ref) > 1e-2:
            failures.append(f"gated_rmsnorm {rows}x{width} groups={groups} -> bfloat16: "
                            f"{rel_err(got.float(), ref):.2e}")
    return failures


if __name__ == "__main__":
    run_kernel_check(check)
