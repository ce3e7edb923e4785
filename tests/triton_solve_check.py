"""Checks of the damped-update Triton kernel (backends/triton_solve.py) against its torch twin (run by
model_adapters/test_triton_kernels.py): in-process on CUDA, in a subprocess with TRITON_INTERPRET=1 on the CPU."""

import itertools

import torch

from implicit_ssm_eval.model_adapters.testing import run_kernel_check


def inputs(device: str, shape: tuple, padded: bool):
    """Rows whose residuals are spread far from tol = 0.05 (so both implementations decide alike), a mix of active
    and inactive rows, and counters on either side of the last update."""
    rows = shape[0]
    z = torch.randn(shape, device=device)
    scale = torch.logspace(-3, 0, rows, device=device).view(rows, *([1] * (len(shape) - 1)))  # residual ~ scale
    fz = z + scale * torch.randn(shape, device=device)
    valid = None
    if len(shape) == 3:
        valid = torch.ones(shape[:2], dtype=torch.bool, device=device)
        if padded:
            valid[1, shape[1] // 2:] = False  # a row that ended inside the block
            fz[1, shape[1] // 2:] += 100.0  # padding that would dominate its norm if it were counted
    active = torch.arange(rows, device=device) % 3 != 0
    iterations = torch.arange(rows, device=device) % 5
    converged = torch.arange(rows, device=device) % 4 == 0
    return z, fz, valid, active, iterations, converged


def check(device: str) -> list[str]:
    """The cases that fail, with what differs (empty: all pass)."""
    from implicit_ssm_eval.model_adapters.backends.torch_ops import damped_update as twin
    from implicit_ssm_eval.model_adapters.backends.triton_solve import damped_update

    failures = []
    for shape, padded in itertools.product(((12, 40), (12, 5, 24), (7, 64, 96), (3, 3000)), (False, True)):
        if padded and len(shape) == 2:
            continue
        torch.manual_seed(len(shape) * 10 + shape[-1])
        z, fz, valid, active, iterations, converged = inputs(device, shape, padded)
        ours = [t.clone() for t in (z, active, iterations, converged)]
        ref = [t.clone() for t in (z, active, iterations, converged)]
        damped_update(ours[0], fz, valid, ours[1], ours[2], ours[3], 0.8, 0.05, 4)
        twin(ref[0], fz, valid, ref[1], ref[2], ref[3], 0.8, 0.05, 4)
        error = float((ours[0] - ref[0]).abs().max() / ref[0].abs().max())
        same = [torch.equal(a, b) for a, b in zip(ours[1:], ref[1:])]
        if error > 1e-6 or not all(same):
            failures.append(f"shape {shape} padded={padded}: z error {error:.1e}, "
                            f"active/iterations/converged equal {same}")
    return failures


if __name__ == "__main__":
    run_kernel_check(check)
