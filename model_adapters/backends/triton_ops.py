"""The Triton backend: mamba_ssm's kernels behind the signatures of torch_ops (the reference twin).

Imported only when backend=triton is resolved, so mamba_ssm and triton stay optional. Every function
returns what its torch_ops twin returns (tests/model_adapters/test_triton_backend.py checks it on the GPU).

float32 means float32: unless the user chose otherwise (TRITON_F32_DEFAULT=tf32), Triton's float32 matrix
products run in IEEE precision, not TF32 (which is ~1e-3 relative off). Our one-chunk scan takes tf32x3, three
TF32 products that keep float32's precision on the tensor cores (triton_ssd.PRECISION). Use bfloat16 for speed.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # read when a kernel is compiled, so before any is
# Autotuned kernels time their configurations in each new process and take the fastest, and timings are noisy: two
# processes can choose different tiles, which sum in another order and disagree in the last bits (measured on an
# H200: bench/cross_process.py). Cached on disk, the first choice made on a machine is every later process's
# choice. Read when a kernel is decorated, so before mamba_ssm's modules and ours are imported. Processes that start
# together (sweep workers) take turns to tune each kernel, so the first one's choice is theirs too (triton_tuning).
os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")

from . import triton_tuning  # noqa: E402

triton_tuning.install()

import torch  # noqa: E402
from mamba_ssm.ops.triton.layer_norm import _layer_norm_fwd  # noqa: E402
from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn  # noqa: E402
from mamba_ssm.ops.triton.selective_state_update import selective_state_update  # noqa: E402
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: E402
from torch import Tensor  # noqa: E402

from ..ssd import discretise  # noqa: E402
from . import torch_ops, triton_conv, triton_norm, triton_ssd  # noqa: E402
from .triton_solve import damped_update  # noqa: E402, F401 - the backend's op

NAME = "triton"


def chunk_scan(x: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
               D: Tensor | None, initial_state: Tensor | None, final_state: bool = True,
               valid: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """x (B, L, H, P), dt (B, L, H) raw (softplus(dt + dt_bias), zero where valid (B, L) is False), B/C (B, L, G, N)
    -> y (B, L, H, P), final state (B, H, P, N) (None unless final_state). A sequence of at most
    triton_ssd.MAX_LENGTH tokens (a block of the blockwise reading, a short input) is one launch of the one-chunk
    kernel, which discretises dt itself (three elementwise passes fewer per evaluation); longer ones take
    mamba_ssm's chunked kernels."""
    if x.shape[1] <= triton_ssd.MAX_LENGTH:
        return triton_ssd.ssd_one_chunk(x, dt, A, B, C, D, initial_state, final_state, dt_bias=dt_bias, valid=valid)
    # No copies here: the kernels take any layout whose last dimension is contiguous (they copy otherwise). A
    # bfloat16 state (Mamba2.state_dtype) enters in float32, as the one-chunk kernel reads it.
    out = mamba_chunk_scan_combined(
        x, discretise(dt, dt_bias, valid), A, B, C, chunk_size, D=D,
        initial_states=None if initial_state is None else _wide(initial_state).contiguous(), dt_softplus=False,
        return_final_states=final_state)
    return out if final_state else (out, None)


# Whether a short sequence's conv runs inside the one-chunk scan's kernel (conv_scan below: one launch, the conv's
# output never written) or as triton_conv's kernel ahead of the scan. Off by default until a GPU run says where it
# gains (BENCHMARKS.md): its one run, with an earlier form of the kernel that spilled kilobytes of registers a thread,
# read the text model's large blocks several times slower. bench/readings.py and lm_readings.py --block-kernels,
# kernels.py conv_scan and device_limits.sh fused set it for a while.
FUSED_CONV_SCAN = False
# Whether such a sequence's injection is added by the kernels that read the projection's output (the conv + scan and
# the gated norm) instead of by the projection (addmm, which copies the injection into its output first). Off with
# FUSED_CONV_SCAN, which it needs.
INJECT_IN_KERNELS = False


