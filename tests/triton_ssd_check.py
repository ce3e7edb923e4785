"""Checks of the one-chunk Triton SSD kernel against its torch twin, ssd.ssd_chunked (run by
model_adapters/test_triton_kernels.py): in-process on CUDA, in a subprocess with TRITON_INTERPRET=1 on the CPU."""

import itertools

import torch

from implicit_ssm_eval.model_adapters.testing import rel_err, run_kernel_check


def inputs(device: str, length: int, groups: int, dtype: torch.dtype, padded: bool):
    """x, B and C as slices of one projection-like tensor (strided, as the model hands them over)."""
    batch, nheads, headdim, dstate = 3, 4, 8, 12  # sides below the kernel's 16: masked loads
    width = nheads * headdim + 2 * groups * dstate
    wide = torch.randn(batch, length, width + 5, device=device).to(dtype)
    x = wide[..., :nheads * headdim].unflatten(-1, (nheads, headdim))
    B = wide[..., nheads * headdim: nheads * headdim + groups * dstate].unflatten(-1, (groups, dstate))
    C = wide[..., nheads * headdim + groups * dstate: width].unflatten(-1, (groups, dstate))
    dt = torch.rand(batch, length, nheads, device=device) * 0.5
    if padded:  # the last row ends early: its padded steps have dt = 0
        dt[-1, length // 2:] = 0
    A = -torch.rand(nheads, device=device) * 4 - 0.5
    state = torch.randn(batch, nheads, headdim, dstate, device=device)
    return x, dt, A, B, C, state


def check(device: str) -> list[str]:
    """The cases that fail, with their error (empty: all pass)."""
    from implicit_ssm_eval.model_adapters.backends.triton_ssd import ssd_one_chunk
    from implicit_ssm_eval.model_adapters.ssd import ssd_chunked

    failures = []
    cases = itertools.product((1, 5, 32, 64), (1, 2), ("none", "head", "channel"), (True, False), (True, False),
                              (torch.float32, torch.bfloat16))
    for length, groups, d_kind, with_state, final, dtype in cases:
        torch.manual_seed(length * 7 + groups)
        x, dt, A, B, C, state = inputs(device, length, groups, dtype, padded=length > 1)
        D = {"none": None, "head": torch.randn(4, device=device), "channel": torch.randn(4, 8, device=device)}[d_kind]
        init = state if with_state else None
        y, s = ssd_one_chunk(x, dt, A, B, C, D, init, final)
        y_ref, s_ref = ssd_chunked(x.float(), dt, A, B.float(), C.float(), 64, D, init, final)
        errors = [rel_err(y, y_ref)] + ([rel_err(s, s_ref)] if final else [])
        ok = y.dtype == torch.float32 and y.shape == y_ref.shape and (s is None) == (not final) and \
            max(errors) <= 1e-5
        if not ok:
            failures.append(f"L={length} G={groups} D={d_kind} state={with_state} final={final} {dtype}: "
                            f"errors {[f'{e:.2e}' for e in errors]}")
    return (failures + check_raw_dt(device) + check_step_read(device) + check_conv_step_read(device)
            + check_conv_step_commit(device) + check_conv_scan(device))


def check_raw_dt(device: str) -> list[str]:
    """dt raw with its bias and a valid mask, discretised in the kernel, against discretise() then the torch scan."""
    from implicit_ssm_eval.model_adapters.backends.triton_ssd import ssd_one_chunk
    from implicit_ssm_eval.model_adapters.ssd import discretise, ssd_chunked

    failures = []
    for length, final, big_dt, padded in itertools.product((1, 5, 32), (True, False), (False, True), (True, False)):
        torch.manual_seed(length)
        x, _, A, B, C, state = inputs(device, length, 2, torch.float32, padded=False)
        # big_dt: above torch's softplus threshold (20) softplus is the identity, and exp would overflow
        dt = torch.randn(*x.shape[:3], device=device) + (30.0 if big_dt else 0.0)
        dt_bias = torch.linspace(-4, 1, x.shape[2], device=device)
        valid = torch.ones(*x.shape[:2], dtype=torch.bool, device=device)
        valid[-1, (length + 1) // 2:] = False  # the last row is padded past its middle
        valid = valid if padded else None  # None: the kernel's own tile past L must still count for nothing
        y, s = ssd_one_chunk(x, dt, A, B, C, None, state, final, dt_bias=dt_bias, valid=valid)
        y_ref, s_ref = ssd_chunked(x, discretise(dt, dt_bias, valid), A, B, C, 64, None, state, final)
        errors = [rel_err(y, y_ref)] + ([rel_err(s, s_ref)] if final else [])
        # With dt near 30 the log-decays sum to about -2,000 over 32 tokens, where float32's spacing is 1e-4: the
        # decay weights carry that error in either scan (measured on an H200: 2.2e-5 for y, 5.5e-5 for the state)
        if errors[0] > (1e-4 if big_dt else 1e-5) or (final and errors[1] > (5e-4 if big_dt else 1e-5)):
            failures.append(f"raw dt L={length} final={final} big_dt={big_dt} padded={padded}: "
                            f"errors {[f'{e:.2e}' for e in errors]}")
    return failures


def check_step_read(device: str) -> list[str]:
    """The step's read-only kernel against ssd_step's y (softplus of the raw dt included)."""
    import torch.nn.functional as F

    from implicit_ssm_eval.model_adapters.backends.triton_ssd import ssd_step_read
    from implicit_ssm_eval.model_adapters.ssd import ssd_step

    failures = []
    for groups, d_kind, dtype, big_dt in itertools.product((1, 2), ("none", "head", "channel"),
                                                           (torch.float32, torch.bfloat16), (False, True)):
        torch.manual_seed(groups * 3 + len(d_kind))
        x, _, A, B, C, state = inputs(device, 1, groups, dtype, padded=False)
        x, B, C = x[:, 0], B[:, 0], C[:, 0]
        # big_dt: above torch's softplus threshold (20) softplus is the identity, and exp would overflow
        dt = torch.randn(x.shape[0], x.shape[1], device=device) + (100.0 if big_dt else 0.0)
        dt_bias = torch.randn(x.shape[1], device=device)
        D = {"none": None, "head": torch.randn(4, device=device), "channel": torch.randn(4, 8, device=device)}[d_kind]
        y = ssd_step_read(state, x, dt, dt_bias, A, B, C, D)
        y_ref, _ = ssd_step(state, x.float(), F.softplus(dt + dt_bias), A, B.float(), C.float(), D)
        error = rel_err(y, y_ref)
        if not (y.dtype == torch.float32 and y.shape == y_ref.shape and error <= 1e-5):
            failures.append(f"step read G={groups} D={d_kind} {dtype} big_dt={big_dt}: error {error:.2e}")
    return failures


def surveyed_tiles(device: str) -> list[tuple[int, int]]:
    """The (headdim rows, warps) tiles of conv_step_read and conv_step_commit that bench/kernels.py's cold section
    surveys, so whichever it picks is checked; the warps matter on CUDA only (the interpreter runs one of each)."""
    return list(itertools.product((16, 32, 64), (1, 2, 4, 8) if device == "cuda" else (4,)))


def check_conv_step_read(device: str) -> list[str]:
    """The step's conv and read in one kernel against the two kernels it replaces (triton_conv's conv, then
    ssd_step_read: the same float32 sums, so 1e-6) and against the torch twin (which convolves a bfloat16 token in
    bfloat16: 2e-2 there, measured 1.1e-2 at the 130M shape). xbc is a strided slice of a wider projection, as in
    the model; conv bias and D vary. The 130M shape runs at every tile of surveyed_tiles."""
    from types import SimpleNamespace

    from implicit_ssm_eval.model_adapters.backends import torch_ops, triton_conv, triton_ssd
    from implicit_ssm_eval.model_adapters.backends.triton_ssd import conv_step_read, ssd_step_read

    two_kernels = SimpleNamespace(causal_conv_silu=triton_conv.causal_conv_silu,
                                  state_step=lambda s, *args: (ssd_step_read(s, *args[:-2]), None))
    failures = []
    small = itertools.product(((3, 4, 8, 12),), (1, 2), ("none", "head", "channel"), (torch.float32, torch.bfloat16),
                              (True, False))
    the_130m = [((2, 24, 64, 128), 1, "head", torch.bfloat16, True, tile)  # 24 heads to a group
                for tile in surveyed_tiles(device)]
    k = 4
    for (batch, nheads, headdim, dstate), groups, d_kind, dtype, with_bias, *tile in [*small, *the_130m]:
        torch.manual_seed(groups * 5 + len(d_kind))
        channels = nheads * headdim + 2 * groups * dstate
        xbc = torch.randn(batch, channels + 9, device=device).to(dtype)[:, 4: 4 + channels]
        conv = torch.randn(batch, channels, k - 1, device=device).to(dtype)
        weight = (0.5 * torch.randn(channels, k, device=device)).to(dtype)
        bias = torch.randn(channels, device=device).to(dtype) if with_bias else None
        state = torch.randn(batch, nheads, headdim, dstate, device=device)
        dt, dt_bias = torch.randn(batch, nheads, device=device), torch.randn(nheads, device=device)
        A = -torch.rand(nheads, device=device) * 4 - 0.5
        D = {"none": None, "head": torch.randn(nheads, device=device),
             "channel": torch.randn(nheads, headdim, device=device)}[d_kind]
        args = (state, conv, xbc, weight, bias, dt, dt_bias, A, D)
        with triton_ssd.step_tiles(read=tile[0] if tile else None):
            y = conv_step_read(*args)
        errors = (rel_err(y, torch_ops.conv_then_read(two_kernels, *args)), rel_err(y, torch_ops.conv_step_read(*args)))
        if not (y.dtype == torch.float32 and y.shape == (batch, nheads, headdim) and errors[0] <= 1e-6
                and errors[1] <= (1e-5 if dtype == torch.float32 else 2e-2)):
            failures.append(f"conv step read H={nheads} P={headdim} N={dstate} G={groups} D={d_kind} {dtype} "
                            f"bias={with_bias} tile={tile[0] if tile else triton_ssd.READ_TILE}: errors "
                            f"{[f'{e:.2e}' for e in errors]}")
    return failures


def check_conv_step_commit(device: str) -> list[str]:
    """The committing step in place (two launches) against the torch twin's functional step run on triton's conv: the
    output, the new state (float32, or bfloat16 as state_dtype stores it) and the shifted window, for the rows in
    valid; the rows outside keep their state and window bit for bit. The 130M shape runs at every tile of
    surveyed_tiles, both state dtypes."""
    from types import SimpleNamespace

    from implicit_ssm_eval.model_adapters.backends import torch_ops, triton_conv, triton_ssd
    from implicit_ssm_eval.model_adapters.backends.triton_ssd import conv_step_commit

    twin = SimpleNamespace(causal_conv_silu=triton_conv.causal_conv_silu, state_step=torch_ops.state_step)
    failures = []
    small = itertools.product(((3, 4, 8, 12),), (1, 2), ("none", "head"), (torch.float32, torch.bfloat16),
                              (torch.float32, torch.bfloat16), (True, False), (2, 4))
    the_130m = [((2, 24, 64, 128), 1, "head", torch.bfloat16, state_dtype, True, 4, tile)
                for state_dtype, tile in itertools.product((torch.float32, torch.bfloat16), surveyed_tiles(device))]
    for (batch, nheads, headdim, dstate), groups, d_kind, dtype, state_dtype, masked, k, *tile in [*small, *the_130m]:
        torch.manual_seed(groups * 5 + len(d_kind) + k)
        channels = nheads * headdim + 2 * groups * dstate
        xbc = torch.randn(batch, channels + 9, device=device).to(dtype)[:, 4: 4 + channels]
        conv = torch.randn(batch, channels, k - 1, device=device).to(dtype)
        weight = (0.5 * torch.randn(channels, k, device=device)).to(dtype)
        bias = torch.randn(channels, device=device).to(dtype)
        state = torch.randn(batch, nheads, headdim, dstate, device=device).to(state_dtype)
        dt, dt_bias = torch.randn(batch, nheads, device=device), torch.randn(nheads, device=device)
        A = -torch.rand(nheads, device=device) * 4 - 0.5
        D = {"none": None, "head": torch.randn(nheads, device=device)}[d_kind]
        valid = torch.arange(batch, device=device) != 1 if masked else None
        y_ref, window_ref, state_ref = torch_ops.conv_then_step(twin, state, conv, xbc, weight, bias, dt, dt_bias, A,
                                                                D, valid, False)
        old_state, old_conv = state.clone(), conv.clone()
        with triton_ssd.step_tiles(commit=tile[0] if tile else None):
            y = conv_step_commit(state, conv, xbc, weight, bias, dt, dt_bias, A, D, valid)
        errors = [rel_err(y, y_ref), rel_err(state.float(), state_ref.to(state_dtype).float()),
                  rel_err(conv.float(), window_ref.float())]
        kept = valid is None or (torch.equal(state[1], old_state[1]) and torch.equal(conv[1], old_conv[1]))
        rounding = 1e-5 if state_dtype == torch.float32 else 1e-2  # a value either side of a bfloat16 rounding
        if not (y.dtype == torch.float32 and kept and errors[0] <= 1e-5 and errors[1] <= rounding and errors[2] == 0):
            failures.append(f"conv step commit H={nheads} G={groups} D={d_kind} {dtype} state {state_dtype} "
                            f"masked={masked} k={k} tile={tile[0] if tile else triton_ssd.COMMIT_TILE}: "
                            f"kept={kept} errors {[f'{e:.2e}' for e in errors]}")
    return failures


def check_conv_scan(device: str) -> list[str]:
    """A short sequence's conv inside the one-chunk scan against the two kernels it replaces (triton_conv's conv, then
    ssd_one_chunk: the same float32 sums, so 1e-6) and against the torch twin (torch_ops.conv_scan, 1e-5 in float32;
    it convolves bfloat16 in bfloat16: 2e-2 there). xbc is a strided slice of a wider projection, as in the model;
    the conv window, its bias, D, the final state, padding and an injection summed in the kernel vary."""
    from types import SimpleNamespace

    from implicit_ssm_eval.model_adapters.backends import torch_ops, triton_conv
    from implicit_ssm_eval.model_adapters.backends.triton_ssd import conv_ssd_one_chunk, ssd_one_chunk

    def chunk_scan(x, dt, dt_bias, A, B, C, chunk_size, D, init, final, valid, added=None):
        return ssd_one_chunk(x, dt, A, B, C, D, init, final, dt_bias=dt_bias, valid=valid)

    two_kernels = SimpleNamespace(causal_conv_silu=triton_conv.causal_conv_silu, chunk_scan=chunk_scan)
    failures = []
    batch, nheads, headdim, dstate, k = 3, 4, 8, 12, 4
    f32, bf16 = torch.float32, torch.bfloat16
    cases = [  # each feature both ways at least once (the interpreter takes about 2 s a case)
        (1, 1, True, True, "head", True, f32, True), (3, 2, True, False, "none", False, f32, False),
        (3, 1, False, True, "channel", True, bf16, True), (32, 2, True, True, "head", True, f32, False),
        (32, 1, False, False, "head", False, bf16, False), (64, 1, True, True, "channel", True, bf16, True),
        (64, 2, False, True, "none", True, f32, True), (32, 1, True, True, "head", True, bf16, True)]
    for length, groups, with_window, with_bias, d_kind, final, dtype, injected in cases:
        torch.manual_seed(length * 3 + groups + len(d_kind))
        channels = nheads * headdim + 2 * groups * dstate
        xbc = torch.randn(batch, length, channels + 9, device=device).to(dtype)[..., 4: 4 + channels]
        window = torch.randn(batch, channels, k - 1, device=device).to(dtype) if with_window else None
        weight = (0.5 * torch.randn(channels, k, device=device)).to(dtype)
        bias = torch.randn(channels, device=device).to(dtype) if with_bias else None
        # dt about 0.1, as models have it (larger: the decays of 64 tokens lose float32 digits in either scan)
        dt = 0.5 * torch.randn(batch, length, nheads, device=device) - 2
        dt_bias = 0.5 * torch.randn(nheads, device=device)
        A = -torch.rand(nheads, device=device) * 4 - 0.5
        D = {"none": None, "head": torch.randn(nheads, device=device),
             "channel": torch.randn(nheads, headdim, device=device)}[d_kind]
        state = torch.randn(batch, nheads, headdim, dstate, device=device) if with_window else None
        valid = torch.arange(length, device=device)[None, :] < torch.tensor([[length], [length], [(length + 1) // 2]],
                                                                              device=device)
        added = None
        if injected:  # as the model hands the injection over: slices of one wider tensor, xbc's dtype and dt's
            inject = torch.randn(batch, length, channels + nheads + 3, device=device).to(dtype)
            added = (inject[..., :channels], inject[..., channels: channels + nheads])
            dt = dt.to(dtype)
        args = (xbc, window, weight, bias, dt, dt_bias, A, D, headdim, dstate, 64, state, final, valid, added)
        y, s = conv_ssd_one_chunk(xbc, window, weight, bias, dt, A, D, headdim, dstate, state, final,
                                  dt_bias=dt_bias, valid=valid, added=added)
        y2, s2 = torch_ops.conv_then_scan(two_kernels, *args)
        y_ref, s_ref = torch_ops.conv_scan(*args)
        errors = [rel_err(y, y2), rel_err(y, y_ref)] + ([rel_err(s, s2), rel_err(s, s_ref)] if final else [])
        twin_tol = 1e-5 if dtype == torch.float32 else 2e-2
        # xbc + the injection rounded to bfloat16 by the kernel and by torch (the two kernels' reference adds it):
        # Triton's interpreter rounds toward zero where torch rounds to nearest, so bfloat16 sums may differ by an ulp
        kernels_tol = 1e-6 if not (injected and dtype == torch.bfloat16) else 2e-2
        ok = y.dtype == torch.float32 and (s is None) == (not final) and max(errors[0::2]) <= kernels_tol and \
            max(errors[1::2]) <= twin_tol
        if not ok:
            failures.append(f"conv scan L={length} G={groups} window={with_window} bias={with_bias} D={d_kind} "
                            f"final={final} {dtype} injected={injected}: errors {[f'{e:.2e}' for e in errors]}")
    return failures


if __name__ == "__main__":
    run_kernel_check(check)
