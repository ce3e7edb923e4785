"""Checks of the fused f evaluation (backends/triton_fused.py) against the model's own f, f_step and the torch damped
update (run by model_adapters/test_triton_kernels.py): in-process on CUDA, under TRITON_INTERPRET=1 on the CPU.

Cases: a step and blocks of 5 (padded rows), 16 and 32 tokens; two layers with two groups; one layer with D per
channel, no gated norm and no conv bias; frozen states in and committed states out (a row whose piece is shorter than
the conv window reaches back into the old conv state); the damped update of active and inactive rows."""

import torch

from implicit_ssm_eval.model_adapters.mamba2 import MixerState
from implicit_ssm_eval.model_adapters.testing import rel_err, run_kernel_check, tiny_model

CASES = [  # (name, model overrides, rows, tokens (0: a step), padded, dtype)
    ("two layers, two groups, a step", {}, 5, 0, False, torch.float32),
    ("two layers, two groups, block of 5", {}, 4, 5, True, torch.float32),
    ("one layer, D per channel, no gate norm, no conv bias", dict(n_layer=1, ngroups=1, D_has_hdim=True,
                                                                   rmsnorm=False, conv_bias=False), 3, 16, True,
     torch.float32),
    ("a5-like widths, block of 32", dict(n_layer=1, ngroups=1, d_model=64, headdim=16, d_state=16), 3, 32, False,
     torch.float32),
    ("bfloat16, block of 16", dict(n_layer=1), 3, 16, True, torch.bfloat16),
]


def _inputs(model, rows: int, tokens: int, padded: bool, device: str):
    cfg = model.cfg
    shape = (rows, cfg.d_model) if tokens == 0 else (rows, tokens, cfg.d_model)
    z = torch.randn(shape, device=device)
    ids = torch.randint(0, cfg.vocab_size, shape[:-1], device=device)
    u = model.inject(ids)
    state = [MixerState(torch.randn(rows, cfg.conv_dim, cfg.d_conv - 1, device=device).to(model.dtype),
                        0.3 * torch.randn(rows, cfg.nheads, cfg.headdim, cfg.d_state, device=device))
             for _ in range(cfg.n_layer)]
    valid = None
    if tokens:
        valid = torch.ones(rows, tokens, dtype=torch.bool, device=device)
        if padded:
            valid[1, 2:] = False  # a row ending inside the piece, before the conv window fills
            valid[2, tokens - 1:] = False
    return z, u, state, valid


def _reference(model, z, u, state, valid, commit):
    if z.dim() == 2:
        return model.f_step(z, u, state, commit)
    return model.f(z, u, state, valid, commit)


def _compare(name: str, ours, ref, rtol: float, valid) -> list[str]:
    fz, states = ours
    ref_fz, ref_states = ref
    if valid is not None:  # padding positions of f(z) are not read by anyone
        fz, ref_fz = fz * valid[..., None], ref_fz * valid[..., None]
    problems = []
    if rel_err(fz, ref_fz) > rtol:
        problems.append(f"{name}: f(z) relative error {rel_err(fz, ref_fz):.1e}")
    for i, (a, b) in enumerate(zip(states or (), ref_states or ())):
        for what, x, y in (("conv", a.conv, b.conv), ("ssm", a.ssm, b.ssm)):
            if x.dtype != y.dtype or rel_err(x, y) > rtol:
                problems.append(f"{name}: layer {i} {what} state {x.dtype}/{y.dtype} error {rel_err(x, y):.1e}")
    if (states is None) != (ref_states is None):
        problems.append(f"{name}: states {states is None} vs {ref_states is None}")
    return problems