def injects_in_kernels(length: int) -> bool:
    """Whether a mixer's parallel form of `length` tokens hands its injection to conv_scan and gated_rmsnorm: where
    conv_scan is one kernel."""
    return INJECT_IN_KERNELS and _conv_in_scan(length)


def _conv_in_scan(length: int) -> bool:
    return FUSED_CONV_SCAN and length <= triton_ssd.MAX_LENGTH


def conv_scan(xbc: Tensor, conv: Tensor | None, weight: Tensor, bias: Tensor | None, dt: Tensor, dt_bias: Tensor,
              A: Tensor, D: Tensor | None, headdim: int, dstate: int, chunk_size: int, initial_state: Tensor | None,
              final_state: bool = True, valid: Tensor | None = None, added: tuple[Tensor, Tensor] | None = None
              ) -> tuple[Tensor, Tensor | None]:
    """torch_ops.conv_scan is the definition. With FUSED_CONV_SCAN a sequence of at most triton_ssd.MAX_LENGTH tokens
    (a block of the blockwise reading, a short input) is one launch: the conv inside the one-chunk kernel, `added`
    summed there too; otherwise the conv kernel, then chunk_scan."""
    if not _conv_in_scan(xbc.shape[1]):
        return torch_ops.conv_then_scan(sys.modules[__name__], xbc, conv, weight, bias, dt, dt_bias, A, D, headdim,
                                        dstate, chunk_size, initial_state, final_state, valid, added)
    return triton_ssd.conv_ssd_one_chunk(xbc, conv, weight, bias, dt, A, D, headdim, dstate, initial_state,
                                         final_state, dt_bias=dt_bias, valid=valid, added=added)


def _wide(state: Tensor) -> Tensor:
    return state.float() if state.dtype == torch.bfloat16 else state


