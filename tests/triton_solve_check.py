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
    return failures + check_backoff(device)


def check_backoff(device: str) -> list[str]:
    """The per-row damping (the backoff solver): rows whose residual falls below their lowest so far, rows that do
    not, with their stall count short of the patience or reaching it (so the damping backs off), active and not."""
    from implicit_ssm_eval.model_adapters.backends.torch_ops import damped_update as twin
    from implicit_ssm_eval.model_adapters.backends.triton_solve import damped_update
    from implicit_ssm_eval.model_adapters.fixed_point import BACKOFF_PATIENCE, RowDamping

    failures = []
    for shape in ((12, 40), (12, 5, 24), (3, 3000)):
        torch.manual_seed(shape[-1])
        z, fz, valid, active, iterations, converged = inputs(device, shape, padded=len(shape) == 3)
        rows = shape[0]
        residual = torch.logspace(-3, 0, rows, device=device)  # about what inputs() gives each row
        low = torch.arange(rows, device=device) % 2 == 0  # these rows reach a new low, the others do not
        best = torch.where(low, residual * 4, residual / 4)
        stall = torch.where(torch.arange(rows, device=device) % 4 < 2, BACKOFF_PATIENCE - 1, 3).int()
        tau = torch.linspace(0.5, 1.0, rows, device=device)
        states = [RowDamping(tau.clone(), best.clone(), stall.clone()) for _ in range(2)]
        tensors = [[t.clone() for t in (z, active, iterations, converged)] for _ in range(2)]
        for fn, state, (zz, a, i, c) in zip((damped_update, twin), states, tensors):
            fn(zz, fz, valid, a, i, c, state, 0.05, 4)
        error = float((tensors[0][0] - tensors[1][0]).abs().max() / tensors[1][0].abs().max())
        same = [torch.equal(a, b) for a, b in zip(tensors[0][1:], tensors[1][1:])]
        same += [torch.equal(states[0].tau, states[1].tau), torch.equal(states[0].stall, states[1].stall),
                 torch.allclose(states[0].best, states[1].best, rtol=1e-5)]
        backed = int((states[1].tau < tau).sum())
        if error > 1e-6 or not all(same) or backed == 0:
            failures.append(f"backoff, shape {shape}: z error {error:.1e}, active/iterations/converged/tau/stall/best "
                            f"equal {same}, {backed} rows backed off")
    return failures


if __name__ == "__main__":
    run_kernel_check(check)
