"""One f evaluation of a narrow Mamba2 stack in two launches a layer: what a piece solve (graphs.PieceSolve) of the
sequential and blockwise readings repeats thousands of times.

Unfused, an evaluation of a one-layer model is a chain of about ten dependent kernels (norm, in_proj, conv, scan,
gated norm, out_proj, norm, damped update, copies), each near its launch latency at these sizes: a step of 100 rows
costs about 21 us on an H200 and a block of 16 tokens about 34 us, so a block never costs what one step does, and the
blockwise reading cannot save what its fewer evaluations promise. Here a layer is two kernels:

- `_heads_kernel`, one program per (row, head): the layer's RMSNorm, the head's slices of in_proj (z, x, dt) and its
  group's B and C, the causal conv (a shift is a 0/1 matrix product; the tokens before the piece come from the conv
  state), the SSD scan of the piece from the frozen state (the one-chunk form of triton_ssd), and the gate y * SiLU(z);
  it writes the gated values, their sum of squares per token, and on a commit the head's new SSM and conv states;
- `_out_kernel`, one program per row: the gated norm per group, out_proj, the residual add, and after the last layer
  the final norm and (within a solve) the damped update of the row (torch_ops.damped_update's arithmetic).

A step is a piece of one token: the same kernels, whose tiles are padded to 16 tokens anyway (tl.dot's least side),
so a step and a block of 16 cost about alike. Every rounding of the unfused chain is kept (the projections, the conv
and the gated norm round to the model dtype where their kernels write it), so in float32 the two agree to the order
of summation (tests/triton_fused_check.py holds them to model.f, model.f_step and the torch damped update).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # see triton_ops

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch import Tensor  # noqa: E402

from ..fixed_point import EPS  # noqa: E402
from ..mamba2 import MixerState  # noqa: E402

IEEE = tl.constexpr(os.environ["TRITON_F32_DEFAULT"])
# Triton's interpreter (the CPU tests) multiplies bfloat16 tiles as raw bits: there the products take float32 operands,
# which is exact for bfloat16 and float16 values (on the GPU the tensor cores take them as they are).
UPCAST = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")
ENABLED = True  # bench/readings.py --unfused turns it off, to time the chain of kernels it replaces
WARPS = (4, 4)  # of the heads and the out kernels (bench/fused_eval.py tries others)
# Where the fused form is the faster one: its products run on the tensor cores only for 16-bit models. In float32
# (IEEE products, no tensor cores) an update measured 8-10x slower than the chain (bench/fused_eval.py, H200).
FAST_DTYPES = (torch.bfloat16, torch.float16)
MAX_TOKENS = 32  # a program holds its row's whole piece: longer blocks take the unfused chain
MAX_WIDTH = {"d_model": 256, "headdim": 64, "d_state": 64}  # what one program's registers hold


def takes(cfg, tokens: int, dtype: torch.dtype) -> bool:
    """Whether a piece of `tokens` tokens of this model can be evaluated here (else: the unfused chain)."""
    return (tokens <= MAX_TOKENS and dtype in (torch.float32, torch.bfloat16, torch.float16) and not cfg.bias
            and cfg.d_model <= MAX_WIDTH["d_model"] and cfg.headdim <= MAX_WIDTH["headdim"]
            and cfg.d_state <= MAX_WIDTH["d_state"] and cfg.d_conv <= 8)


@triton.jit
def _mm(a, b):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=IEEE)
    return tl.dot(a, b, input_precision=IEEE)


@triton.jit
def _project(u, W, INJ, rows, in_rows, t, in_t, d, in_d, sw, sit):
    """(u W[rows]^T + inject[:, rows]) rounded to the model dtype, as the unfused GEMM writes it: (BT, len(rows))."""
    w = tl.load(W + rows[:, None] * sw + d[None, :], mask=in_rows[:, None] & in_d[None, :], other=0.0)
    out = _mm(u, tl.trans(w))
    out += tl.load(INJ + t[:, None] * sit + rows[None, :], mask=in_t[:, None] & in_rows[None, :], other=0.0).to(
        tl.float32)
    return out.to(W.dtype.element_ty).to(tl.float32)


@triton.jit
def _conv_silu(pre, SCRATCH, CW, CB, CONV0, ch, in_ch, t, scw, sc0c, HAS_STATE: tl.constexpr, HAS_BIAS: tl.constexpr,
               K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """SiLU(causal depthwise conv) of pre (BT, BC) over channels `ch`, the K-1 inputs before the piece from CONV0.
    Registers cannot be shifted along the token axis: the tile goes through the program's own scratch (a global
    round trip within the program, cheaper than shifting by matrix products in float32)."""
    col = tl.arange(0, BC)
    tl.store(SCRATCH + t[:, None] * BC + col[None, :], pre)
    tl.debug_barrier()  # every thread's part of the tile written before any thread reads a shifted one
    acc = tl.zeros_like(pre)
    for k in tl.static_range(K):  # tap k weighs the input K-1-k tokens back
        back = K - 1 - k
        w = tl.load(CW + ch * scw + k, mask=in_ch, other=0.0).to(tl.float32)
        if back == 0:
            shifted = pre
        else:
            src = t - back
            shifted = tl.load(SCRATCH + src[:, None] * BC + col[None, :], mask=(src >= 0)[:, None], other=0.0)
            if HAS_STATE:
                shifted += tl.load(CONV0 + ch[None, :] * sc0c + (src[:, None] + K - 1),
                                   mask=(src < 0)[:, None] & in_ch[None, :], other=0.0).to(tl.float32)
        acc += shifted * w[None, :]
    if HAS_BIAS:
        acc += tl.load(CB + ch, mask=in_ch, other=0.0).to(tl.float32)[None, :]
    return (acc * tl.sigmoid(acc)).to(CW.dtype.element_ty).to(tl.float32)


@triton.jit
def _mm_exact(a, b, W, SPLIT: tl.constexpr):
    """a @ b for float32 a and b whose values W's dtype holds exactly: with SPLIT (a bfloat16 or float16 model) on the
    tensor cores in that dtype; a float32 model multiplies in IEEE float32."""
    if SPLIT:
        return _mm(a.to(W.dtype.element_ty), b.to(W.dtype.element_ty))
    return tl.dot(a, b, input_precision=IEEE)


@triton.jit
def _mm_split(a, b, W, SPLIT: tl.constexpr):
    """a @ b for float32 a and b, b exact in W's dtype: with SPLIT, a as the sum of two parts in that dtype (16 bits of
    mantissa for bfloat16, about 1e-5 relative), two tensor-core products instead of one slow IEEE float32 one."""
    if SPLIT:
        high = a.to(W.dtype.element_ty)
        low = (a - high.to(tl.float32)).to(W.dtype.element_ty)
        b_low = b.to(W.dtype.element_ty)
        return _mm(high, b_low) + _mm(low, b_low)
    return tl.dot(a, b, input_precision=IEEE)


@triton.jit
def _commit_conv(pre, CONV0, CF, ch, in_ch, t, end, sc0c, scfc, HAS_STATE: tl.constexpr, K: tl.constexpr):
    """The conv state after the row's last valid token (index end - 1): its last K-1 pre-conv inputs, reaching back
    into the old state when the piece is shorter than that."""
    for j in tl.static_range(K - 1):
        at = end - (K - 1) + j
        value = tl.sum(tl.where(t[:, None] == at, pre, 0.0), axis=0)
        if HAS_STATE:
            old = tl.load(CONV0 + ch * sc0c + (at + K - 1), mask=in_ch & (at < 0), other=0.0).to(tl.float32)
            value = tl.where(at < 0, old, value)
        tl.store(CF + ch * scfc + j, value.to(CF.dtype.element_ty), mask=in_ch)


@triton.jit
def _heads_kernel(HIN, NW, INJ, W, CW, CB, DT_BIAS, A, D, CONV0, S0, VALID, G, SS, SF, CF, SCRATCH,
                  T, DM, P, N, DI, NG, HPG, NH, eps,
                  shb, sht, sib, sit, sw, scw, sc0b, sc0c, ss0b, ss0h, ss0p, svb, sgb, sgt, sssb, ssst,
                  sfb, sfh, sfp, scfb, scfc,
                  K: tl.constexpr, HAS_STATE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr,
                  D_PER_P: tl.constexpr, HAS_VALID: tl.constexpr, COMMIT: tl.constexpr, SPLIT: tl.constexpr,
                  BT: tl.constexpr, BD: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    b, h = tl.program_id(0), tl.program_id(1)
    SCRATCH += (b * NH + h) * BT * (BP + 2 * BN)  # this program's own: x, B and C tiles
    g = h // HPG
    t, d, p, n = tl.arange(0, BT), tl.arange(0, BD), tl.arange(0, BP), tl.arange(0, BN)
    in_t, in_d, in_p, in_n = t < T, d < DM, p < P, n < N
    HIN += b * shb
    INJ += b * sib
    CONV0 += b * sc0b

    # The layer's input norm, in the model dtype (as the unfused add_rmsnorm writes it).
    hid = tl.load(HIN + t[:, None] * sht + d[None, :], mask=in_t[:, None] & in_d[None, :], other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(hid * hid, axis=1) / DM + eps)
    u = (hid * rstd[:, None] * tl.load(NW + d, mask=in_d, other=0.0).to(tl.float32)[None, :]).to(W.dtype.element_ty)

    # in_proj rows: z | x (conv channels 0..DI) | B | C | dt.
    xc, bc, cc = h * P + p, DI + g * N + n, DI + NG * N + g * N + n
    x_pre = _project(u, W, INJ, DI + xc, in_p, t, in_t, d, in_d, sw, sit)
    b_pre = _project(u, W, INJ, DI + bc, in_n, t, in_t, d, in_d, sw, sit)
    c_pre = _project(u, W, INJ, DI + cc, in_n, t, in_t, d, in_d, sw, sit)
    x = _conv_silu(x_pre, SCRATCH, CW, CB, CONV0, xc, in_p, t, scw, sc0c, HAS_STATE, HAS_BIAS, K, BT, BP)
    Bt = _conv_silu(b_pre, SCRATCH + BT * BP, CW, CB, CONV0, bc, in_n, t, scw, sc0c, HAS_STATE, HAS_BIAS, K, BT, BN)
    Ct = _conv_silu(c_pre, SCRATCH + BT * (BP + BN), CW, CB, CONV0, cc, in_n, t, scw, sc0c, HAS_STATE, HAS_BIAS, K,
                    BT, BN)

    dt_row = 2 * DI + 2 * NG * N + h
    raw = tl.sum(u.to(tl.float32) * tl.load(W + dt_row * sw + d, mask=in_d, other=0.0).to(tl.float32)[None, :], axis=1)
    raw += tl.load(INJ + t * sit + dt_row, mask=in_t, other=0.0).to(tl.float32)
    raw = raw.to(W.dtype.element_ty).to(tl.float32) + tl.load(DT_BIAS + h).to(tl.float32)
    keep = in_t
    if HAS_VALID:  # padding: dt = 0 leaves the state as it was
        keep = keep & (tl.load(VALID + b * svb + t, mask=in_t, other=0) != 0)
    dt = tl.where(keep, tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(tl.minimum(raw, 20.0)))), 0.0)

    # The scan of the piece from the frozen state S0 (triton_ssd's one-chunk form).
    a = dt * tl.load(A + h).to(tl.float32)
    a_cs = tl.cumsum(a, axis=0)
    causal = t[:, None] >= t[None, :]
    decay = tl.exp(tl.where(causal, a_cs[:, None] - a_cs[None, :], float("-inf")))
    scores = _mm_exact(Ct, tl.trans(Bt), W, SPLIT) * decay * dt[None, :]
    y = _mm_split(scores, x, W, SPLIT)
    if HAS_STATE:
        s0 = tl.load(S0 + b * ss0b + h * ss0h + p[:, None] * ss0p + n[None, :], mask=in_p[:, None] & in_n[None, :],
                     other=0.0).to(tl.float32)
        y += tl.exp(a_cs)[:, None] * tl.trans(_mm_split(s0, tl.trans(Ct), W, SPLIT))
    if HAS_D:
        if D_PER_P:
            y += x * tl.load(D + h * P + p, mask=in_p, other=0.0).to(tl.float32)[None, :]
        else:
            y += x * tl.load(D + h).to(tl.float32)

    # The gate; the norm over the group waits for every head (_out_kernel).
    zg = _project(u, W, INJ, xc, in_p, t, in_t, d, in_d, sw, sit)
    gated = tl.where(in_t[:, None] & in_p[None, :], y * zg * tl.sigmoid(zg), 0.0)
    tl.store(G + b * sgb + t[:, None] * sgt + xc[None, :], gated, mask=in_t[:, None] & in_p[None, :])
    tl.store(SS + b * sssb + t * ssst + h, tl.sum(gated * gated, axis=1), mask=in_t)

    if COMMIT:
        a_end = tl.sum(a, axis=0)
        weight = dt * tl.exp(a_end - a_cs)  # padding: dt = 0, no input
        state = _mm_split(tl.trans(x * weight[:, None]), Bt, W, SPLIT)  # (P, N)
        if HAS_STATE:
            state += tl.exp(a_end) * s0
        tl.store(SF + b * sfb + h * sfh + p[:, None] * sfp + n[None, :], state, mask=in_p[:, None] & in_n[None, :])
        end = tl.sum(keep.to(tl.int32), axis=0)  # right padding: the valid tokens come first
        CF += b * scfb
        _commit_conv(x_pre, CONV0, CF, xc, in_p, t, end, sc0c, scfc, HAS_STATE, K)
        if h % HPG == 0:  # one head of each group writes the group's B and C channels
            _commit_conv(b_pre, CONV0, CF, bc, in_n, t, end, sc0c, scfc, HAS_STATE, K)
            _commit_conv(c_pre, CONV0, CF, cc, in_n, t, end, sc0c, scfc, HAS_STATE, K)


@triton.jit
def _out_kernel(G, SS, GW, WO, HIN, HOUT, FW, Z, VALID, ACTIVE, ITERATIONS, CONVERGED,
                T, DM, P, HPG, gate_eps, eps, keep_z, tau, tol, last_update, res_eps,
                sgb, sgt, sssb, ssst, swo, shb, sht, sob, sot, szb, szt, svb,
                NH: tl.constexpr, GATE_NORM: tl.constexpr, LAST: tl.constexpr, UPDATE: tl.constexpr,
                HAS_VALID: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BP: tl.constexpr, BH: tl.constexpr):
    b = tl.program_id(0)
    t, d, p, hh = tl.arange(0, BT), tl.arange(0, BD), tl.arange(0, BP), tl.arange(0, BH)
    in_t, in_d, in_p = t < T, d < DM, p < P
    tile = in_t[:, None] & in_d[None, :]
    ss = tl.load(SS + b * sssb + t[:, None] * ssst + hh[None, :], mask=in_t[:, None] & (hh < NH)[None, :], other=0.0)
    acc = tl.zeros([BT, BD], dtype=tl.float32)
    for h in tl.static_range(NH):  # out_proj, one head's columns at a time
        col = h * P + p
        y = tl.load(G + b * sgb + t[:, None] * sgt + col[None, :], mask=in_t[:, None] & in_p[None, :], other=0.0)
        if GATE_NORM:
            group = tl.sum(tl.where((hh // HPG == h // HPG)[None, :], ss, 0.0), axis=1)
            y = y / tl.sqrt(group / (HPG * P) + gate_eps)[:, None]
            y = y * tl.load(GW + col, mask=in_p, other=0.0).to(tl.float32)[None, :]
        w = tl.load(WO + d[:, None] * swo + col[None, :], mask=in_d[:, None] & in_p[None, :], other=0.0)
        acc += _mm(y.to(WO.dtype.element_ty), tl.trans(w))
    hid = tl.load(HIN + b * shb + t[:, None] * sht + d[None, :], mask=tile, other=0.0).to(tl.float32)
    hid += acc.to(WO.dtype.element_ty).to(tl.float32)  # the out_proj output in the model dtype, added in float32
    if not LAST:
        tl.store(HOUT + b * sob + t[:, None] * sot + d[None, :], hid, mask=tile)
    else:
        fz = hid / tl.sqrt(tl.sum(hid * hid, axis=1) / DM + eps)[:, None]
        fz = fz * tl.load(FW + d, mask=in_d, other=0.0).to(tl.float32)[None, :]
        if not UPDATE:
            tl.store(HOUT + b * sob + t[:, None] * sot + d[None, :], fz, mask=tile)
        else:  # the damped update of the row (torch_ops.damped_update)
            z = tl.load(Z + b * szb + t[:, None] * szt + d[None, :], mask=tile, other=0.0)
            counted = tile
            if HAS_VALID:  # padding counts in no norm
                counted = counted & (tl.load(VALID + b * svb + t, mask=in_t, other=0) != 0)[:, None]
            diff = tl.where(counted, fz - z, 0.0)
            size = tl.where(counted, z, 0.0)
            residual = tl.sqrt(tl.sum(tl.sum(diff * diff, axis=1), axis=0)) / (
                res_eps + tl.sqrt(tl.sum(tl.sum(size * size, axis=1), axis=0)))
            active = tl.load(ACTIVE + b) != 0
            tl.store(Z + b * szb + t[:, None] * szt + d[None, :], keep_z * z + tau * fz, mask=tile & active)
            iterations = tl.load(ITERATIONS + b) + active.to(tl.int64)
            done = active & (residual < tol)
            tl.store(ITERATIONS + b, iterations)
            tl.store(CONVERGED + b, ((tl.load(CONVERGED + b) != 0) | done).to(tl.int8))
            tl.store(ACTIVE + b, (active & ~done & (iterations < last_update)).to(tl.int8))


def _pad(size: int) -> int:
    return max(16, triton.next_power_of_2(size))  # tl.dot needs every side >= 16


def _as_piece(t: Tensor) -> Tensor:
    """(R, X) for a step, (R, T, X) for a block -> (R, T, X) with a unit last stride (a view where possible)."""
    t = t[:, None] if t.dim() == 2 else t
    return t if t.stride(-1) == 1 else t.contiguous()


def _heads(mixer, norm, hidden: Tensor, inject: Tensor, state: MixerState | None, valid: Tensor | None,
           commit: bool) -> tuple[Tensor, Tensor, MixerState | None]:
    cfg, rows, tokens = mixer.cfg, hidden.shape[0], hidden.shape[1]
    derived = mixer._derived()
    dev = hidden.device
    gated = torch.empty(rows, tokens, cfg.d_inner, dtype=torch.float32, device=dev)
    squares = torch.empty(rows, tokens, cfg.nheads, dtype=torch.float32, device=dev)
    new = None
    if commit:
        conv_dtype = state.conv.dtype if state is not None else mixer.in_proj.weight.dtype
        new = MixerState(torch.empty(rows, cfg.conv_dim, cfg.d_conv - 1, dtype=conv_dtype, device=dev),
                         torch.empty(rows, cfg.nheads, cfg.headdim, cfg.d_state, dtype=torch.float32, device=dev))
    conv0, s0 = (state.conv, state.ssm.contiguous()) if state is not None else (gated, gated)  # placeholders
    cf, sf = (new.conv, new.ssm) if new is not None else (gated, gated)
    keep = valid.contiguous().view(torch.uint8) if valid is not None else squares
    D = derived.D.contiguous()
    bt, bp, bn = _pad(tokens), _pad(cfg.headdim), _pad(cfg.d_state)
    scratch = torch.empty(rows * cfg.nheads * bt * (bp + 2 * bn), dtype=torch.float32, device=dev)
    weight, conv_w = mixer.in_proj.weight, mixer.conv1d.weight[:, 0]
    _heads_kernel[(rows, cfg.nheads)](
        hidden, norm.weight, inject, weight, conv_w, mixer.conv1d.bias if cfg.conv_bias else conv_w,
        derived.dt_bias, derived.A, D, conv0, s0, keep, gated, squares, sf, cf, scratch,
        tokens, cfg.d_model, cfg.headdim, cfg.d_state, cfg.d_inner, cfg.ngroups, cfg.nheads // cfg.ngroups,
        cfg.nheads, norm.eps,
        hidden.stride(0), hidden.stride(1), inject.stride(0), inject.stride(1), weight.stride(0), conv_w.stride(0),
        conv0.stride(0), conv0.stride(1), s0.stride(0), s0.stride(1), s0.stride(2), keep.stride(0),
        gated.stride(0), gated.stride(1), squares.stride(0), squares.stride(1),
        sf.stride(0), sf.stride(1), sf.stride(2), cf.stride(0), cf.stride(1),
        K=cfg.d_conv, HAS_STATE=state is not None, HAS_BIAS=cfg.conv_bias, HAS_D=True, D_PER_P=D.dim() == 2,
        HAS_VALID=valid is not None, COMMIT=commit, SPLIT=weight.dtype != torch.float32,
        BT=bt, BD=_pad(cfg.d_model), BP=bp, BN=bn, num_warps=WARPS[0])
    return gated, squares, new


def evaluate(model, z: Tensor, inject: Tensor, state: list[MixerState] | None, valid: Tensor | None, commit: bool,
             update: tuple | None = None) -> tuple[Tensor | None, list[MixerState] | None]:
    """model.f (or f_step for z (R, D)) of an implicit model whose backend is triton: z (R, [T,] D) float32, inject
    (R, [T,] d_in_proj), state one MixerState per layer (None: zeros, nothing committed), valid (R, T) or None.
    Returns (f(z), the new states or None unless commit). With update = (active, iterations, converged, tau, tol,
    max_iter) it is instead one damped update of z in place (torch_ops.damped_update), and returns (None, None)."""
    cfg = model.cfg
    step = z.dim() == 2
    iterate = hidden = _as_piece(z)
    inj = _as_piece(inject)
    rows, tokens = hidden.shape[:2]
    dummy = torch.empty(1, dtype=torch.int64, device=z.device)
    active, iterations, converged, tau, tol, max_iter = update or (dummy, dummy, dummy, 1.0, 0.0, 1)
    keep = valid.contiguous().view(torch.uint8) if valid is not None else dummy
    new_states = []
    for i, layer in enumerate(model.layers):
        last = i == len(model.layers) - 1
        gated, squares, new = _heads(layer.mixer, layer.norm, hidden, inj, None if state is None else state[i],
                                     valid, commit)
        new_states.append(new)
        out = torch.empty(rows, tokens, cfg.d_model, dtype=torch.float32, device=z.device)
        wo = layer.mixer.out_proj.weight
        _out_kernel[(rows,)](
            gated, squares, layer.mixer.norm.weight if cfg.rmsnorm else wo, wo, hidden, out, model.norm_f.weight,
            iterate, keep, active.view(torch.uint8) if update else dummy, iterations,
            converged.view(torch.uint8) if update else dummy,
            tokens, cfg.d_model, cfg.headdim, cfg.nheads // cfg.ngroups, cfg.mixer_norm_eps, model.norm_f.eps,
            1.0 - tau, tau, tol, max_iter - 1, EPS,
            gated.stride(0), gated.stride(1), squares.stride(0), squares.stride(1), wo.stride(0),
            hidden.stride(0), hidden.stride(1), out.stride(0), out.stride(1), iterate.stride(0), iterate.stride(1),
            keep.stride(0) if valid is not None else 0,
            NH=cfg.nheads, GATE_NORM=cfg.rmsnorm, LAST=last, UPDATE=last and update is not None,
            HAS_VALID=valid is not None, BT=_pad(tokens), BD=_pad(cfg.d_model), BP=_pad(cfg.headdim),
            BH=_pad(cfg.nheads), num_warps=WARPS[1])
        hidden = out
    if update is not None:
        return None, None
    fz = hidden[:, 0] if step else hidden
    return fz, new_states if commit else None