def state_step(state: Tensor, x: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, B: Tensor, C: Tensor,
               D: Tensor | None, in_place: bool = False, want_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """x (B, H, P), dt (B, H), B/C (B, G, N), state (B, H, P, N) -> y, new state (None when it is not wanted); `state`
    is not mutated (mamba_ssm's kernel updates in place, so it works on a copy: the implicit model re-evaluates
    frozen states), unless in_place: decoding an explicit model owns its state and saves the copy. An iteration that
    commits nothing (want_state False) takes our read-only kernel: it reads the state once and writes none."""
    if not want_state and not in_place:
        return triton_ssd.ssd_step_read(state, x, dt, dt_bias, A, B, C, D), None
    nheads, headdim, dstate = state.shape[1:]
    new_state = state if in_place else state.clone()
    # Stride-0 expansions over headdim let the kernel take its per-head ("tied") fast path.
    A_full = A[:, None, None].expand(nheads, headdim, dstate)
    dt_full = dt[..., None].expand(-1, -1, headdim)
    bias_full = dt_bias[:, None].expand(nheads, headdim)  # the kernel discretises: softplus(dt + dt_bias)
    D_full = None if D is None else (D[:, None].expand(nheads, headdim) if D.dim() == 1 else D)
    y = selective_state_update(new_state, x, dt_full, A_full, B, C, D=D_full, dt_bias=bias_full, dt_softplus=True)
    return y, new_state


# Whether a step's conv, state read or update and window shift run as our fused kernels (conv_step_read, conv_step
# below) or as the conv, the step kernel and torch's window ops apart. bench/gpu_bench.py times both in one process:
# on an H100 (2026-12-07, bfloat16, 130M configuration) the sequential reading at k = 4 read 5,881 tokens/s fused
# against 5,428 apart (1.08x), greedy decoding at batch 16 17,920 against 17,300; tests/triton_ssd_check.py holds
# them bitwise to the kernels they replace, on CUDA and under Triton's interpreter (BENCHMARKS.md, "Fewer launches
# a step"). False restores the kernels apart.
FUSED_STEPS = True


def conv_step_read(state: Tensor, conv: Tensor, xbc: Tensor, weight: Tensor, bias: Tensor | None, dt: Tensor,
                   dt_bias: Tensor, A: Tensor, D: Tensor | None) -> Tensor:
    """The conv and the read-only step of one token in one launch (torch_ops.conv_step_read is the definition)."""
    if not FUSED_STEPS:
        return torch_ops.conv_then_read(sys.modules[__name__], state, conv, xbc, weight, bias, dt, dt_bias, A, D)
    return triton_ssd.conv_step_read(state, conv, xbc, weight, bias, dt, dt_bias, A, D)


def conv_step(state: Tensor, conv: Tensor, xbc: Tensor, weight: Tensor, bias: Tensor | None, dt: Tensor,
              dt_bias: Tensor, A: Tensor, D: Tensor | None, valid: Tensor | None, in_place: bool
              ) -> tuple[Tensor, Tensor, Tensor]:
    """A committing step (torch_ops.conv_step is the definition): in place, two launches (triton_ssd.conv_step_commit)
    where the conv, the state update, the window's concatenation and its masking took four or five; otherwise those
    (mamba_ssm's state update in place, or on a copy when not in_place)."""
    if not (in_place and FUSED_STEPS and triton_ssd.commits_in_place(state, conv)):
        return torch_ops.conv_then_step(sys.modules[__name__], state, conv, xbc, weight, bias, dt, dt_bias, A, D,
                                        valid, in_place)
    return triton_ssd.conv_step_commit(state, conv, xbc, weight, bias, dt, dt_bias, A, D, valid), conv, state


def causal_conv_silu(x: Tensor, state: Tensor | None, weight: Tensor, bias: Tensor | None) -> Tensor:
    return triton_conv.causal_conv_silu(x, state, weight, bias)


def gated_rmsnorm(x: Tensor, z: Tensor, weight: Tensor, eps: float, group_size: int,
                  out_dtype: torch.dtype | None = None, z_added: Tensor | None = None) -> Tensor:
    """Our row-blocked kernel for narrow groups (the bundled models'), and for any group written narrower than its
    float32 input (the 130M model's bfloat16 norm ahead of out_proj): mamba_ssm's kernel writes float32 and the cast
    would be a second kernel, a fifth of a layer's launches in a decoding step. Wide groups in float32 keep mamba_ssm's
    kernel (one program per row suits them; ours measured 0.93-1.00x there)."""
    narrowing = out_dtype not in (None, x.dtype) and triton_norm.takes_narrowing(group_size)
    if x.dtype == torch.float32 and (triton_norm.takes(group_size) or narrowing):
        return triton_norm.gated_rmsnorm(x, z, weight, eps, group_size, out_dtype, z_added)
    z = z if z_added is None else z + z_added
    y = rmsnorm_fn(x, weight, None, z=z, eps=eps, group_size=group_size, norm_before_gate=False)
    return y if out_dtype is None else y.to(out_dtype)


def add_rmsnorm(x: Tensor | None, residual: Tensor, weight: Tensor, eps: float,
                out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """One kernel for residual + x and RMSNorm: ours for narrow rows (triton_norm), mamba_ssm's fused layer norm
    (forward only: inference) for wide ones."""
    shape, width = residual.shape, residual.shape[-1]
    if triton_norm.takes(width) and residual.dtype == torch.float32:
        return triton_norm.add_rmsnorm(x, residual, weight, eps, out_dtype)
    source = (residual if x is None else x).reshape(-1, width)
    y, _, _, _, new_residual, *_ = _layer_norm_fwd(
        source.contiguous(), weight.contiguous(), None, eps,
        residual=None if x is None else residual.reshape(-1, width), out_dtype=out_dtype,
        residual_dtype=residual.dtype, is_rms_norm=True)
    return y.view(shape), (residual if x is None else new_residual.view(shape))
