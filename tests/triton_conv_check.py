"""Checks of the Triton causal conv + SiLU kernel against its torch twin (run by model_adapters/test_triton_kernels.py):
in-process on CUDA, in a subprocess with TRITON_INTERPRET=1 on the CPU (the interpreter must be chosen before triton
is first imported)."""

import itertools

import torch

from implicit_ssm_eval.model_adapters.testing import rel_err, run_kernel_check


def check(device: str) -> list[str]:
    """The cases that fail, with their error (empty: all pass). Strided inputs (a slice of the projection's output),
    with and without the previous state and the bias, odd channel counts, one-token steps."""
    from implicit_ssm_eval.model_adapters.backends import torch_ops, triton_conv

    failures = []
    for length, (with_state, with_bias), dtype in itertools.product(
            (1, 3, 70), ((False, True), (True, True), (True, False)), (torch.float32, torch.bfloat16)):
        torch.manual_seed(length)
        channels = 150  # not a multiple of the kernel's block
        wide = torch.randn(2, length, channels + 37, device=device).to(dtype)
        x = wide[..., 5: 5 + channels]
        state = torch.randn(2, channels, 3, device=device).to(dtype) if with_state else None
        weight, bias = torch.randn(channels, 4, device=device).to(dtype), torch.randn(channels, device=device).to(dtype)
        out = triton_conv.causal_conv_silu(x, state, weight, bias if with_bias else None)
        ref = torch_ops.causal_conv_silu(x.float(), None if state is None else state.float(), weight.float(),
                                         bias.float() if with_bias else None)
        err = rel_err(out.float(), ref)
        ok = out.shape == (2, length, channels) and out.is_contiguous() and out.dtype == dtype and \
            err <= (1e-5 if dtype == torch.float32 else 1e-2)
        if not ok:
            failures.append(f"L={length} state={with_state} bias={with_bias} {dtype}: error {err:.2e}")
    return failures


if __name__ == "__main__":
    run_kernel_check(check)
