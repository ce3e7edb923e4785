"""A Triton kernel for the SSD scan of a short sequence (one chunk): one launch where mamba_ssm's chunked scan
takes five and the torch twin (ssd.ssd_chunked) about thirty.

Short sequences are what the blockwise and sequential readings run thousands of times: each f evaluation of a
block scans its few tokens from the frozen state the previous block left. At that size every kernel is
launch-bound, so the count of launches is the cost. One program per (row, head) holds the whole chunk:

    y_t = sum_{s <= t} (C_t . B_s) exp(a_t - a_s) dt_s x_s  +  exp(a_t) C_t S_0  +  D x_t,   a = cumsum(dt A)

and, when asked, the state after the last token: S_L = exp(a_L) S_0 + sum_s exp(a_L - a_s) dt_s x_s B_s^T.
Everything is computed in float32, the products as tf32x3 (PRECISION); y and the state come out float32, as from
the torch twin. dt arrives discretised and zero on padding, so padded steps leave the state unchanged.

A second kernel, ssd_step_read, is one recurrence step that returns its output and no new state: what every
fixed-point iteration of the sequential reading needs (only the final evaluation commits a state). A third,
conv_step_read, is the same step with the causal conv + SiLU of its token computed in the same program (one launch a
layer where the conv took a second one and wrote its output for the step to read back). conv_step_commit is the
committing step (the final evaluation of a token, a decoding step): the conv, the state advanced in place and the
output in one launch, then the conv windows shifted in place in a second (a window of B and C is read by every head's
program, so none of them may shift it).
"""

from __future__ import annotations

import contextlib
import os

# Not for this module's products (PRECISION below says theirs), but for every Triton kernel compiled after the first
# import of any of our backend modules: float32 products in float32, not TF32 (see triton_ops).
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch import Tensor  # noqa: E402

# The one-chunk kernel's products: "tf32x3" runs them on the tensor cores as three TF32 products whose sum keeps
# float32's precision (tests/triton_ssd_check.py holds it to 1e-5 against the float32 scan; plain "tf32" fails it),
# where "ieee" multiplies on the FMA units. Measured on an H200 (bench/kernels.py), 100 rows of the a5 model: a block
# of 16 in 4.4 us against 9.8, a block of 32 in 7.1 against 16.8. bench/kernels.py and bench/readings.py set it.
PRECISION = "tf32x3"
MAX_LENGTH = 64  # longer sequences go to the chunked kernels: one program's registers hold the whole chunk
NUM_WARPS = None  # per program of the one-chunk kernel; None: by tile size (_warps). bench/kernels.py sets it.
# conv_step_read's and conv_step_commit's (most headdim rows a program, warps), picked by bench/kernels.py's cold
# survey (24 layers' states, past the L2, as a reading streams them) and timed end to end by bench/gpu_bench.py's
# step_tiles against (64, 4) for both (H100, bfloat16, 130M, batch 16; BENCHMARKS.md, item 2): the sequential reading
# 1.05x, greedy decoding 1.15x at batch 1 and 1.06x at batch 16. More rows a program left too few programs (384 at
# batch 16) to keep the state streaming. step_tiles sets others for a while.
READ_TILE = (32, 4)
COMMIT_TILE = (32, 1)


@contextlib.contextmanager
def step_tiles(read: tuple[int, int] | None = None, commit: tuple[int, int] | None = None):
    """READ_TILE and COMMIT_TILE set for a while (None: as they are), for the benches' and checks' surveys."""
    global READ_TILE, COMMIT_TILE
    was = READ_TILE, COMMIT_TILE
    READ_TILE, COMMIT_TILE = read or READ_TILE, commit or COMMIT_TILE
    try:
        yield
    finally:
        READ_TILE, COMMIT_TILE = was


