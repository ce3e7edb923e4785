"""backend=triton (mamba_ssm's kernels) against the torch backend, on CUDA: outputs and states of the parallel
form, the step form, the mixer, both models and the implicit fixed point. float32 within 1e-3 relative (the
kernels use TF32 matrix units), bfloat16 within 1e-2."""

import pytest
import torch

from implicit_ssm_eval.model_adapters.backends import get_ops, resolve_backend, torch_ops
from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.testing import rel_err, tiny_model

pytestmark = pytest.mark.gpu
RTOL = {torch.float32: 1e-3, torch.bfloat16: 1e-2}


def close(a, b, dtype, what):
    err = rel_err(a.float(), b.float())
    assert err <= RTOL[dtype], f"{what}: relative error {err:.2e} > {RTOL[dtype]:.0e}"


@pytest.fixture(scope="module")
def triton_ops():
    return get_ops(resolve_backend("triton", "cuda"))


def ssd_inputs(batch, length, nheads, headdim, ngroups, dstate, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, device="cuda").to(dtype)

    dt = torch.rand(batch, length, nheads, generator=g, device="cuda") * 0.2
    A = -torch.rand(nheads, generator=g, device="cuda") - 0.5
    return (r(batch, length, nheads, headdim), dt, A, r(batch, length, ngroups, dstate),
            r(batch, length, ngroups, dstate), torch.rand(nheads, device="cuda"),
            torch.randn(batch, nheads, headdim, dstate, generator=g, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, 7, 63, 257, 1000])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_chunk_scan(triton_ops, dtype, length, ngroups):
    x, dt, A, B, C, D, s0 = ssd_inputs(2, length, 4, 32, ngroups, 16, dtype)
    y, final = triton_ops.chunk_scan(x, dt, A, B, C, 64, D, s0)
    y_ref, final_ref = torch_ops.chunk_scan(x, dt, A, B, C, 64, D, s0)
    close(y, y_ref, dtype, "outputs")
    close(final, final_ref, dtype, "final state")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_step_does_not_mutate(triton_ops, dtype):
    x, dt, A, B, C, D, s0 = ssd_inputs(3, 1, 4, 32, 2, 16, dtype)
    before = s0.clone()
    y, s1 = triton_ops.state_step(s0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
    y_ref, s1_ref = torch_ops.state_step(s0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
    assert torch.equal(s0, before)
    close(y, y_ref, dtype, "outputs")
    close(s1, s1_ref, dtype, "new state")


def test_gated_rmsnorm(triton_ops):
    x, z, w = torch.randn(4, 9, 64, device="cuda"), torch.randn(4, 9, 64, device="cuda"), torch.rand(64, device="cuda")
    close(triton_ops.gated_rmsnorm(x, z, w, 1e-5, 32), torch_ops.gated_rmsnorm(x, z, w, 1e-5, 32), torch.float32,
          "gated norm")


def pair(kind, dtype, **kw):
    ref = tiny_model(kind, contractive=kind == "implicit", dtype=dtype, **kw).cuda()
    fast = tiny_model(kind, contractive=kind == "implicit", dtype=dtype, **kw).cuda()
    fast.use_backend("triton")
    return ref, fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_explicit_model_forward_and_step(dtype):
    ref, fast = pair("explicit", dtype, chunk_size=32)
    ids = torch.randint(0, 37, (3, 100), device="cuda")
    with torch.no_grad():
        a, b = fast(ids), ref(ids)
        close(a.hidden, b.hidden, dtype, "hidden")
        for sa, sb in zip(a.state, b.state):
            close(sa.ssm, sb.ssm, dtype, "ssm state")
        sa, sb = fast.step(ids[:, 0], a.state), ref.step(ids[:, 0], b.state)
        close(sa.hidden, sb.hidden, dtype, "step hidden")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["simultaneous", "sequential"])
def test_implicit_fixed_point_at_fixed_k(dtype, mode):
    ref, fast = pair("implicit", dtype, chunk_size=32)
    ids = torch.randint(0, 37, (2, 45), device="cuda")
    budget = Budget(max_iter=12, tol=0.0, mode=mode)
    with torch.no_grad():
        close(fast(ids, budget).hidden, ref(ids, budget).hidden, dtype, f"{mode} hidden")


def test_auto_resolves_to_triton_on_cuda():
    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("auto", "cpu") == "torch"


def test_training_step_runs_with_bf16_autocast(tmp_path):
    from implicit_ssm_eval.harness.train import TrainConfig, Trainer
    from implicit_ssm_eval.tasks.state_tracking import training_batches

    cfg = TrainConfig(task="parity", kind="implicit", device="cuda", steps=5, batch_size=16, d_model=32, d_state=8,
                      headdim=8, train_max_iter=6, grad_steps=2)
    trainer = Trainer(cfg, tmp_path)
    batches = training_batches("parity", min_len=1, max_len=8, batch_size=16, seed=0)
    rows = [trainer.train_step(next(batches)) for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
