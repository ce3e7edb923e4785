"""Checks of the chained iteration (backends/triton_chain.py) against the torch twin (run by
model_adapters/test_triton_kernels.py): in-process on CUDA, in a subprocess with TRITON_INTERPRET=1 on the CPU."""

import os

import torch

from implicit_ssm_eval.model_adapters.testing import rel_err, run_kernel_check


def check(device: str) -> list[str]:
    """The cases that fail, with their error (empty: all pass)."""
    return check_reading(device) + check_130m_evaluation(device)


def check_reading(device: str) -> list[str]:
    """chained(model): the sequential reading of a tiny implicit model (float32, two norm groups, odd widths) reads as
    the torch twin does, iterate() takes every iteration (max_iter - 1 a token) and no committing evaluation, and
    the model is as before once the block ends."""
    from implicit_ssm_eval.model_adapters.backends import triton_chain
    from implicit_ssm_eval.model_adapters.config import Budget
    from implicit_ssm_eval.model_adapters.testing import tiny_model

    model = tiny_model("implicit", contractive=True).to(device)
    ids = torch.randint(0, model.cfg.vocab_size, (3, 5), device=device)
    budget = Budget(max_iter=4, tol=0.0, mode="sequential")
    calls, kernel = [], triton_chain.iterate
    triton_chain.iterate = lambda *args: calls.append(1) or kernel(*args)
    try:
        with torch.no_grad():
            plain = model(ids, budget).hidden
            with triton_chain.chained(model):
                chained = model(ids, budget).hidden
            after = model(ids, budget).hidden
    finally:
        triton_chain.iterate = kernel
    failures = []
    expected = (budget.max_iter - 1) * ids.shape[1]
    if len(calls) != expected:
        failures.append(f"chained: iterate took {len(calls)} evaluations, expected {expected}")
    if rel_err(chained, plain) > 1e-5:
        failures.append(f"chained: the reading moved by {rel_err(chained, plain):.2e}")
    if "stack" in vars(model) or not torch.equal(after, plain):
        failures.append("chained: the model is not as before after the block")
    return failures


def check_130m_evaluation(device: str) -> list[str]:
    """One iteration of two layers of the 130M configuration's widths (d_model 768, 24 heads of 64 x 128, one norm
    group; in_proj 768 -> 3,352, so the column tiles do not divide it) against a frozen random state, 5 rows, beside
    the same kernels apart (apart()): float32 to 1e-6; bfloat16, where both round the same values in the same
    places and only sums are added in another order, to a twentieth of what bfloat16 itself costs (the float32
    evaluation against the bfloat16 one, 6e-3)."""
    from implicit_ssm_eval.model_adapters.backends import triton_chain
    from implicit_ssm_eval.model_adapters.testing import tiny_model

    failures, results = [], {}
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_model("implicit", d_model=768, n_layer=2, d_state=128, headdim=64, ngroups=1, expand=2,
                           contractive=True).to(device)
        torch.manual_seed(1)
        h, ids = torch.randn(5, 768, device=device), torch.randint(0, model.cfg.vocab_size, (5,), device=device)
        state = [type(s)(torch.randn_like(s.conv), torch.randn_like(s.ssm) * 0.3) for s in model.empty_state(5)]
        with torch.no_grad():
            wide = apart(model, h, model.inject(ids), state)
            model.to(dtype)
            state = [type(s)(s.conv.to(dtype), s.ssm) for s in state]
            u = model.inject(ids)
            results[dtype] = (rel_err(triton_chain.iterate(model, h, u, state), apart(model, h, u, state)),
                              rel_err(apart(model, h, u, state), wide))
    err32, _ = results[torch.float32]
    if err32 > 1e-6:
        failures.append(f"130M widths, float32: {err32:.2e} off the kernels apart")
    err16, cost = results[torch.bfloat16]
    if not err16 <= cost / 20:
        failures.append(f"130M widths, bfloat16: {err16:.2e} off the kernels apart, where bfloat16 costs {cost:.2e}")
    return failures


def apart(model, h, inject, state):
    """The iteration as the triton backend's kernels apart compute it (model.stack with its ops), from kernels that
    run on the CPU: our norms and read step, and the projections as cuBLAS rounds them (a float32 product rounded
    once to the model dtype)."""
    from implicit_ssm_eval.model_adapters.backends import triton_norm, triton_ssd

    dtype, out, residual = model.dtype, None, h.float()
    for layer, s in zip(model.blocks, state, strict=True):
        m = layer.mixer
        normed, residual = triton_norm.add_rmsnorm(out, residual, layer.norm.weight, layer.norm.eps, dtype)
        zxbcdt = rounded(torch.addmm(inject.float(), normed.float(), m.in_proj.weight.float().t()), dtype)
        z, xbc, dt = m._split(zxbcdt)
        d = m._derived()
        y = triton_ssd.conv_step_read(s.ssm, s.conv, xbc, m.conv1d.weight[:, 0], m.conv1d.bias, dt, d.dt_bias, d.A,
                                      d.D)
        gated = triton_norm.gated_rmsnorm(y.flatten(-2), z, m.norm.weight, model.cfg.mixer_norm_eps,
                                          model.cfg.d_inner // model.cfg.ngroups, dtype)
        out = rounded(gated.float() @ m.out_proj.weight.float().t(), dtype)
    return triton_norm.add_rmsnorm(out, residual, model.norm_f.weight, model.norm_f.eps, model.cd)[0]


def rounded(x, dtype):
    """x.to(dtype) as a kernel rounds it: Triton 3.6's interpreter (the CPU tests) rounds float32 to bfloat16 toward
    zero, compiled kernels to nearest."""
    if os.environ.get("TRITON_INTERPRET") == "1" and dtype == torch.bfloat16:
        return (x.float().view(torch.int32) & -65536).view(torch.float32).to(dtype)
    return x.to(dtype)


if __name__ == "__main__":
    run_kernel_check(check)