@triton.jit
def _ssd_one_chunk_kernel(X, DT, DT_BIAS, VALID, A, Bm, Cm, D, S0, Y, SF, WIN, W, BIAS, ADD, ADD_DT, SCR, L, P, N,
                          heads_per_group, sxb, sxl, sxh, sdb, sdl, sdh, svb, svl, sbb, sbl, sbg, scb, scl, scg,
                          ssb, ssh, ssp, syb, syl, syh, sfb, sfh, sfp, swb, swc, swk, sab, sal, sadb, sadl,
                          RAW_DT: tl.constexpr, HAS_VALID: tl.constexpr,
                          HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_INIT: tl.constexpr, FINAL: tl.constexpr,
                          BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                          PRECISION: tl.constexpr, CONV: tl.constexpr = False, K: tl.constexpr = 1,
                          HAS_BIAS: tl.constexpr = False, HAS_WIN: tl.constexpr = False,
                          HAS_ADD: tl.constexpr = False, CONV_ROWS: tl.constexpr = 1):
    b, h = tl.program_id(0), tl.program_id(1)
    g = h // heads_per_group
    t = tl.arange(0, BLOCK_T)
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    in_t, in_p, in_n = t < L, p < P, n < N
    dt = tl.load(DT + b * sdb + t * sdl + h * sdh, mask=in_t, other=0.0).to(tl.float32)
    if HAS_ADD:  # the injection's dt, summed and rounded as the projection's output would be
        dt = _added(dt, ADD_DT + b * sadb + t * sadl + h, in_t, DT)
    if RAW_DT:  # softplus(dt + dt_bias) with torch's threshold; zero past L (softplus(bias) is not)
        raw = dt + tl.load(DT_BIAS + h).to(tl.float32)
        dt = tl.where(in_t, tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(tl.minimum(raw, 20.0)))), 0.0)
    if HAS_VALID:  # padding: dt = 0 leaves the state as it was
        dt = tl.where(tl.load(VALID + b * svb + t * svl, mask=in_t, other=0) != 0, dt, 0.0)
    a = dt * tl.load(A + h).to(tl.float32)
    a_cs = tl.cumsum(a, axis=0)
    if CONV:  # X is the conv's input xbc (b, L, H P + 2 G N): x, B and C are SiLU(conv) of its channels, computed
        # here CONV_ROWS tokens at a time into this program's scratch SCR (in L2), then read back as the scan reads its
        # inputs: the conv's registers are free before the scan's are taken. Computed whole in registers, the three
        # tiles made the kernel spill up to 4.7 KB a thread where the plain one spills 0.1 (bench/kernel_spills.py).
        d_inner = tl.num_programs(1) * P
        groups = tl.num_programs(1) // heads_per_group
        mine = SCR + (b * tl.num_programs(1) + h).to(tl.int64) * (BLOCK_T * (BLOCK_P + 2 * BLOCK_N))
        for first in range(0, BLOCK_T, CONV_ROWS):
            rows = first + tl.arange(0, CONV_ROWS)
            inside = rows < L
            tl.store(mine + rows[:, None] * BLOCK_P + p[None, :], _conv_silu_tile(
                X, WIN, W, BIAS, ADD, b, rows, h * P + p, inside, in_p, L, sxb, sxl, swb, swc, swk, sab, sal, K,
                HAS_BIAS, HAS_WIN, HAS_ADD, CONV_ROWS, BLOCK_P).to(SCR.dtype.element_ty))
            for c in tl.static_range(2):  # B, then C
                tl.store(mine + (BLOCK_P + c * BLOCK_N) * BLOCK_T + rows[:, None] * BLOCK_N + n[None, :],
                         _conv_silu_tile(X, WIN, W, BIAS, ADD, b, rows, d_inner + (c * groups + g) * N + n, inside,
                                         in_n, L, sxb, sxl, swb, swc, swk, sab, sal, K, HAS_BIAS, HAS_WIN, HAS_ADD,
                                         CONV_ROWS, BLOCK_N).to(SCR.dtype.element_ty))
        tl.debug_barrier()  # every thread of the program reads what the others wrote
        x = tl.load(mine + t[:, None] * BLOCK_P + p[None, :]).to(tl.float32)
        Bt = tl.load(mine + BLOCK_P * BLOCK_T + t[:, None] * BLOCK_N + n[None, :]).to(tl.float32)
        Ct = tl.load(mine + (BLOCK_P + BLOCK_N) * BLOCK_T + t[:, None] * BLOCK_N + n[None, :]).to(tl.float32)
    else:
        x = tl.load(X + b * sxb + t[:, None] * sxl + h * sxh + p[None, :], mask=in_t[:, None] & in_p[None, :],
                    other=0.0).to(tl.float32)
        Bt = tl.load(Bm + b * sbb + t[:, None] * sbl + g * sbg + n[None, :], mask=in_t[:, None] & in_n[None, :],
                     other=0.0).to(tl.float32)
        Ct = tl.load(Cm + b * scb + t[:, None] * scl + g * scg + n[None, :], mask=in_t[:, None] & in_n[None, :],
                     other=0.0).to(tl.float32)

    # Within the chunk: the quadratic form (C B^T * decay * dt) x, causal.
    causal = t[:, None] >= t[None, :]
    decay = tl.exp(tl.where(causal, a_cs[:, None] - a_cs[None, :], float("-inf")))
    scores = tl.dot(Ct, tl.trans(Bt), input_precision=PRECISION) * decay * dt[None, :]
    y = tl.dot(scores, x, input_precision=PRECISION)
    if HAS_INIT:  # what the state entering the chunk contributes: exp(a_t) C_t S_0
        s0 = tl.load(S0 + b * ssb + h * ssh + p[:, None] * ssp + n[None, :], mask=in_p[:, None] & in_n[None, :],
                     other=0.0).to(tl.float32)
        y += tl.exp(a_cs)[:, None] * tl.dot(Ct, tl.trans(s0), input_precision=PRECISION)
    if HAS_D:
        if D_PER_P:
            y += x * tl.load(D + h * P + p, mask=in_p, other=0.0).to(tl.float32)[None, :]
        else:
            y += x * tl.load(D + h).to(tl.float32)
    tl.store(Y + b * syb + t[:, None] * syl + h * syh + p[None, :], y, mask=in_t[:, None] & in_p[None, :])
    if FINAL:
        a_end = tl.sum(a, axis=0)
        weight = dt * tl.exp(a_end - a_cs)  # padding: dt = 0, no input
        state = tl.dot(tl.trans(x * weight[:, None]), Bt, input_precision=PRECISION)  # (P, N)
        if HAS_INIT:
            state += tl.exp(a_end) * s0
        tl.store(SF + b * sfb + h * sfh + p[:, None] * sfp + n[None, :], state, mask=in_p[:, None] & in_n[None, :])