def check(device: str) -> list[str]:
    from implicit_ssm_eval.model_adapters.backends.torch_ops import damped_update as twin
    from implicit_ssm_eval.model_adapters.backends.triton_fused import evaluate, takes

    failures = []
    for case, (name, overrides, rows, tokens, padded, dtype) in enumerate(CASES):
        torch.manual_seed(case)
        model = tiny_model("implicit", seed=case, contractive=True, **overrides).to(device=device, dtype=dtype)
        if not takes(model.cfg, max(tokens, 1), dtype):
            failures.append(f"{name}: not taken")
            continue
        rtol = 1e-5 if dtype == torch.float32 else 2e-2
        z, u, state, valid = _inputs(model, rows, tokens, padded, device)
        with torch.no_grad():
            for commit in (False, True):
                ours = evaluate(model, z, u, state, valid, commit)
                failures += _compare(f"{name}, commit={commit}", ours, _reference(model, z, u, state, valid, commit),
                                     rtol, valid)
            # One damped update: z moves where active, the counters follow the residual. The rows' residuals are
            # spread far from tol (about 1e-3, 3e-2, 1, ...) so that rounding decides no row's fate.
            fz, _ = _reference(model, z, u, state, valid, False)
            scale = torch.logspace(-3, 0, rows, device=device).view(rows, *[1] * (z.dim() - 1))
            z = fz + scale * fz.norm() / fz[0].numel() ** 0.5 * torch.randn_like(fz) / len(fz) ** 0.5
            tol = _tol_between_rows(model, z, u, state, valid)
            active = torch.arange(rows, device=device) % 3 != 2
            iterations = torch.arange(rows, device=device) % 2
            converged = torch.zeros(rows, dtype=torch.bool, device=device)
            mine = [t.clone() for t in (z, active, iterations, converged)]
            ref = [t.clone() for t in (z, active, iterations, converged)]
            evaluate(model, mine[0], u, state, valid, False, update=(*mine[1:], 0.8, tol, 4))
            fz, _ = _reference(model, z, u, state, valid, False)
            twin(ref[0], fz, valid, *ref[1:], 0.8, tol, 4)
            if rel_err(mine[0], ref[0]) > rtol or not all(torch.equal(a, b) for a, b in zip(mine[1:], ref[1:])):
                failures.append(f"{name}: update z error {rel_err(mine[0], ref[0]):.1e}, counters "
                                f"{[t.tolist() for t in mine[1:]]} vs {[t.tolist() for t in ref[1:]]}")
            if ref[3].all() or not ref[3][active].any():
                failures.append(f"{name}: the update case does not split the rows ({ref[3].tolist()})")
    return failures + _check_piece_solves(device)


def _check_piece_solves(device: str) -> list[str]:
    """The readings through graphs.PieceSolve with the fused evaluation (an ops module whose fused_f returns it)
    against the same readings through the chain of torch ops: hidden states, iterations and convergence."""
    import types

    from implicit_ssm_eval.model_adapters.backends import torch_ops, triton_fused
    from implicit_ssm_eval.model_adapters.config import Budget
    from implicit_ssm_eval.model_adapters.reading import read

    model = tiny_model("implicit", seed=7, contractive=True, n_layer=1, ngroups=1, headdim=16).to(device)
    model.use_graphs("masked")
    ids = torch.randint(0, model.cfg.vocab_size, (3, 6), device=device)
    lengths = torch.tensor([6, 2, 5], device=device)
    base = Budget(max_iter=6, tol=0.05, tau=0.8)
    fused_ops = types.SimpleNamespace(**{k: getattr(torch_ops, k) for k in dir(torch_ops) if not k.startswith("_")})
    fused_ops.fused_f = lambda m, tokens: triton_fused.evaluate
    failures = []
    for budget in (base.replace(mode="sequential"), base.replace(mode="blockwise", block_size=4)):
        with torch.no_grad():
            u = model.inject(ids)
            model.ops = torch_ops
            model.use_graphs("masked")
            ref = read(model, u, budget, lengths)
            model.ops = fused_ops
            model.use_graphs("masked")  # new piece solves, made with the fused evaluation
            ours = read(model, u, budget, lengths)
        mask = (torch.arange(6, device=device)[None, :] < lengths[:, None])[..., None]
        name = f"piece solves, {budget.mode} {budget.block_size or ''}"
        if rel_err(ours.hidden * mask, ref.hidden * mask) > 1e-5:
            failures.append(f"{name}: hidden error {rel_err(ours.hidden * mask, ref.hidden * mask):.1e}")
        if not torch.equal(ours.stats.iterations, ref.stats.iterations):
            failures.append(f"{name}: iterations {ours.stats.iterations.tolist()} vs {ref.stats.iterations.tolist()}")
        for a, b in zip(ours.state, ref.state):
            if rel_err(a.ssm, b.ssm) > 1e-5 or rel_err(a.conv, b.conv) > 1e-5:
                failures.append(f"{name}: final states differ")
    model.ops = torch_ops
    return failures


def _tol_between_rows(model, z, u, state, valid) -> float:
    """A tol in the widest (log) gap between the rows' residuals: rounding cannot move a row across it."""
    from implicit_ssm_eval.model_adapters.fixed_point import relative_residual

    fz, _ = _reference(model, z, u, state, valid, False)
    r = relative_residual(fz, z, valid).double().sort().values
    gap = int((r[1:] / r[:-1]).argmax())
    return float((r[gap] * r[gap + 1]).sqrt())


if __name__ == "__main__":
    run_kernel_check(check)
