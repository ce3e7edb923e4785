"""backend=triton (mamba_ssm's kernels) against the torch backend, on CUDA, and the CUDA-graph readings and decoding
against the eager ones. Tolerances are testing.RTOL's: the Triton backend runs float32 in IEEE precision, or tf32x3
in the one-chunk scan (not TF32, see backends/triton_ops.py), so float32 is held to float32's tolerance; bfloat16 to
bfloat16's."""

import pytest
import torch

from implicit_ssm_eval.model_adapters.backends import get_ops, resolve_backend, torch_ops
from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.runtime import Runtime
from implicit_ssm_eval.model_adapters.testing import RTOL, rel_err, tiny_model

pytestmark = pytest.mark.gpu


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
    """Raw dt with its bias (discretised in the one-chunk kernel up to MAX_LENGTH, before mamba_ssm's beyond) and a
    right-padded second row."""
    x, dt, A, B, C, D, s0 = ssd_inputs(2, length, 4, 32, ngroups, 16, dtype)
    dt_bias = torch.linspace(-3, 1, 4, device="cuda")
    valid = torch.ones(2, length, dtype=torch.bool, device="cuda")
    valid[1, (length + 1) // 2:] = False
    y, final = triton_ops.chunk_scan(x, dt, dt_bias, A, B, C, 64, D, s0, valid=valid)
    y_ref, final_ref = torch_ops.chunk_scan(x, dt, dt_bias, A, B, C, 64, D, s0, valid=valid)
    close(y, y_ref, dtype, "outputs")
    close(final, final_ref, dtype, "final state")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_step_discretises_and_does_not_mutate(triton_ops, dtype):
    x, dt, A, B, C, D, s0 = ssd_inputs(3, 1, 4, 32, 2, 16, dtype)
    raw, bias = torch.randn(3, 4, device="cuda").to(dtype), torch.randn(4, device="cuda")
    before = s0.clone()
    y, s1 = triton_ops.state_step(s0, x[:, 0], raw, bias, A, B[:, 0], C[:, 0], D)
    y_ref, s1_ref = torch_ops.state_step(s0, x[:, 0], raw, bias, A, B[:, 0], C[:, 0], D)
    assert torch.equal(s0, before)
    close(y, y_ref, dtype, "outputs")
    close(s1, s1_ref, dtype, "new state")
    y_read, none = triton_ops.state_step(s0, x[:, 0], raw, bias, A, B[:, 0], C[:, 0], D, want_state=False)
    assert none is None and torch.equal(s0, before)  # an iteration that commits nothing: our read-only kernel
    close(y_read, y_ref, dtype, "outputs without the state")


def test_gated_rmsnorm(triton_ops):
    x, z, w = torch.randn(4, 9, 64, device="cuda"), torch.randn(4, 9, 64, device="cuda"), torch.rand(64, device="cuda")
    close(triton_ops.gated_rmsnorm(x, z, w, 1e-5, 32), torch_ops.gated_rmsnorm(x, z, w, 1e-5, 32), torch.float32,
          "gated norm")


# Two groups of 32 (our row-blocked kernel) or of 1,024 (in float32 mamba_ssm's: groups wider than
# triton_norm.WIDEST; written in bfloat16, ours again: triton_norm.takes_narrowing)
@pytest.mark.parametrize("width", [64, 2048])
def test_gated_rmsnorm_in_the_projection_dtype(triton_ops, width):
    from implicit_ssm_eval.model_adapters.backends import triton_norm

    assert triton_norm.takes(width // 2) == (width == 64)
    y, z = torch.randn(300, width, device="cuda"), torch.randn(300, width + 8, device="cuda")[:, 8:]
    w = torch.rand(width, device="cuda")
    for out_dtype in (None, torch.bfloat16):
        got = triton_ops.gated_rmsnorm(y, z, w, 1e-5, width // 2, out_dtype)
        assert got.dtype == (out_dtype or torch.float32)
        close(got, torch_ops.gated_rmsnorm(y, z, w, 1e-5, width // 2, out_dtype), got.dtype, "gated norm")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_x", [False, True])
@pytest.mark.parametrize("width", [96, 768])
def test_fused_residual_add_and_norm(triton_ops, dtype, with_x, width):
    residual = torch.randn(5, 7, width, device="cuda")
    x = torch.randn(5, 7, width, device="cuda").to(dtype) if with_x else None
    w = (1 + 0.1 * torch.randn(width, device="cuda")).to(dtype)
    for out_dtype in (dtype, torch.float32):
        normed, res = triton_ops.add_rmsnorm(x, residual, w, 1e-5, out_dtype)
        normed_ref, res_ref = torch_ops.add_rmsnorm(x, residual, w, 1e-5, out_dtype)
        assert normed.dtype == out_dtype and res.dtype == torch.float32
        close(normed, normed_ref, out_dtype, "normed")
        close(res, res_ref, torch.float32, "residual")


def pair(kind, dtype, **kw):
    """The same model on the torch kernels and on the triton ones (eagerly: no graphs)."""
    model = tiny_model(kind, contractive=kind == "implicit", dtype=dtype, **kw).cuda()
    return Runtime(model, "torch"), Runtime(model, "triton")


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
@pytest.mark.parametrize("mode,block", [("simultaneous", None), ("sequential", None), ("blockwise", 8)])
def test_implicit_fixed_point_at_fixed_k(dtype, mode, block):
    ref, fast = pair("implicit", dtype, chunk_size=32)
    ids = torch.randint(0, 37, (2, 45), device="cuda")
    budget = Budget(max_iter=12, tol=0.0, mode=mode, block_size=block)
    with torch.no_grad():
        close(fast(ids, budget).hidden, ref(ids, budget).hidden, dtype, f"{mode} hidden")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [8, 16])
def test_blocks_with_the_conv_in_the_scan_read_as_with_the_kernels_apart(dtype, block, triton_ops, monkeypatch):
    """triton_ops.FUSED_CONV_SCAN and INJECT_IN_KERNELS (off by default) on: blockwise readings at a fixed budget take
    the fused kernel (counted) and read as with them off, to the dtype's tolerance: hidden states, SSM states and conv
    windows (which hold the injected inputs)."""
    from implicit_ssm_eval.model_adapters.backends import triton_ssd

    model = tiny_model("implicit", contractive=True, dtype=dtype).cuda()
    ids = torch.randint(0, 37, (3, 40), device="cuda")
    budget = Budget(max_iter=10, tol=0.0, mode="blockwise", block_size=block)
    fused_calls = []
    plain = triton_ssd.conv_ssd_one_chunk
    monkeypatch.setattr(triton_ssd, "conv_ssd_one_chunk", lambda *a, **k: fused_calls.append(1) or plain(*a, **k))
    readings = {}
    for on in (False, True):
        monkeypatch.setattr(triton_ops, "FUSED_CONV_SCAN", on)
        monkeypatch.setattr(triton_ops, "INJECT_IN_KERNELS", on)
        with torch.no_grad():
            readings[on] = Runtime(model, "triton")(ids, budget)
        assert bool(fused_calls) == on
    fused, apart = readings[True], readings[False]
    close(fused.hidden, apart.hidden, dtype, "hidden")
    for a, b in zip(fused.state, apart.state):
        close(a.ssm, b.ssm, dtype, "ssm state")
        close(a.conv, b.conv, dtype, "conv window")


@pytest.mark.parametrize("budget", [
    Budget(max_iter=6, tol=0.0, mode="sequential"),
    Budget(max_iter=40, tol=1e-3, mode="sequential"),
    Budget(max_iter=40, tol=1e-3, mode="blockwise", block_size=8),
])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_captured_readings_equal_uncaptured_and_eager_ones(budget, backend):
    """CUDA graphs replay exactly the masked arithmetic; the masked arithmetic is the eager solver's."""
    model = tiny_model("implicit", contractive=True).cuda()
    ids = torch.randint(0, 37, (4, 29), device="cuda")
    lengths = torch.tensor([29, 11, 20, 1], device="cuda")
    readings = {}
    with torch.no_grad():
        for mode in ("off", "masked", "capture"):
            runtime = Runtime(model, backend, mode)
            readings[mode] = runtime(ids, budget, lengths=lengths)
        replayed = runtime(ids, budget, lengths=lengths)  # the cached graphs, replayed
    captured, masked, eager = readings["capture"], readings["masked"], readings["off"]
    assert torch.equal(replayed.hidden, captured.hidden)
    assert torch.equal(captured.hidden, masked.hidden)
    assert torch.equal(captured.stats.iterations, masked.stats.iterations)
    for i, n in enumerate(lengths.tolist()):
        close(masked.hidden[i, :n], eager.hidden[i, :n], torch.float32, f"hidden {i}")
    assert torch.equal(masked.stats.iterations, eager.stats.iterations)
    for a, b in zip(captured.state, eager.state):
        close(a.ssm, b.ssm, torch.float32, "ssm state")


@pytest.mark.parametrize("mode,block", [("sequential", None), ("blockwise", 4)])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_captured_backoff_readings_replay_the_masked_ones(mode, block, backend):
    """The backoff solver's damping per row lives in buffers of the captured solve: replays reset and advance it as
    the uncaptured masked solve does. A model whose iteration does not contract, so that rows stall and back off."""
    model = tiny_model("implicit", seed=2).cuda()
    torch.manual_seed(3)
    ids = torch.randint(0, 37, (4, 13), device="cuda")
    budget = Budget(max_iter=60, tol=1e-6, tau=1.0, solver="backoff", mode=mode, block_size=block)
    with torch.no_grad():
        masked = Runtime(model, backend, "masked")(ids, budget)
        runtime = Runtime(model, backend, "capture")
        captured, replayed = runtime(ids, budget), runtime(ids, budget)
        plain = runtime(ids, budget.replace(solver="fixed_point"))
    assert torch.equal(captured.hidden, masked.hidden) and torch.equal(replayed.hidden, captured.hidden)
    assert torch.equal(captured.stats.iterations, masked.stats.iterations)
    assert not torch.equal(plain.hidden, captured.hidden), "no row backed off: the test would not see the solver"


@pytest.mark.parametrize("tol", [0.0, 1e-3])
@pytest.mark.parametrize("mode,block", [("sequential", None), ("blockwise", 4)])
def test_captured_lanes_on_their_own_streams_read_as_one_group(mode, block, tol):
    """Lanes (row groups on their own CUDA streams, forked and joined around the reading, advanced in turn by the
    host) replay the same kernels as the uncaptured masked lanes, bit for bit, and read as one group does (other
    GEMM shapes: float tolerance); a state passed in and the state out, rows ending early; at a tolerance each
    lane's host looks wait for that lane's stream only."""
    model = tiny_model("implicit", contractive=True, d_state=64).cuda()
    torch.manual_seed(5)
    ids = torch.randint(0, 37, (6, 13), device="cuda")
    lengths = torch.tensor([13, 4, 9, 13, 1, 7], device="cuda")
    budget = Budget(max_iter=5 if not tol else 30, tol=tol, mode=mode, block_size=block)
    with torch.inference_mode():
        start = model(torch.randint(0, 37, (6, 3), device="cuda"), budget).state
        one = Runtime(model, "triton", "capture")(ids, budget, lengths=lengths, state=start)
        masked = Runtime(model, "triton", "masked", lanes=2)(ids, budget, lengths=lengths, state=start)
        runtime = Runtime(model, "triton", "capture", lanes=2)
        captured, replayed = (runtime(ids, budget, lengths=lengths, state=start) for _ in range(2))
    assert torch.equal(captured.hidden, masked.hidden) and torch.equal(replayed.hidden, captured.hidden)
    for a, b in zip(replayed.state, masked.state):
        assert torch.equal(a.ssm, b.ssm) and torch.equal(a.conv, b.conv)
    close(captured.hidden, one.hidden, torch.float32, "hidden")
    for a, b in zip(captured.state, one.state):
        close(a.ssm, b.ssm, torch.float32, "ssm state")
    assert torch.equal(captured.stats.iterations, one.stats.iterations)


@pytest.mark.parametrize("budget", [Budget(max_iter=4, tol=0.0, mode="sequential"),
                                    Budget(max_iter=30, tol=1e-3, mode="sequential")])
def test_a_warm_sequential_reading_for_scoring_holds_no_second_state(budget):
    """The commit advances the piece solve's own state in place (the ended rows masked, not restored from a copy),
    and a scoring reading (want_state=False) copies no state in or out: a warm call allocates well under one state."""
    model = tiny_model("implicit", contractive=True, d_state=128).cuda()
    runtime = Runtime(model, "triton", "capture")
    ids = torch.randint(0, 37, (16, 6), device="cuda")
    lengths = torch.tensor([6, 3] * 8, device="cuda")
    state_bytes = sum(t.numel() * t.element_size() for s in model.empty_state(16) for t in s)
    with torch.inference_mode():
        runtime(ids, budget, lengths=lengths, want_state=False)  # cold: the capture
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        runtime(ids, budget, lengths=lengths, want_state=False)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    assert peak < state_bytes / 4, f"a warm reading allocated {peak} bytes; a state is {state_bytes}"


@pytest.mark.parametrize("budget", [Budget(max_iter=6, tol=0.0, mode="sequential"),
                                    Budget(max_iter=40, tol=1e-3, mode="blockwise", block_size=8)])
def test_a_bfloat16_state_in_triton_graphs_gives_the_torch_backends_reading(budget):
    """state_dtype=bfloat16: mamba_ssm's state update, our read-only step and one-chunk scan read and write the
    bfloat16 state as the torch backend does (float32 arithmetic, rounded when stored), captured or not."""
    model = tiny_model("implicit", contractive=True).cuda()
    model.set_state_dtype(torch.bfloat16)
    ids = torch.randint(0, 37, (4, 29), device="cuda")
    lengths = torch.tensor([29, 11, 20, 1], device="cuda")
    with torch.no_grad():
        eager = Runtime(model, "torch", "off")(ids, budget, lengths=lengths)
        captured = Runtime(model, "triton", "capture")(ids, budget, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):  # a bfloat16 ulp of a state that rounds the other way
        close(captured.hidden[i, :n], eager.hidden[i, :n], torch.bfloat16, f"hidden {i}")
    for a, b in zip(captured.state, eager.state):
        assert a.ssm.dtype == b.ssm.dtype == torch.bfloat16
        close(a.ssm, b.ssm, torch.bfloat16, "ssm state")


@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("kind,budget", [("explicit", None), ("implicit", Budget(max_iter=4, mode="sequential")),
                                         ("implicit", Budget(max_iter=30, tol=1e-3, mode="sequential"))])
def test_graphed_decoding_generates_what_eager_decoding_does(kind, budget, state_dtype):
    from implicit_ssm_eval.model_adapters.runtime.generation import greedy_generate

    model = tiny_model(kind, contractive=kind == "implicit").cuda()
    model.set_state_dtype(state_dtype)
    runtime = Runtime(model, "triton", "capture")
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    eager = greedy_generate(runtime, prompts, 20, budget, lambda r, t: False, 37, cuda_graphs=False)
    graphed = greedy_generate(runtime, prompts, 20, budget, lambda r, t: False, 37, cuda_graphs=True)
    assert graphed == eager and all(len(t) == 20 for t in graphed)


@pytest.mark.parametrize("kind,budget", [("explicit", None), ("implicit", Budget(max_iter=4, mode="sequential"))])
def test_graphed_decoding_starts_from_the_prompts_state(kind, budget):
    """The capture's warm-up steps (a triton step advances the SSM state in place) leave the state that decoding
    starts from as the prompt left it, the graph holds the prompt's state itself (no second copy), and its first
    step gives the eager step's token from it."""
    from implicit_ssm_eval.model_adapters.mamba2 import MixerState
    from implicit_ssm_eval.model_adapters.runtime.generation import EagerStep, GraphedStep

    runtime = Runtime(tiny_model(kind, contractive=kind == "implicit").cuda(), "triton", "capture")
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], device="cuda")
    with torch.inference_mode():
        state = runtime(ids, budget).state
        snapshot = [MixerState(s.conv.clone(), s.ssm.clone()) for s in state]
        graphed = GraphedStep(runtime, state, budget, 37)
        assert all(static.ssm.data_ptr() == given.ssm.data_ptr() for static, given in zip(graphed.state, state))
        for static, before in zip(graphed.state, snapshot):
            assert torch.equal(static.conv, before.conv) and torch.equal(static.ssm, before.ssm)
        token = torch.tensor([11, 12], device="cuda")
        eager = EagerStep(runtime, [MixerState(s.conv.clone(), s.ssm.clone()) for s in snapshot], budget, 37)
        assert torch.equal(graphed(token)[0], eager(token)[0])
        for static, stepped in zip(graphed.state, eager.state):
            close(static.ssm, stepped.ssm, torch.float32, "ssm state after one step")


SCORING = [("explicit", None, ()), ("implicit", Budget(max_iter=5, tol=0.0), ()),
           ("implicit", Budget(max_iter=5, tol=0.0), (1, 3)), ("implicit", Budget(max_iter=40, tol=1e-3), ())]


@pytest.mark.parametrize("kind,budget,anytime", SCORING)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_graphed_scoring_forward_gives_the_eager_numbers(kind, budget, anytime, backend):
    """graphs "capture": a forward without state (scoring) runs at a padded length (51 -> 52), captured when that
    shape comes twice in a row and replayed after: exactly the numbers of its first, eager run at that shape and of
    the capture's warm-up, and the eager numbers at the exact length to float32's tolerance (padded rows or not,
    anytime readings and statistics included); a replay does not overwrite what an earlier one returned. At tol > 0
    the reading is replayed one masked update at a time (runtime.readings.MaskedReadingGraph), against the gathering
    solver."""
    model = tiny_model(kind, contractive=kind == "implicit").cuda()
    eager_runtime, runtime = Runtime(model, backend, "off"), Runtime(model, backend, "capture")
    g = torch.Generator(device="cuda").manual_seed(0)
    batches = [torch.randint(0, 37, (4, 51), device="cuda", generator=g) for _ in range(3)]
    lengths = torch.tensor([51, 3, 27, 1], device="cuda")
    kw = dict(want_state=False, **({"budget": budget, "anytime": anytime} if budget else {}))
    with torch.no_grad():
        eager = [eager_runtime(ids, lengths=lengths, **kw) for ids in batches] + [eager_runtime(batches[0], **kw)]
        replays = [runtime(ids, lengths=lengths, **kw) for ids in batches] + [runtime(batches[0], **kw)]
        again = [runtime(ids, lengths=lengths, **kw) for ids in batches[:2]]
        with_state = runtime(batches[0], budget) if budget else runtime(batches[0])
    key = (budget, budget.anytime_budgets(anytime)) if budget else ()
    assert list(runtime.cache("forward_graphs", dict).graphs) == [((4, 52), *key)]  # captured at the second call
    assert torch.equal(again[0].hidden, replays[0].hidden)  # a replay gives the bits of the first, eager run
    assert torch.equal(again[1].hidden, replays[1].hidden)  # and of the capture's warm-up
    for a, b in zip(replays, eager):
        assert a.hidden.shape == b.hidden.shape
        for i, n in enumerate(lengths.tolist() if a is not replays[-1] else [51] * 4):
            close(a.hidden[i, :n], b.hidden[i, :n], torch.float32, f"hidden of row {i}")
        if budget:
            assert torch.equal(a.stats.iterations, b.stats.iterations)
            close(a.stats.residual, b.stats.residual, torch.float32, "residuals")
            assert sorted(a.anytime) == sorted(b.anytime)
            for k in a.anytime:
                close(a.anytime[k].hidden[0], b.anytime[k].hidden[0], torch.float32, f"anytime {k}")
    assert with_state.state is not None  # a forward that asks for its state runs eagerly


@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_forward_graphs_of_several_lengths_share_one_pool_in_any_order(kind):
    """Graphs of three padded shapes, each captured when it came twice in a row, into one memory pool, and replayed
    in another order than captured: each gives the bits of its shape's first (eager) run, and no replay overwrites
    what an earlier one returned."""
    runtime = Runtime(tiny_model(kind, contractive=kind == "implicit").cuda(), "triton", "capture")
    kw = {"want_state": False, **({"budget": Budget(max_iter=4, tol=0.0)} if kind == "implicit" else {})}
    g = torch.Generator(device="cuda").manual_seed(0)
    batches = [torch.randint(0, 37, shape, device="cuda", generator=g) for shape in ((4, 20), (4, 33), (2, 51))]
    with torch.no_grad():
        first, captured = [], []
        for ids in batches:
            first.append(runtime(ids, **kw).hidden)  # eager, at the padded shape
            captured.append(runtime(ids, **kw).hidden)  # the capture's warm-up
        replayed = [runtime(ids, **kw).hidden for ids in reversed(batches)][::-1]
    graphs = runtime.cache("forward_graphs", dict)
    assert [key[0] for key in graphs.graphs] == [(2, 52), (4, 34), (4, 20)]  # the most recently used last
    assert graphs.pool is not None and all(graph.graph.pool() == graphs.pool for graph in graphs.graphs.values())
    for i in range(3):
        assert torch.equal(captured[i], first[i]) and torch.equal(replayed[i], first[i]), f"batch {i}"


def test_scoring_with_anderson_is_not_graphed():
    """Anderson's update is not captured: the forward stays eager (and correct)."""
    runtime = Runtime(tiny_model("implicit", contractive=True).cuda(), "torch", "capture")
    ids = torch.randint(0, 37, (2, 20), device="cuda")
    budget = Budget(max_iter=30, tol=1e-3, solver="anderson")
    with torch.no_grad():
        runs = [runtime(ids, budget, want_state=False) for _ in range(3)]
    assert "forward_graphs" not in runtime._caches and torch.equal(runs[0].hidden, runs[2].hidden)


def test_masked_scoring_graphs_of_several_lengths_share_one_pool_and_stop_with_the_slowest_row():
    """tol > 0: graphs of two padded shapes in one pool, replayed in another order than captured, each giving its
    shape's first-run bits; a replay evaluates f as often as its slowest row needs, plus the final evaluation."""
    runtime = Runtime(tiny_model("implicit", contractive=True).cuda(), "triton", "capture")
    budget = Budget(max_iter=40, tol=1e-3)
    g = torch.Generator(device="cuda").manual_seed(1)
    batches = [torch.randint(0, 37, shape, device="cuda", generator=g) for shape in ((4, 20), (3, 45))]
    with torch.no_grad():
        first = [runtime(ids, budget, want_state=False) for ids in batches for _ in range(2)][::2]
        graphs = runtime.cache("forward_graphs", dict)
        counts = [graph.solver.evaluations for graph in graphs.graphs.values()]
        replayed = [runtime(ids, budget, want_state=False) for ids in reversed(batches)][::-1]
    assert [key[0] for key in graphs.graphs] == [(3, 46), (4, 20)]
    assert all(graph.solver.graphs["segment"].pool() == graphs.pool for graph in graphs.graphs.values())
    for i, graph in enumerate(reversed(graphs.graphs.values())):  # made in the order of batches
        assert torch.equal(replayed[i].hidden, first[i].hidden) and torch.equal(replayed[i].stats.iterations,
                                                                                 first[i].stats.iterations)
        assert graph.solver.evaluations - counts[i] == int(first[i].stats.iterations.max()) < budget.max_iter


def test_auto_resolves_to_triton_on_cuda():
    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("auto", "cpu") == "torch"


def test_training_with_bf16_autocast_learns(tmp_path):
    """On CUDA training runs under bfloat16 autocast (the scan stays float32): it must still learn."""
    from implicit_ssm_eval.harness.train import TrainConfig, Trainer
    from implicit_ssm_eval.tasks.state_tracking import training_batches

    cfg = TrainConfig(task="parity", kind="explicit", device="cuda", steps=150, batch_size=32, lr=5e-3,
                      warmup_steps=10, arch=dict(d_model=32, d_state=8, headdim=8))
    trainer = Trainer(cfg, tmp_path)
    batches = training_batches("parity", min_len=1, max_len=6, batch_size=32, seed=0)
    rows = [trainer.train_step(next(batches)) for _ in range(150)]
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-10:]) / 10
    assert last < 0.6 * first and sum(r["token_acc"] for r in rows[-10:]) / 10 > 0.75, (first, last)