@triton.jit
def _conv_silu_tile(XBC, WIN, W, BIAS, ADD, b, t, ch, in_t, in_ch, L, sxb, sxl, swb, swc, swk, sab, sal,
                    K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WIN: tl.constexpr, HAS_ADD: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """SiLU(causal conv) at tokens t of channels ch, (BLOCK_T, BLOCK_C) float32, zero outside (in_t, in_ch): the sums
    tap by tap in float32 as triton_conv's kernel takes them, the positions before the chunk read from the window WIN
    (b, C, K-1), rounded to the input's dtype as that kernel's output is. With HAS_ADD the input is XBC + ADD (the
    injection), rounded to XBC's dtype as the projection that adds it would round it."""
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    for j in tl.static_range(K):
        w = tl.load(W + ch * K + j, mask=in_ch, other=0.0).to(tl.float32)
        src = t + j - (K - 1)  # the input position tap j reads
        inside = ((src >= 0) & (src < L))[:, None] & in_ch[None, :]
        v = tl.load(XBC + b * sxb + src[:, None] * sxl + ch[None, :], mask=inside, other=0.0).to(tl.float32)
        if HAS_ADD:
            v = _added(v, ADD + b * sab + src[:, None] * sal + ch[None, :], inside, XBC)
        if HAS_WIN:
            v += tl.load(WIN + b * swb + ch[None, :] * swc + (src[:, None] + K - 1) * swk,
                         mask=((src < 0) & (src >= 1 - K))[:, None] & in_ch[None, :], other=0.0).to(tl.float32)
        acc += v * w[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + ch, mask=in_ch, other=0.0).to(tl.float32)[None, :]
    acc = acc * tl.sigmoid(acc)
    acc = acc.to(XBC.dtype.element_ty).to(tl.float32)
    return tl.where(in_t[:, None] & in_ch[None, :], acc, 0.0)  # as the plain kernel loads past L: zeros


@triton.jit
def _added(v, where, mask, LIKE):
    """v + the value at `where` (zero outside mask), rounded to LIKE's dtype: a projection's output with the injection
    added in its epilogue, as the kernels would have read it."""
    v += tl.load(where, mask=mask, other=0.0).to(tl.float32)
    return v.to(LIKE.dtype.element_ty).to(tl.float32)


def _block(size: int) -> int:
    return max(16, triton.next_power_of_2(size))  # tl.dot needs every side >= 16


def _warps(t: int, p: int, n: int) -> int:
    """Warps for one program holding tiles of t x t, t x p, t x n and p x n values: one warp per 2,048 values of the
    largest, and at least 4 for 64 tokens. Fewer warps mean fewer threads synchronising on small tiles. Measured on an
    H200 with tf32x3 products (bench/kernels.py, 100 rows of the bundled a5 model, 32 x 32 state): a block of 32
    tokens takes 7.1 us with 1 warp against 11.9 with 4; a block of 64, whose 64 x 64 scores are the largest tile,
    16.0 us with 4 warps against 20.0 with 2. Larger states keep the warps they had (the 130M configuration's
    64 x 128: 4), not timed with tf32x3."""
    largest = max(t * t, t * p, t * n, p * n)
    warps = min(8, max(1, triton.next_power_of_2(largest // 2048)))
    return max(warps, 4) if t >= 64 else warps


def ssd_one_chunk(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                  initial_state: Tensor | None, final_state: bool, dt_bias: Tensor | None = None,
                  valid: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """x (b, L, H, P), dt (b, L, H), A (H,), B/C (b, L, G, N), D (H,) or (H, P), initial_state (b, H, P, N) or None,
    with L <= MAX_LENGTH and every last dimension contiguous -> (y (b, L, H, P) float32, final state (b, H, P, N)
    float32 or None). With dt_bias (H,), dt is raw and the kernel takes softplus(dt + dt_bias); valid (b, L) bool
    zeroes dt where it is False (otherwise dt is used as given)."""
    x, B, C = (_unit_last(t) for t in (x, B, C))
    batch, length, nheads, headdim = x.shape
    shape = (batch, length, nheads, headdim, B.shape[2], B.shape[3])
    placeholder = dict(win=None, weight=A, bias=None)  # no conv: the kernel reads x, B and C as given
    return _one_chunk(shape, x, x.stride()[:3], B, B.stride()[:3], C, C.stride()[:3], dt, A, D, initial_state,
                      final_state, dt_bias, valid, **placeholder, added=None, conv=False)


def conv_rows(block_t: int, block_p: int, block_n: int) -> int:
    """Tokens the conv of conv_ssd_one_chunk computes at a time: about 256 values of the widest tile, so that its
    registers stay few (bench/kernel_spills.py)."""
    return max(1, min(block_t, 256 // max(block_p, block_n)))


def conv_ssd_one_chunk(xbc: Tensor, win: Tensor | None, weight: Tensor, bias: Tensor | None, dt: Tensor, A: Tensor,
                       D: Tensor | None, headdim: int, dstate: int, initial_state: Tensor | None, final_state: bool,
                       dt_bias: Tensor | None = None, valid: Tensor | None = None,
                       added: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
    """ssd_one_chunk of x, B and C = SiLU(causal conv) of xbc (b, L, H P + 2 G N) continuing from the conv window win
    (b, H P + 2 G N, k-1) (None: zeros), weight (H P + 2 G N, k): what triton_conv.causal_conv_silu then ssd_one_chunk
    compute, in one launch, the conv's output never written. Every head's program convolves its own x channels and
    its group's B and C (the B and C of a group again for each of its heads: a few taps, read from L2). added: (to xbc,
    to dt), shaped as they are, summed in the kernel (the implicit model's injection, which a projection would
    otherwise add after copying it into its output)."""
    xbc = _unit_last(xbc)
    if added is not None:
        added = (_unit_last(added[0]), _unit_last(added[1]))
    batch, length, channels = xbc.shape
    nheads = dt.shape[-1]
    groups = (channels - nheads * headdim) // (2 * dstate)
    if length > MAX_LENGTH or channels != nheads * headdim + 2 * groups * dstate:
        raise ValueError(f"conv_ssd_one_chunk takes at most {MAX_LENGTH} tokens of H P + 2 G N channels, got "
                         f"{length} tokens of {channels} (H={nheads}, P={headdim}, N={dstate})")
    strides = xbc.stride(0), xbc.stride(1), headdim  # x's heads lie headdim channels apart
    return _one_chunk((batch, length, nheads, headdim, groups, dstate), xbc, strides, xbc, strides, xbc, strides, dt,
                      A, D, initial_state, final_state, dt_bias, valid, win=win, weight=weight.contiguous(),
                      bias=bias, added=added, conv=True)


def _unit_last(t: Tensor) -> Tensor:
    """t with a unit stride in its last dimension (the kernels' loads assume it): itself, or a copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _one_chunk(shape, x, x_strides, B, b_strides, C, c_strides, dt, A, D, initial_state, final_state, dt_bias, valid,
               win, weight, bias, added, conv) -> tuple[Tensor, Tensor | None]:
    """The one-chunk kernel's launch: x, B and C with their (batch, token, head or group) strides (with conv, all
    three are xbc, convolved in the kernel)."""
    batch, length, nheads, headdim, groups, dstate = shape
    if length > MAX_LENGTH:
        raise ValueError(f"ssd_one_chunk takes at most {MAX_LENGTH} tokens, got {length}")
    y = torch.empty(batch, length, nheads, headdim, dtype=torch.float32, device=x.device)
    final = torch.empty(batch, nheads, headdim, dstate, dtype=torch.float32, device=x.device) if final_state else None
    init = initial_state.contiguous() if initial_state is not None else None
    s0, sf = (init if init is not None else y), (final if final is not None else y)  # placeholders when absent
    keep = valid.view(torch.uint8) if valid is not None else y  # a bool tensor read as bytes, without a copy
    window = win if win is not None else y
    add, add_dt = added if added is not None else (y, y)
    block_t, block_p, block_n = _block(length), _block(headdim), _block(dstate)
    # with conv: each program's x, B and C after the conv, in the input's dtype (the conv's output is rounded to it)
    scratch = torch.empty(batch * nheads * block_t * (block_p + 2 * block_n), dtype=x.dtype, device=x.device) \
        if conv else y
    _ssd_one_chunk_kernel[(batch, nheads)](
        x, dt, dt_bias if dt_bias is not None else A, keep, A, B, C, D.contiguous() if D is not None else A, s0, y, sf,
        window, weight, bias if bias is not None else weight, add, add_dt, scratch, length, headdim, dstate,
        nheads // groups,
        *x_strides, dt.stride(0), dt.stride(1), dt.stride(2), keep.stride(0), keep.stride(1), *b_strides, *c_strides,
        s0.stride(0), s0.stride(1), s0.stride(2), y.stride(0), y.stride(1), y.stride(2),
        sf.stride(0), sf.stride(1), sf.stride(2), window.stride(0), window.stride(1), window.stride(2),
        add.stride(0), add.stride(1), add_dt.stride(0), add_dt.stride(1),
        RAW_DT=dt_bias is not None, HAS_VALID=valid is not None,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_INIT=init is not None, FINAL=final_state,
        BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=block_n, PRECISION=PRECISION, CONV=conv,
        K=weight.shape[-1] if conv else 1, HAS_BIAS=bias is not None, HAS_WIN=win is not None,
        HAS_ADD=added is not None, CONV_ROWS=conv_rows(block_t, block_p, block_n) if conv else 1,
        num_warps=NUM_WARPS or _warps(block_t, block_p, block_n))
    return y, final


@triton.jit
def _step_read_kernel(S, X, DT, DT_BIAS, A, Bm, Cm, D, Y, P, N, heads_per_group,
                      ssb, ssh, ssp, sxb, sxh, sdb, sdh, sbb, sbg, scb, scg, syb, syh,
                      HAS_D: tl.constexpr, D_PER_P: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    b, h, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    g = h // heads_per_group
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    in_p, in_n = p < P, n < N
    raw = tl.load(DT + b * sdb + h * sdh).to(tl.float32) + tl.load(DT_BIAS + h).to(tl.float32)
    dt = tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(tl.minimum(raw, 20.0))))  # softplus with torch's threshold
    Bv = tl.load(Bm + b * sbb + g * sbg + n, mask=in_n, other=0.0).to(tl.float32)
    Cv = tl.load(Cm + b * scb + g * scg + n, mask=in_n, other=0.0).to(tl.float32)
    x = tl.load(X + b * sxb + h * sxh + p, mask=in_p, other=0.0).to(tl.float32)
    s = tl.load(S + b * ssb + h * ssh + p[:, None] * ssp + n[None, :], mask=in_p[:, None] & in_n[None, :],
                other=0.0).to(tl.float32)
    read = tl.sum(s * Cv[None, :], axis=1)  # S C, (P,)
    y = tl.exp(dt * tl.load(A + h).to(tl.float32)) * read + dt * x * tl.sum(Bv * Cv, axis=0)
    if HAS_D:
        if D_PER_P:
            y += x * tl.load(D + h * P + p, mask=in_p, other=0.0).to(tl.float32)
        else:
            y += x * tl.load(D + h).to(tl.float32)
    tl.store(Y + b * syb + h * syh + p, y, mask=in_p)


def ssd_step_read(state: Tensor, x: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Tensor | None) -> Tensor:
    """The output of one recurrence step without its new state: y = exp(dt A) (S C) + dt x (B . C) + D x, with dt
    raw (discretised here: softplus(dt + dt_bias)). state (b, H, P, N), x (b, H, P), dt (b, H), B/C (b, G, N) ->
    y (b, H, P) float32. A fixed-point iteration of the sequential reading commits nothing, so it needs only y: this
    reads the state once, where a state update reads it, writes a copy and writes the copy again."""
    batch, nheads, headdim, dstate = state.shape
    groups = B.shape[1]
    state, x, B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (state, x, B, C))
    y = torch.empty(batch, nheads, headdim, dtype=torch.float32, device=x.device)
    block_p = min(_block(headdim), 64)
    _step_read_kernel[(batch, nheads, triton.cdiv(headdim, block_p))](
        state, x, dt, dt_bias, A, B, C, D.contiguous() if D is not None else A, y, headdim, dstate, nheads // groups,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0), dt.stride(1),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), y.stride(0), y.stride(1),
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, BLOCK_P=block_p, BLOCK_N=_block(dstate),
        num_warps=4)
    return y


@triton.jit
def _silu_conv_tap(XBC, CONV, W, BIAS, b, ch, inside, sxb, scb, scc, sck, K: tl.constexpr, HAS_BIAS: tl.constexpr):
    """SiLU(conv) of one token at channels `ch`: the window is the conv state's K-1 inputs and the token's own, summed
    tap by tap in float32 as triton_conv's kernel does, rounded to the input's dtype as its output is."""
    acc = tl.zeros(ch.shape, dtype=tl.float32)
    for j in tl.static_range(K - 1):
        acc += tl.load(CONV + b * scb + ch * scc + j * sck, mask=inside, other=0.0).to(tl.float32) * \
            tl.load(W + ch * K + j, mask=inside, other=0.0).to(tl.float32)
    acc += tl.load(XBC + b * sxb + ch, mask=inside, other=0.0).to(tl.float32) * \
        tl.load(W + ch * K + K - 1, mask=inside, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(BIAS + ch, mask=inside, other=0.0).to(tl.float32)
    return (acc * tl.sigmoid(acc)).to(XBC.dtype.element_ty).to(tl.float32)


@triton.jit
def _conv_step_read_kernel(XBC, CONV, W, BIAS, S, DT, DT_BIAS, A, D, Z, Y, PART, P, N, heads_per_group, d_inner,
                           groups, sxb, scb, scc, sck, ssb, ssh, ssp, sdb, sdh, szb, syb, syh, spb,
                           K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr,
                           GATED: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    b, h, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    in_p, in_n = p < P, n < N
    x, Bv, Cv, dt = _token(XBC, CONV, W, BIAS, DT, DT_BIAS, b, h, p, n, in_p, in_n, P, N, heads_per_group, d_inner,
                           groups, sxb, scb, scc, sck, sdb, sdh, K, HAS_BIAS)
    s = tl.load(S + b * ssb + h * ssh + p[:, None] * ssp + n[None, :], mask=in_p[:, None] & in_n[None, :],
                other=0.0).to(tl.float32)
    read = tl.sum(s * Cv[None, :], axis=1)  # S C, (P,)
    y = tl.exp(dt * tl.load(A + h).to(tl.float32)) * read + dt * x * tl.sum(Bv * Cv, axis=0)
    if HAS_D:
        y += _skip(D, x, h, p, in_p, P, D_PER_P)
    if GATED:
        y = _gate(Z, PART, y, b, h, p, pb, in_p, P, szb, spb)
    tl.store(Y + b * syb + h * syh + p, y, mask=in_p)


@triton.jit
def _gate(Z, PART, y, b, h, p, pb, in_p, P, szb, spb):
    """y * SiLU(z), as the gated norm computes it, and this program's share of its sum of squares stored."""
    z = tl.load(Z + b * szb + h * P + p, mask=in_p, other=0.0).to(tl.float32)
    y = y * z * tl.sigmoid(z)
    tl.store(PART + b * spb + h * tl.num_programs(2) + pb, tl.sum(tl.where(in_p, y * y, 0.0), axis=0))
    return y


@triton.jit
def _token(XBC, CONV, W, BIAS, DT, DT_BIAS, b, h, p, n, in_p, in_n, P, N, heads_per_group, d_inner, groups,
           sxb, scb, scc, sck, sdb, sdh, K: tl.constexpr, HAS_BIAS: tl.constexpr):
    """x (P,), B and C (N,) of head h's group, SiLU(conv) of the token, and dt = softplus(raw dt + bias) (torch's
    threshold). Every head of a group convolves the group's B and C again: 2N channels of K taps, read from L2,
    cheaper than a launch."""
    g = h // heads_per_group
    x = _silu_conv_tap(XBC, CONV, W, BIAS, b, h * P + p, in_p, sxb, scb, scc, sck, K, HAS_BIAS)
    Bv = _silu_conv_tap(XBC, CONV, W, BIAS, b, d_inner + g * N + n, in_n, sxb, scb, scc, sck, K, HAS_BIAS)
    Cv = _silu_conv_tap(XBC, CONV, W, BIAS, b, d_inner + (groups + g) * N + n, in_n, sxb, scb, scc, sck, K, HAS_BIAS)
    raw = tl.load(DT + b * sdb + h * sdh).to(tl.float32) + tl.load(DT_BIAS + h).to(tl.float32)
    return x, Bv, Cv, tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(tl.minimum(raw, 20.0))))


@triton.jit
def _skip(D, x, h, p, in_p, P, D_PER_P: tl.constexpr):
    """D x, with D per head or per channel."""
    if D_PER_P:
        return x * tl.load(D + h * P + p, mask=in_p, other=0.0).to(tl.float32)
    return x * tl.load(D + h).to(tl.float32)


def conv_step_read(state: Tensor, conv: Tensor, xbc: Tensor, weight: Tensor, bias: Tensor | None, dt: Tensor,
                   dt_bias: Tensor, A: Tensor, D: Tensor | None) -> Tensor:
    """ssd_step_read of the token whose conv input is xbc: x, B and C are SiLU(causal conv) of xbc (b, d_inner + 2 G N)
    against the conv state (b, d_inner + 2 G N, k-1), weight (d_inner + 2 G N, k) -> y (b, H, P) float32. What
    causal_conv_silu then ssd_step_read compute, in one launch; no state is written."""
    return _read(state, conv, xbc, None, weight, bias, dt, dt_bias, A, D)[0]


def conv_step_read_gated(state: Tensor, conv: Tensor, xbc: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None,
                         dt: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor | None) -> tuple[Tensor, Tensor]:
    """conv_step_read's y gated as the mixer's norm gates it: g = y * SiLU(z), z (b, H P) -> (g (b, H, P) float32,
    sums of g^2 (b, H x tiles) float32, one a program, head-major). The gated norm's mean square is their sum over a
    group's heads, so the norm needs no pass of its own (triton_chain)."""
    return _read(state, conv, xbc, z, weight, bias, dt, dt_bias, A, D)


def _read(state, conv, xbc, z, weight, bias, dt, dt_bias, A, D) -> tuple[Tensor, Tensor]:
    batch, nheads, headdim, dstate = state.shape
    d_inner = nheads * headdim
    groups = (xbc.shape[-1] - d_inner) // (2 * dstate)
    state, xbc = (t if t.stride(-1) == 1 else t.contiguous() for t in (state, xbc))
    z = z if z is None or z.stride(-1) == 1 else z.contiguous()
    weight = weight.contiguous()
    y = torch.empty(batch, nheads, headdim, dtype=torch.float32, device=xbc.device)
    most_p, warps = READ_TILE
    block_p = min(_block(headdim), most_p)
    tiles = triton.cdiv(headdim, block_p)
    part = torch.empty(batch, nheads * tiles, dtype=torch.float32, device=xbc.device) if z is not None else y
    _conv_step_read_kernel[(batch, nheads, tiles)](
        xbc, conv, weight, bias if bias is not None else weight, state, dt, dt_bias, A,
        D.contiguous() if D is not None else A, z if z is not None else y, y, part, headdim, dstate, nheads // groups,
        d_inner, groups, xbc.stride(0), conv.stride(0), conv.stride(1), conv.stride(2), state.stride(0),
        state.stride(1), state.stride(2), dt.stride(0), dt.stride(1), z.stride(0) if z is not None else 0,
        y.stride(0), y.stride(1), part.stride(0),
        K=weight.shape[-1], HAS_BIAS=bias is not None, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        GATED=z is not None, BLOCK_P=block_p, BLOCK_N=_block(dstate), num_warps=warps)
    return y, part


@triton.jit
def _conv_step_commit_kernel(XBC, CONV, W, BIAS, S, DT, DT_BIAS, A, D, VALID, Z, Y, PART, P, N, heads_per_group,
                             d_inner, groups, sxb, scb, scc, sck, ssb, ssh, ssp, sdb, sdh, szb, syb, syh, spb,
                             K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr,
                             HAS_VALID: tl.constexpr, GATED: tl.constexpr, BLOCK_P: tl.constexpr,
                             BLOCK_N: tl.constexpr):
    b, h, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    in_p, in_n = p < P, n < N
    x, Bv, Cv, dt = _token(XBC, CONV, W, BIAS, DT, DT_BIAS, b, h, p, n, in_p, in_n, P, N, heads_per_group, d_inner,
                           groups, sxb, scb, scc, sck, sdb, sdh, K, HAS_BIAS)
    if HAS_VALID:  # a row outside valid takes no step: dt = 0 leaves its state as it was, bit for bit
        dt = tl.where(tl.load(VALID + b) != 0, dt, 0.0)
    where = S + b * ssb + h * ssh + p[:, None] * ssp + n[None, :]
    inside = in_p[:, None] & in_n[None, :]
    s = tl.load(where, mask=inside, other=0.0).to(tl.float32)
    s = tl.exp(dt * tl.load(A + h).to(tl.float32)) * s + (dt * x)[:, None] * Bv[None, :]
    tl.store(where, s.to(S.dtype.element_ty), mask=inside)
    y = tl.sum(s * Cv[None, :], axis=1)  # from the new state before it is rounded to its storage dtype
    if HAS_D:
        y += _skip(D, x, h, p, in_p, P, D_PER_P)
    if GATED:
        y = _gate(Z, PART, y, b, h, p, pb, in_p, P, szb, spb)
    tl.store(Y + b * syb + h * syh + p, y, mask=in_p)


@triton.jit
def _shift_window_kernel(CONV, XBC, VALID, C, sxb, scb, scc, sck, K: tl.constexpr, HAS_VALID: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """CONV[b, c] = (CONV[b, c, 1:], XBC[b, c]) for the rows in VALID: each program owns its channels."""
    b = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    j = tl.arange(0, BLOCK_K)
    in_c = c < C
    older = tl.load(CONV + b * scb + c[:, None] * scc + (j[None, :] + 1) * sck,
                    mask=in_c[:, None] & (j[None, :] < K - 2), other=0.0)
    token = tl.load(XBC + b * sxb + c, mask=in_c, other=0.0).to(older.dtype)
    window = tl.where(j[None, :] == K - 2, token[:, None], older)
    keep = in_c[:, None] & (j[None, :] < K - 1)
    if HAS_VALID:
        keep = keep & (tl.load(VALID + b) != 0)
    tl.store(CONV + b * scb + c[:, None] * scc + j[None, :] * sck, window.to(CONV.dtype.element_ty), mask=keep)


def commits_in_place(state: Tensor, conv: Tensor) -> bool:
    """Whether conv_step_commit can advance these states in place: their last dimensions contiguous (a window of one
    input has nothing to shift)."""
    return state.stride(-1) == 1 and (conv.stride(-1) == 1 or conv.shape[-1] < 2)


def conv_step_commit(state: Tensor, conv: Tensor, xbc: Tensor, weight: Tensor, bias: Tensor | None, dt: Tensor,
                     dt_bias: Tensor, A: Tensor, D: Tensor | None, valid: Tensor | None) -> Tensor:
    """One committing step, advancing `state` (b, H, P, N) and the conv window `conv` (b, C, k-1) in place for the
    rows in valid (b,) bool (None: all): the rows outside keep both bit for bit. -> y (b, H, P) float32, from the new
    state before it is rounded to its storage dtype (as mamba_ssm's state update and the torch twin compute it)."""
    return _commit(state, conv, xbc, None, weight, bias, dt, dt_bias, A, D, valid)[0]


def conv_step_commit_gated(state: Tensor, conv: Tensor, xbc: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None,
                           dt: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor | None, valid: Tensor | None
                           ) -> tuple[Tensor, Tensor]:
    """conv_step_commit's y gated as conv_step_read_gated's is: (g, sums of g^2 a program)."""
    return _commit(state, conv, xbc, z, weight, bias, dt, dt_bias, A, D, valid)


def _commit(state, conv, xbc, z, weight, bias, dt, dt_bias, A, D, valid) -> tuple[Tensor, Tensor]:
    batch, nheads, headdim, dstate = state.shape
    d_inner, channels, k = nheads * headdim, xbc.shape[-1], weight.shape[-1]
    groups = (channels - d_inner) // (2 * dstate)
    if not commits_in_place(state, conv):
        raise ValueError("conv_step_commit advances its states in place: their last dimensions must be contiguous")
    xbc = xbc if xbc.stride(-1) == 1 else xbc.contiguous()
    weight = weight.contiguous()
    keep = valid.view(torch.uint8) if valid is not None else xbc  # a bool tensor read as bytes, without a copy
    y = torch.empty(batch, nheads, headdim, dtype=torch.float32, device=xbc.device)
    z = z if z is None or z.stride(-1) == 1 else z.contiguous()
    most_p, warps = COMMIT_TILE
    block_p = min(_block(headdim), most_p)
    tiles = triton.cdiv(headdim, block_p)
    part = torch.empty(batch, nheads * tiles, dtype=torch.float32, device=xbc.device) if z is not None else y
    _conv_step_commit_kernel[(batch, nheads, tiles)](
        xbc, conv, weight, bias if bias is not None else weight, state, dt, dt_bias, A,
        D.contiguous() if D is not None else A, keep, z if z is not None else y, y, part, headdim, dstate,
        nheads // groups, d_inner, groups, xbc.stride(0), conv.stride(0), conv.stride(1), conv.stride(2),
        state.stride(0), state.stride(1), state.stride(2), dt.stride(0), dt.stride(1),
        z.stride(0) if z is not None else 0, y.stride(0), y.stride(1), part.stride(0),
        K=k, HAS_BIAS=bias is not None, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        HAS_VALID=valid is not None, GATED=z is not None, BLOCK_P=block_p, BLOCK_N=_block(dstate), num_warps=warps)
    if k > 1:
        block_c = 256
        _shift_window_kernel[(batch, triton.cdiv(channels, block_c))](
            conv, xbc, keep, channels, xbc.stride(0), conv.stride(0), conv.stride(1), conv.stride(2), K=k,
            HAS_VALID=valid is not None, BLOCK_C=block_c, BLOCK_K=max(2, triton.next_power_of_2(k - 1)), num_warps=4)
    return y, part
