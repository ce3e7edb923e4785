"""GPU benchmarks, side by side in one process, of the paper's 130M configuration (24 layers, d_model 768,
d_state 128, headdim 64, expand 2) at random initialisation in bfloat16, against mamba_ssm's MambaLMHeadModel on
the same weights (a mamba_ssm checkpoint written by save_pretrained and loaded by our load_checkpoint):

    python bench/gpu_bench.py --out $OUT/bench.json [--sections forward,host,profile,overhead,lengths,tolerance,...]

forward     explicit forward with logits, batch 16 x 2048: ours vs mamba_ssm (use_mem_eff_path=False); ours as
            scoring runs it (no final states), replayed from a CUDA graph (as scoring on a GPU runs it), with the
            states, and with float32 logits
host        host launch time vs wall time per forward, our host synchronisations, a cProfile of our launches
            (host_cprofile.txt), and both forwards replayed from a CUDA graph
profile     the share of our forward's GPU time per kind of kernel (projections, scan, conv, norms, ...)
overhead    implicit forward at a forced k / (k x explicit forward), eager and in CUDA graphs
lengths     a stream of --batches batches whose lengths vary as a task's do (uniform in --length / 2 .. --length
            tokens, sorted, longest first), with logits: mamba_ssm, ours eager, ours with CUDA graphs of the exact
            batch shapes, and ours with graphs of padded lengths (graphs.padded_length: as scoring runs on a GPU);
            a cold pass (empty graph caches, captures included) and a warm one
tolerance   implicit scoring at tol > 0 (--tol, default 0.1; max_iter 16; simultaneous) over the same stream of
            varied lengths: eager (the gathering solver, a host look at the residuals each iteration) against CUDA
            graphs of padded lengths (reading.MaskedReadingGraph: one masked update per replay), cold and warm,
            with the f evaluations each makes; the warm graphs' time per evaluation against our explicit forward's
            (graphed)
sequential  implicit scoring in the sequential reading, k = 4, tol 0, batch 16 x 128, in CUDA graphs: the iterations
            with our read-only step kernel vs mamba_ssm's state update, vs the steps' conv, state and window apart,
            vs mamba_ssm's gated norm and a cast, vs both as at e722f6e (interleaved, each captured afresh),
            --eager without graphs; the
            same 16 rows decoded by the explicit model (ours and mamba_ssm's generate(cg=True): one token through
            the stack a step, as an f evaluation is); the simultaneous reading of the same work, eager and graphed
step_tiles  the sequential reading of the sequential section (k = 4, 16 x 128, graphs), float32 and bfloat16 states:
            conv_step_read at each tile of --read-tiles, conv_step_commit at each of --commit-tiles, the first of
            each together, against their defaults (triton_ssd.step_tiles; interleaved, each captured afresh);
            greedy decoding (batch 1 and 16) at each of --commit-tiles against the default; device_limits.sh cold
            passes the tiles that bench/kernels.py's cold survey ranks first
chain       the sequential reading of the sequential section, float32 and bfloat16 states, with its iterations
            chained (triton_chain: the norms' sums of squares carried from kernel to kernel, three launches a layer)
            against the default (interleaved, each captured afresh); the chained reading's hidden states against
            the default's; one iteration kernel by kernel both ways (chain_profile.txt); greedy decoding (batch 1
            and 16) chained and not; an f evaluation of either against our explicit decoding step and mamba_ssm's
lanes       the sequential reading of the sequential section (and blocks of 16 at k = 4), float32 and bfloat16 states,
            with its 16 rows in 1, 2 or 4 lanes (row groups on their own CUDA streams: Runtime(lanes=...),
            interleaved, each captured afresh); the hidden states of each against one lane; the simultaneous
            reading of the same work in CUDA graphs, and the best sequential rate's gap to it
step_profile  kernel by kernel, one f evaluation of the sequential reading (batch 16, eager): an iteration and the
            final, committing one (step_profile.txt)
decode      greedy decoding tokens/s, batch 1 and 16: our explicit model (CUDA graph) vs mamba_ssm
            generate(cg=True), ours with the step's kernels as at e722f6e (conv, state and window apart, the gated
            norm cast), and our
            implicit model at k = 4; steady state (prefill and capture excluded: the
            rate between a 64- and a 320-token generation)
fla_forward flash-linear-attention's Mamba2 (bench/fla_anchor.py: fla 0.6.0, the same weights) as a second anchor:
            its scoring forward with logits at the forward section's shape, its logits' error against mamba_ssm's
            (and ours), and ours against the faster anchor (needs the forward section before it)
fla_decode  fla's greedy decoding at batch 1 and 16, through its own generate and through a bare loop over its
            cache, measured as the decode section measures, and ours against the faster anchor (needs decode
            before it). Both fla sections skip with a message when fla does not import.

memory      peak GPU memory (MiB above what was allocated before) of the same work, ours beside mamba_ssm where it
            has the same work: the scoring forward (batch x length) with logits and of the stack alone, decoding from
            cold (batch 16, 64 + 64 tokens, CUDA graphs); our implicit readings (mamba_ssm has no fixed point:
            scoring at tol > 0, the sequential reading at k = 4 on 16 x 128, the blockwise reading at k = 4, block
            256) each against mamba_ssm's explicit forward of its shape; the sequential and blockwise readings as
            scoring runs them on a GPU, from a new runtime (their piece solves' state and capture included)
auto_batch  the batch that batch_size=auto picks (halving from --max-batch-size) for --length tokens, for the
            explicit model and the implicit one with anytime budgets 1;2;4, then a scoring call of that many
            distinct requests of that length at that size: that it runs without running out of memory, and its peak
lm_tolerance  scoring at the stored budget (tol 0.05, max_iter 64, simultaneous) of the language model
            checkpoints/text-implicit (4 layers, d_model 256, bfloat16) on held-out pydoc windows (--lm-docs x 256
            tokens, batch --lm-batch): eager (rows leave the batch as they stop) and in CUDA graphs (masked), against
            mean iterations x the forward of its explicit twin checkpoints/text-explicit on the same batches

Every time is the median of CUDA-event timings after warm-up (Triton compiles on first use). Prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from implicit_ssm_eval.model_adapters.config import Budget, ModelConfig
from implicit_ssm_eval.model_adapters.formats import load_checkpoint
from implicit_ssm_eval.model_adapters.models import build_model
from implicit_ssm_eval.model_adapters.runtime import Runtime

VOCAB = 50277
RESULTS: dict = {}


def timed(fn, warmup: int = 3, reps: int = 10) -> float:
    """Median milliseconds of fn() over reps, CUDA events, after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def mamba_pair(root: Path):
    """(mamba_ssm's model, ours) on the same random 130M weights, bfloat16, on the GPU (ours: the model; each section
    runs it through Runtimes of the triton kernels, eagerly or with CUDA graphs)."""
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    torch.manual_seed(0)
    cfg = MambaConfig(d_model=768, n_layer=24, d_intermediate=0, vocab_size=VOCAB, pad_vocab_size_multiple=16,
                      ssm_cfg={"layer": "Mamba2", "use_mem_eff_path": False}, rms_norm=True, residual_in_fp32=True,
                      fused_add_norm=True, tie_embeddings=True)
    theirs = MambaLMHeadModel(cfg, device="cuda", dtype=torch.float32)
    theirs.save_pretrained(str(root))
    theirs = theirs.to(torch.bfloat16).eval()
    ours = load_checkpoint(root, dtype=torch.bfloat16, device="cuda").model
    return theirs, ours


def runtimes(model) -> dict[str, Runtime]:
    """The model on the triton kernels, eagerly ("off") and with CUDA graphs ("capture"): each keeps its own
    captures, so switching between them drops nothing."""
    return {graphs: Runtime(model, "triton", graphs) for graphs in ("off", "capture")}


def implicit_twin(explicit):
    cfg = ModelConfig.from_dict({**explicit.cfg.to_dict(), "kind": "implicit", "budget": {"max_iter": 4}})
    model = build_model(cfg).to("cuda", torch.bfloat16).eval()
    model.load_state_dict(explicit.state_dict(), strict=False)  # the same stack; the injection is its own
    return model


def section_ceilings(args, pair) -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    RESULTS["bf16_matmul_tflops"] = 2 * 8192**3 / timed(lambda: a @ b) / 1e9
    x = torch.randn(2**28, device="cuda")
    y = torch.empty_like(x)
    RESULTS["copy_tb_s"] = 2 * x.numel() * 4 / timed(lambda: y.copy_(x)) / 1e9


def forward_variants(pair, ids) -> dict:
    """The timed forwards, each returning logits. Ours as lm-eval scores (want_state=False: no final states, which
    mamba_ssm's forward does not compute either), with the states (as a prefill computes them), and with float32
    logits (what `logits()` gives the log-softmax)."""
    theirs, model = pair
    bf16 = torch.bfloat16
    rt = runtimes(model)  # graphs: as lm-eval scores on a GPU (cuda_graphs=auto), replayed from a graph of its shape
    return {"mamba_ssm": lambda: theirs(ids).logits,
            "ours": lambda: model.lm_head(rt["off"](ids, want_state=False).hidden.to(bf16)),
            "ours_graphs": lambda: model.lm_head(rt["capture"](ids, want_state=False).hidden.to(bf16)),
            "ours_with_state": lambda: model.lm_head(rt["off"](ids).hidden.to(bf16)),
            "ours_fp32_logits": lambda: model.logits(rt["off"](ids, want_state=False).hidden)}


def section_forward(args, pair) -> None:
    ids = torch.randint(0, VOCAB, (args.batch, args.length), device="cuda")
    variants = forward_variants(pair, ids)
    with torch.inference_mode():
        for _ in range(2):  # interleaved rounds: the machine is shared
            for name, fn in variants.items():
                RESULTS.setdefault(f"forward_{name}_ms", []).append(timed(fn))
    for name in variants:
        RESULTS[f"forward_{name}_ms"] = min(RESULTS[f"forward_{name}_ms"])
    RESULTS["forward_speed_vs_mamba_ssm"] = RESULTS["forward_mamba_ssm_ms"] / RESULTS["forward_ours_ms"]
    RESULTS["forward_graphs_speed_vs_mamba_ssm"] = RESULTS["forward_mamba_ssm_ms"] / RESULTS["forward_ours_graphs_ms"]
    params = sum(p.numel() for p in pair[1].parameters())
    RESULTS["forward_ours_fraction_of_790_tflops"] = 2 * params * ids.numel() / RESULTS["forward_ours_ms"] / 1e9 / 790


KINDS = (("gemm", ("gemm", "nvjet", "cutlass", "sm90_xmma", "ampere", "cublas")), ("scan", ("chunk", "state", "bmm")),
         ("conv", ("conv",)), ("norms", ("layer_norm", "rmsnorm", "_layer_norm")),
         ("copies and casts", ("copy", "cast", "to_copy", "cat")))


def section_profile(args, pair) -> None:
    from torch.profiler import ProfilerActivity, profile

    _, model = pair
    ours = runtimes(model)["off"]
    ids = torch.randint(0, VOCAB, (args.batch, args.length), device="cuda")
    with torch.inference_mode():
        model.lm_head(ours(ids, want_state=False).hidden.to(torch.bfloat16))
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                model.lm_head(ours(ids, want_state=False).hidden.to(torch.bfloat16))
            torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key.lower()
        kind = next((k for k, needles in KINDS if any(n in name for n in needles)), "elementwise and other")
        totals[kind] = totals.get(kind, 0.0) + getattr(event, "device_time_total", 0.0)
    whole = sum(totals.values())
    RESULTS["profile_share"] = {k: round(v / whole, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    RESULTS["profile_ms_per_forward"] = whole / 3 / 1e3
    (args.out.parent / "profile.txt").write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))


def host_and_wall(fn, reps: int = 10) -> tuple[float, float]:
    """Median milliseconds (host, wall) of fn() from an idle GPU: host = until fn returns (the launches), wall = until
    the GPU is done. host close to wall: the launches, not the kernels, set the pace."""
    for _ in range(3):
        fn()
    hosts, walls = [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        launched = time.perf_counter()
        torch.cuda.synchronize()
        hosts.append(launched - start)
        walls.append(time.perf_counter() - start)
    return statistics.median(hosts) * 1e3, statistics.median(walls) * 1e3


def graphed(fn):
    """fn captured in a CUDA graph (static inputs): returns replay, or raises where capture fails."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def section_host(args, pair) -> None:
    """Where the forward's wall time goes besides kernels: host launch time per variant, the host synchronisations
    of ours, a cProfile of our launches, and each model's forward replayed from a CUDA graph."""
    import cProfile
    import io
    import pstats

    ids = torch.randint(0, VOCAB, (args.batch, args.length), device="cuda")
    variants = forward_variants(pair, ids)
    with torch.inference_mode():
        for name, fn in variants.items():
            RESULTS[f"host_{name}_launch_ms"], RESULTS[f"host_{name}_wall_ms"] = host_and_wall(fn)
        torch.cuda.set_sync_debug_mode("warn")
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            variants["ours"]()
        torch.cuda.set_sync_debug_mode(0)
        RESULTS["host_ours_synchronisations"] = len(caught)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(5):
            variants["ours"]()
        profiler.disable()
        torch.cuda.synchronize()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(35)
        (args.out.parent / "host_cprofile.txt").write_text(text.getvalue())
        for name in ("mamba_ssm", "ours"):  # whole forwards (head included) in one graph each: the floor
            try:
                replay = graphed(variants[name])
                RESULTS[f"graphed_{name}_ms"] = timed(replay)
            except Exception as exc:  # noqa: BLE001 - a failed capture is a finding, not the end of the section
                RESULTS[f"graphed_{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]


def section_overhead(args, pair) -> None:
    """Implicit forward at a forced k (tol 0) against k explicit forwards, both eager and both replayed from CUDA
    graphs (as scoring runs them on a GPU); no logits, no states."""
    _, model = pair
    explicit, implicit = runtimes(model), runtimes(implicit_twin(model))
    ids = torch.randint(0, VOCAB, (args.batch, args.length), device="cuda")
    best = {}
    with torch.inference_mode():
        for _ in range(2):  # interleaved rounds, the best of each: host-bound times drift with the machine
            for graphs in ("off", "capture"):
                ex, im = explicit[graphs], implicit[graphs]
                for k in (0, 1, 4):
                    ms = timed(lambda ex=ex: ex(ids, want_state=False)) if k == 0 else timed(
                        lambda k=k, im=im: im(ids, Budget(max_iter=k, tol=0.0), want_state=False), warmup=2, reps=5)
                    best[graphs, k] = min(best.get((graphs, k), ms), ms)
    for graphs, name in (("off", "eager"), ("capture", "graphs")):
        RESULTS[f"overhead_{name}_explicit_ms"] = best[graphs, 0]
        for k in (1, 4):
            RESULTS[f"overhead_{name}_implicit_k{k}_ms"] = best[graphs, k]
            RESULTS[f"implicit_k{k}_overhead_{name}"] = best[graphs, k] / (k * best[graphs, 0])


def length_stream(args) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """--batches batches of --batch token sequences, lengths uniform in --length / 2 .. --length, sorted longest first
    and right padded to each batch's longest: what lm-eval hands a model for a task of varied lengths."""
    g = torch.Generator().manual_seed(0)
    count = args.batch * args.batches
    lengths = sorted(torch.randint(args.length // 2, args.length + 1, (count,), generator=g).tolist(), reverse=True)
    stream = []
    for start in range(0, count, args.batch):
        part = torch.tensor(lengths[start:start + args.batch])
        ids = torch.randint(0, VOCAB, (len(part), int(part.max())), generator=g)
        stream.append((ids.cuda(), part.cuda()))
    return stream


def section_lengths(args, pair) -> None:
    from implicit_ssm_eval.model_adapters.runtime import graphs
    from implicit_ssm_eval.model_adapters.runtime import runtime as runtime_module

    theirs, model = pair
    rt = runtimes(model)
    stream = length_stream(args)
    counts = {"captures": 0, "replays": 0}
    replay = graphs.ForwardGraph.__call__

    def make(*a, **kw):
        counts["captures"] += 1
        return graphs.ForwardGraph(*a, **kw)

    def counted(self, *a):
        counts["replays"] += 1
        return replay(self, *a)

    def run(name: str) -> None:
        for ids, lengths in stream:
            if name == "mamba_ssm":
                theirs(ids)
            else:
                ours = rt["off" if name == "ours_eager" else "capture"]
                model.lm_head(ours(ids, lengths=lengths, want_state=False).hidden.to(torch.bfloat16))

    best: dict[str, float] = {}
    padded_length = runtime_module.padded_length
    graphs.ForwardGraph.__call__ = counted
    with torch.inference_mode():
        for name in ("ours", "mamba_ssm"):  # warm-up: compiles every kernel
            run(name)
        for _ in range(2):  # interleaved rounds, the best of each
            for name in ("mamba_ssm", "ours_eager", "ours_graphs_exact", "ours_graphs_padded"):
                runtime_module.padded_length = (lambda n: n) if name.endswith("exact") else padded_length
                rt["capture"]._caches.clear()  # cold: no graph kept from the last variant
                fresh = graphs.ForwardGraphs(make=make)
                rt["capture"].cache("forward_graphs", lambda fresh=fresh: fresh)
                for run_name in ("cold", "warm"):
                    counts.update(captures=0, replays=0)
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    run(name)
                    torch.cuda.synchronize()
                    key = f"lengths_{name}_{run_name}"
                    best[key + "_s"] = min(best.get(key + "_s", float("inf")), time.perf_counter() - start)
                    RESULTS[key + "_captures"], RESULTS[key + "_replays"] = counts["captures"], counts["replays"]
    graphs.ForwardGraph.__call__, runtime_module.padded_length = replay, padded_length
    RESULTS.update(best, lengths_batches=len(stream), lengths_tokens=sum(int(n.sum()) for _, n in stream))
    for name in ("ours_eager", "ours_graphs_exact", "ours_graphs_padded"):
        for run_name in ("cold", "warm"):
            RESULTS[f"lengths_{name}_{run_name}_vs_mamba_ssm"] = (best[f"lengths_mamba_ssm_{run_name}_s"]
                                                                  / best[f"lengths_{name}_{run_name}_s"])


def section_tolerance(args, pair) -> None:
    """Scoring at tol > 0 over a stream of varied lengths: eager against masked CUDA graphs (cold, then warm)."""
    _, model = pair
    ours, implicit = runtimes(model), runtimes(implicit_twin(model))
    budget = Budget(max_iter=16, tol=args.tol)
    stream = length_stream(args)
    iterations = []

    def run(runtime, **kw) -> None:
        for ids, lengths in stream:
            out = runtime(ids, lengths=lengths, want_state=False, **kw)
            runtime.model.lm_head(out.hidden.to(torch.bfloat16))
            if kw:
                iterations.append(out.stats.iterations[:, 0])

    best: dict[str, float] = {}
    with torch.inference_mode():
        run(ours["capture"])  # warm-up: compiles every kernel, captures the explicit graphs
        for _ in range(2):  # interleaved rounds, the best of each
            for name in ("explicit_graphs", "eager", "graphs"):
                runtime = implicit["off" if name == "eager" else "capture"]
                runtime._caches.clear()  # cold: captures made afresh
                for run_name in ("cold", "warm"):
                    iterations.clear()
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    run(ours["capture"]) if name == "explicit_graphs" else run(runtime, budget=budget)
                    torch.cuda.synchronize()
                    key = f"tolerance_{name}_{run_name}_s"
                    best[key] = min(best.get(key, float("inf")), time.perf_counter() - start)
    slowest = sum(int(i.max()) for i in iterations)  # what the masked graphs evaluate: every row, to the slowest
    RESULTS.update(best, tolerance_tol=args.tol, tolerance_max_iter=budget.max_iter, tolerance_batches=len(stream),
                   tolerance_mean_iterations=float(torch.cat(iterations).float().mean()),
                   tolerance_evaluations_per_batch=slowest / len(stream))
    for run_name in ("cold", "warm"):
        RESULTS[f"tolerance_graphs_{run_name}_vs_eager"] = (best[f"tolerance_eager_{run_name}_s"]
                                                            / best[f"tolerance_graphs_{run_name}_s"])
    RESULTS["tolerance_graphs_per_evaluation_vs_explicit"] = best["tolerance_graphs_warm_s"] / (
        RESULTS["tolerance_evaluations_per_batch"] * best["tolerance_explicit_graphs_warm_s"])


def readings_interleaved(implicit, ids, budget, patches: dict, rounds: int = 2) -> dict[str, float]:
    """The reading of ids at budget in CUDA graphs under each patch (a context manager factory): the best ms of
    interleaved rounds, each runtime captured afresh inside its patch (a graph keeps the kernels it saw)."""
    best = dict.fromkeys(patches, float("inf"))
    for _ in range(rounds):
        for name, patch in patches.items():
            with patch():
                runtime = Runtime(implicit, "triton", "capture")
                best[name] = min(best[name], timed(lambda runtime=runtime: runtime(ids, budget, want_state=False),
                                                   warmup=1, reps=3))
    return best


def section_sequential(args, pair) -> None:
    """The sequential reading as scoring runs it (no state out); beside it, the same positions decoded by the
    explicit model (ours and mamba_ssm's, batch 16): a step of either is one token through the stack, as one f
    evaluation is, so k x the reading's rate over their rate is what an evaluation costs against their step."""
    theirs, model = pair
    implicit = implicit_twin(model)
    ids = torch.randint(0, VOCAB, (16, 128), device="cuda")
    budget = Budget(max_iter=4, tol=0.0, mode="sequential")
    variants = {"capture": contextlib.nullcontext, "capture_state_update": _iterations_update_the_state,
                "capture_bf16_state": lambda: bfloat16_state(implicit), "capture_steps_apart": _steps_apart,
                "capture_norm_cast": _norm_cast, "capture_as_e722f6e": _as_e722f6e,
                "capture_steps_fused": _steps_fused, "capture_skinny_gemm": lambda: _skinny_gemm(implicit),
                "capture_skinny_gemm_bf16_state": lambda: _skinny_gemm(implicit, bf16_state=True)}
    with torch.inference_mode():
        best = readings_interleaved(implicit, ids, budget, variants)
        for name, ms in best.items():
            RESULTS[f"sequential_k4_{name}_tokens_per_s"] = ids.numel() / ms * 1e3
        RESULTS["sequential_k4_speed_vs_e722f6e"] = best["capture_as_e722f6e"] / best["capture"]
        RESULTS["sequential_k4_fused_steps_speed_vs_e722f6e"] = best["capture_as_e722f6e"] / best["capture_steps_fused"]
        RESULTS["sequential_k4_skinny_gemm_speed"] = best["capture"] / best["capture_skinny_gemm"]
        args.out.write_text(json.dumps(RESULTS, indent=2))
        prompts, explicit = ids[:, :64], Runtime(model, "triton", "capture")
        steps = {"mamba_ssm": lambda p, n: theirs.generate(p, max_length=p.shape[1] + n, cg=True, top_k=1),
                 "ours": greedy(explicit)}
        rate = RESULTS["sequential_k4_capture_tokens_per_s"]
        for who, fn in steps.items():
            RESULTS[f"sequential_explicit_decode_b16_{who}_tok_s"] = decode_rate(fn, prompts)
            RESULTS[f"sequential_k4_evaluation_vs_{who}_decode_step"] = (
                4 * rate / RESULTS[f"sequential_explicit_decode_b16_{who}_tok_s"])
        eager = Runtime(implicit, "triton", "off")
        if args.eager:
            RESULTS["sequential_k4_off_tokens_per_s"] = ids.numel() / timed(lambda: eager(ids, budget), 1, 3) * 1e3
        simultaneous = budget.replace(mode="simultaneous")
        RESULTS["simultaneous_k4_tokens_per_s"] = ids.numel() / timed(lambda: eager(ids, simultaneous), 1, 3) * 1e3
        graphs = Runtime(implicit, "triton", "capture")
        RESULTS["simultaneous_k4_graphs_tokens_per_s"] = ids.numel() / timed(
            lambda: graphs(ids, simultaneous, want_state=False), 2, 5) * 1e3
        for name in ("simultaneous_k4", "simultaneous_k4_graphs"):
            RESULTS[f"{name}_over_sequential"] = RESULTS[f"{name}_tokens_per_s"] / rate


@contextlib.contextmanager
def lanes(n: int):
    """Runtimes made inside read in pieces at tol = 0 in `n` lanes (runtime.LANES)."""
    from implicit_ssm_eval.model_adapters.runtime import runtime as runtime_module

    before, runtime_module.LANES = runtime_module.LANES, n
    try:
        yield
    finally:
        runtime_module.LANES = before


def section_lanes(args, pair) -> None:
    """The sequential reading (k = 4, 16 x 128, tol 0, graphs) and blocks of 16 in 1, 2 or 4 lanes, float32 and
    bfloat16 states (interleaved, each captured afresh); each one's hidden states against one lane's; the
    simultaneous reading of the same work (graphs) and the sequential reading's best rate against it."""
    implicit = implicit_twin(pair[1])
    ids = torch.randint(0, VOCAB, (16, 128), device="cuda")
    counts = (1, 2, 4)
    for mode in args.lanes_modes.split(","):
        budget = Budget(max_iter=4, tol=0.0, mode=mode, block_size=16 if mode == "blockwise" else None)
        for state, patch in (("f32", contextlib.nullcontext), ("bf16", lambda: bfloat16_state(implicit))):
            with torch.inference_mode(), patch():
                best = readings_interleaved(implicit, ids, budget, {f"lanes{n}": (lambda n=n: lanes(n))
                                                                   for n in counts})
                hidden = {n: Runtime(implicit, "triton", "capture", lanes=n)(ids, budget, want_state=False).hidden
                          for n in counts}
            for n in counts:
                key = f"lanes_{mode}_k4_{state}_lanes{n}"
                RESULTS[f"{key}_tokens_per_s"] = ids.numel() / best[f"lanes{n}"] * 1e3
                RESULTS[f"{key}_speed"] = best["lanes1"] / best[f"lanes{n}"]
                RESULTS[f"{key}_hidden_rel_err"] = float((hidden[n] - hidden[1]).float().norm()
                                                         / hidden[1].float().norm())
                print(f"{key}: {RESULTS[f'{key}_tokens_per_s']:.0f} tokens/s, {RESULTS[f'{key}_speed']:.3f}x",
                      flush=True)
            args.out.write_text(json.dumps(RESULTS, indent=2))
    with torch.inference_mode():
        graphs = Runtime(implicit, "triton", "capture")
        simultaneous = Budget(max_iter=4, tol=0.0, mode="simultaneous")
        rate = ids.numel() / timed(lambda: graphs(ids, simultaneous, want_state=False), 2, 5) * 1e3
    RESULTS["lanes_simultaneous_k4_graphs_tokens_per_s"] = rate
    for state in ("f32", "bf16"):
        fastest = max(RESULTS[f"lanes_sequential_k4_{state}_lanes{n}_tokens_per_s"] for n in counts)
        RESULTS[f"lanes_simultaneous_over_best_sequential_{state}"] = rate / fastest


def section_step_tiles(args, pair) -> None:
    """The sequential reading with conv_step_read at each of --read-tiles and conv_step_commit at each of
    --commit-tiles (the other at its default), and the first of each together, against both defaults; float32 and
    bfloat16 states, interleaved rounds in one process: tokens/s and the speed over the defaults."""
    from implicit_ssm_eval.model_adapters.backends import triton_ssd

    implicit = implicit_twin(pair[1])
    ids = torch.randint(0, VOCAB, (16, 128), device="cuda")
    budget = Budget(max_iter=4, tol=0.0, mode="sequential")
    defaults = triton_ssd.READ_TILE, triton_ssd.COMMIT_TILE
    variants = {"default": {}, **{f"read_p{t[0]}_warps{t[1]}": {"read": t} for t in args.read_tiles},
                **{f"commit_p{t[0]}_warps{t[1]}": {"commit": t} for t in args.commit_tiles}}
    if args.read_tiles and args.commit_tiles:
        variants["both_first"] = {"read": args.read_tiles[0], "commit": args.commit_tiles[0]}
    RESULTS["step_tiles_defaults"] = [list(t) for t in defaults]
    RESULTS["step_tiles_variants"] = {name: {k: list(t) for k, t in v.items()} for name, v in variants.items()}
    patches = {name: (lambda tiles=tiles: triton_ssd.step_tiles(**tiles)) for name, tiles in variants.items()}
    for state, patch in (("f32", contextlib.nullcontext), ("bf16", lambda: bfloat16_state(implicit))):
        with torch.inference_mode(), patch():
            best = readings_interleaved(implicit, ids, budget, patches)
        for name, ms in best.items():
            RESULTS[f"step_tiles_{state}_{name}_tokens_per_s"] = ids.numel() / ms * 1e3
            RESULTS[f"step_tiles_{state}_{name}_speed_vs_default"] = best["default"] / ms
        args.out.write_text(json.dumps(RESULTS, indent=2))
    commit_tiles(pair[1], args.commit_tiles)


def section_chain(args, pair) -> None:
    """The sequential reading (k = 4, 16 x 128, graphs) with its iterations chained (triton_chain: three launches a
    layer) against the default, float32 and bfloat16 states, interleaved; how far the chained reading's hidden
    states lie from the default's; one iteration kernel by kernel both ways (eager: launches and kernel time);
    greedy decoding chained and not; and an f evaluation of either against our explicit decoding step (the
    default's) and mamba_ssm's (batch 16, the same call)."""
    from implicit_ssm_eval.model_adapters.backends import get_ops, triton_chain

    theirs, model = pair
    implicit = implicit_twin(model)
    ids = torch.randint(0, VOCAB, (16, 128), device="cuda")
    budget = Budget(max_iter=4, tol=0.0, mode="sequential")
    patches = {"default": contextlib.nullcontext, "chained": lambda: triton_chain.chained(implicit)}
    for state, patch in (("f32", contextlib.nullcontext), ("bf16", lambda: bfloat16_state(implicit))):
        with torch.inference_mode(), patch():
            best = readings_interleaved(implicit, ids, budget, patches)
            hidden = {}
            for name, make in patches.items():
                with make():
                    hidden[name] = Runtime(implicit, "triton", "capture")(ids, budget, want_state=False).hidden
        for name, ms in best.items():
            RESULTS[f"chain_{state}_{name}_tokens_per_s"] = ids.numel() / ms * 1e3
        RESULTS[f"chain_{state}_speed"] = best["default"] / best["chained"]
        RESULTS[f"chain_{state}_hidden_rel_err"] = float((hidden["chained"] - hidden["default"]).norm()
                                                         / hidden["default"].norm())
        args.out.write_text(json.dumps(RESULTS, indent=2))
    chain_profile(args, implicit, get_ops("triton"))
    for batch in (1, 16):
        rates = decodes_interleaved(model, {"default": contextlib.nullcontext,
                                            "chained": lambda: triton_chain.chained(model)}, batch)
        for name, rate in rates.items():
            RESULTS[f"chain_decode_b{batch}_{name}_tok_s"] = rate
        RESULTS[f"chain_decode_b{batch}_speed"] = rates["chained"] / rates["default"]
        args.out.write_text(json.dumps(RESULTS, indent=2))
    prompts = ids[:, :64]
    steps = {"mamba_ssm": lambda p, n: theirs.generate(p, max_length=p.shape[1] + n, cg=True, top_k=1),
             "ours": greedy(Runtime(model, "triton", "capture"))}
    with torch.inference_mode():
        for who, fn in steps.items():
            rate = RESULTS[f"chain_explicit_decode_b16_{who}_tok_s"] = decode_rate(fn, prompts)
            for name in patches:
                RESULTS[f"chain_f32_{name}_evaluation_vs_{who}_decode_step"] = (
                    4 * RESULTS[f"chain_f32_{name}_tokens_per_s"] / rate)


def chain_profile(args, implicit, ops, reps: int = 20) -> None:
    """One iteration of the sequential reading (batch 16, float32 state, eager) kernel by kernel, chained and not:
    kernels and kernel time an evaluation (chain_profile.txt)."""
    from torch.profiler import ProfilerActivity, profile

    from implicit_ssm_eval.model_adapters.backends import triton_chain

    tables = []
    with torch.inference_mode():
        u, z = implicit.inject(torch.randint(0, VOCAB, (16,), device="cuda")), torch.randn(16, 768, device="cuda")
        state = implicit.empty_state(16)
        for name, patch in (("default", contextlib.nullcontext), ("chained", lambda: triton_chain.chained(implicit))):
            with patch():
                for _ in range(3):
                    implicit.f_step(z, u, state, False, ops)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(reps):
                        implicit.f_step(z, u, state, False, ops)
                    torch.cuda.synchronize()
            events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0.0) > 0]
            RESULTS[f"chain_profile_{name}_kernels_per_evaluation"] = sum(e.count for e in events) / reps
            RESULTS[f"chain_profile_{name}_kernel_us_per_evaluation"] = sum(e.device_time_total for e in events) / reps
            tables.append(f"## {name}: per iteration (of {reps})\n" + "\n".join(
                f"{e.device_time_total / reps:8.1f} us  {e.count / reps:5.1f} x  {e.key[:110]}"
                for e in sorted(events, key=lambda e: -e.device_time_total)))
    (args.out.parent / "chain_profile.txt").write_text("\n\n".join(tables) + "\n")


def commit_tiles(model, tiles: list[tuple[int, int]]) -> None:
    """Greedy decoding (a step is conv_step_commit's) at batch 1 and 16 with conv_step_commit at each of tiles
    against its default."""
    from implicit_ssm_eval.model_adapters.backends import triton_ssd

    variants = {"default": None, **{f"commit_p{t[0]}_warps{t[1]}": t for t in tiles}}
    patches = {name: (lambda tile=tile: triton_ssd.step_tiles(commit=tile)) for name, tile in variants.items()}
    for batch in (1, 16):
        rates = decodes_interleaved(model, patches, batch)
        for name, rate in rates.items():
            RESULTS[f"step_tiles_decode_b{batch}_{name}_tok_s"] = rate
            RESULTS[f"step_tiles_decode_b{batch}_{name}_speed_vs_default"] = rate / rates["default"]


def decodes_interleaved(model, patches: dict, batch: int, rounds: int = 2) -> dict[str, float]:
    """Greedy decoding tokens/s of `batch` rows under each patch (a context manager factory): the best of
    interleaved rounds, each runtime captured afresh inside its patch."""
    prompts = torch.randint(0, VOCAB, (batch, 64), device="cuda")
    rates = dict.fromkeys(patches, 0.0)
    with torch.inference_mode():
        for _ in range(rounds):
            for name, patch in patches.items():
                with patch():
                    rates[name] = max(rates[name], decode_rate(greedy(Runtime(model, "triton", "capture")), prompts))
    return rates


@contextlib.contextmanager
def bfloat16_state(*models):
    """The models store their SSM states in bfloat16 (state_dtype=bfloat16) inside the block; runtimes made inside it
    hold such states."""
    for m in models:
        m.set_state_dtype(torch.bfloat16)
    try:
        yield
    finally:
        for m in models:
            m.set_state_dtype(None)


@contextlib.contextmanager
def _iterations_update_the_state():
    """The triton backend as it was before its read-only step kernel: every iteration runs the conv, then mamba_ssm's
    state update (on a copy of the state) and drops the new state."""
    from implicit_ssm_eval.model_adapters.backends import triton_ops

    fast = triton_ops.state_step

    def update(state, x, dt, dt_bias, A, B, C, D, in_place=False, want_state=True):
        y, new_state = fast(state, x, dt, dt_bias, A, B, C, D, in_place, True)
        return y, (new_state if want_state else None)

    triton_ops.state_step = update
    try:
        with _steps_apart():  # the conv apart, then the state_step above
            yield
    finally:
        triton_ops.state_step = fast


@contextlib.contextmanager
def _steps_apart():
    """The triton backend as it was before conv_step_read and conv_step: an iteration's step runs the conv, then the
    read-only step kernel (two launches a layer); a committing one the conv, mamba_ssm's state update, and the window
    concatenated and masked by torch (four or five)."""
    from implicit_ssm_eval.model_adapters.backends import triton_ops

    fused = triton_ops.FUSED_STEPS
    triton_ops.FUSED_STEPS = False
    try:
        yield
    finally:
        triton_ops.FUSED_STEPS = fused


@contextlib.contextmanager
def _skinny_gemm(model, bf16_state: bool = False):
    """The mixers' projections through triton_gemm.skinny_linear (not yet the default: this times it), with the
    SSM state stored in bfloat16 as well if asked."""
    from implicit_ssm_eval.model_adapters.backends import triton_gemm

    with triton_gemm.routed(model), (bfloat16_state(model) if bf16_state else contextlib.nullcontext()):
        yield


@contextlib.contextmanager
def _steps_fused():
    """conv_step_read and conv_step as our fused kernels, whatever triton_ops.FUSED_STEPS says."""
    from implicit_ssm_eval.model_adapters.backends import triton_ops

    default = triton_ops.FUSED_STEPS
    triton_ops.FUSED_STEPS = True
    try:
        yield
    finally:
        triton_ops.FUSED_STEPS = default


@contextlib.contextmanager
def _norm_cast():
    """The triton backend as it was before wide gated norms were written narrower by our kernel: mamba_ssm's norm
    writes float32, then a cast to the model dtype."""
    from implicit_ssm_eval.model_adapters.backends import triton_norm

    takes = triton_norm.takes_narrowing
    triton_norm.takes_narrowing = lambda width: False
    try:
        yield
    finally:
        triton_norm.takes_narrowing = takes


@contextlib.contextmanager
def _as_e722f6e():
    """The step's kernels as at commit e722f6e: every step's conv, state and window apart, the gated norm cast."""
    with _steps_apart(), _norm_cast():
        yield


def section_step_profile(args, pair) -> None:
    """Kernel by kernel, what one f evaluation of the sequential reading costs (batch 16, eager, so each kernel is
    seen; the graphs replay the same kernels): an iteration (no state) and the final, committing one."""
    from torch.profiler import ProfilerActivity, profile

    from implicit_ssm_eval.model_adapters.backends import get_ops

    _, model = pair
    implicit, ops, reps = implicit_twin(model), get_ops("triton"), 20
    ids = torch.randint(0, VOCAB, (16,), device="cuda")
    tables = []
    with torch.inference_mode():
        u, z = implicit.inject(ids), torch.randn(16, 768, device="cuda")
        state = implicit.empty_state(16)
        alive = torch.ones(16, dtype=torch.bool, device="cuda")
        for name, commit in (("iteration", False), ("commit", True)):
            def evaluate(commit=commit):
                implicit.f_step(z, u, state, commit, ops, in_place=commit, valid=alive if commit else None)
            for _ in range(3):
                evaluate()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(reps):
                    evaluate()
                torch.cuda.synchronize()
            events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0.0) > 0]
            RESULTS[f"step_profile_{name}_kernels_per_evaluation"] = sum(e.count for e in events) / reps
            RESULTS[f"step_profile_{name}_kernel_us_per_evaluation"] = sum(e.device_time_total for e in events) / reps
            rows = sorted(events, key=lambda e: -e.device_time_total)
            tables.append(f"## {name}: per evaluation (of {reps})\n" + "\n".join(
                f"{e.device_time_total / reps:8.1f} us  {e.count / reps:5.1f} x  {e.key[:110]}" for e in rows))
    (args.out.parent / "step_profile.txt").write_text("\n\n".join(tables) + "\n")


def decode_rate(generate, prompts, short: int = 64, long: int = 320) -> float:
    """Steady-state generated tokens/s: (long - short) tokens over the time between a short and a long run."""
    def run(n):
        torch.cuda.synchronize()
        start = time.perf_counter()
        generate(prompts, n)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    run(short)  # warm-up: compilation and capture
    t_short, t_long = min(run(short) for _ in range(2)), min(run(long) for _ in range(2))
    return prompts.shape[0] * (long - short) / (t_long - t_short)


def decode_agreement(theirs, runtime, prompts: torch.Tensor, n: int) -> float:
    """The mean number of leading greedy tokens (of n) that ours and mamba_ssm's generate(cg=True) share on the
    same prompts: bfloat16 roundings may part them late, a wrong state from the first steps on."""
    from implicit_ssm_eval.model_adapters.runtime.generation import greedy_generate

    mine = greedy_generate(runtime, prompts.tolist(), n, None, lambda r, t: False, VOCAB, check_every=64,
                           cuda_graphs=True)
    other = theirs.generate(prompts, max_length=prompts.shape[1] + n, cg=True, top_k=1)
    other = (other if isinstance(other, torch.Tensor) else other.sequences)[:, prompts.shape[1]:].tolist()
    shared = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
              for x, y in zip(mine, other)]
    return sum(shared) / len(shared)


def greedy(runtime, budget=None):
    """decode_rate's generate for our runtime: greedy decoding in CUDA graphs, no stop token."""
    from implicit_ssm_eval.model_adapters.runtime.generation import greedy_generate

    def run(prompts, n):
        greedy_generate(runtime, prompts.tolist(), n, budget, lambda r, t: False, VOCAB, check_every=64,
                        cuda_graphs=True)
    return run


def section_decode(args, pair) -> None:
    theirs, model = pair
    ours = Runtime(model, "triton", "capture")
    implicit = Runtime(implicit_twin(model), "triton", "capture")  # the prefill's sequential reading in graphs

    def mamba(prompts, n):
        theirs.generate(prompts, max_length=prompts.shape[1] + n, cg=True, top_k=1)

    for batch in (1, 16):
        prompts = torch.randint(0, VOCAB, (batch, 64), device="cuda")
        with torch.inference_mode():
            RESULTS[f"decode_b{batch}_mamba_ssm_tok_s"] = decode_rate(mamba, prompts)
            RESULTS[f"decode_b{batch}_ours_tok_s"] = decode_rate(greedy(ours, None), prompts)
            if batch == 16:
                budget = Budget(max_iter=4, tol=0.0, mode="sequential")
                RESULTS["decode_b16_implicit_k4_tok_s"] = decode_rate(greedy(implicit, budget), prompts, 32, 96)
            RESULTS[f"decode_b{batch}_common_prefix_vs_mamba_ssm"] = decode_agreement(theirs, ours, prompts, 64)
            with _as_e722f6e():  # the step's kernels as before conv_step and the narrowing gated norm
                RESULTS[f"decode_b{batch}_ours_as_e722f6e_tok_s"] = decode_rate(
                    greedy(Runtime(model, "triton", "capture"), None), prompts)
            with _steps_fused():
                RESULTS[f"decode_b{batch}_ours_steps_fused_tok_s"] = decode_rate(
                    greedy(Runtime(model, "triton", "capture"), None), prompts)
            with _skinny_gemm(model):
                RESULTS[f"decode_b{batch}_ours_skinny_gemm_tok_s"] = decode_rate(
                    greedy(Runtime(model, "triton", "capture"), None), prompts)
            RESULTS[f"decode_b{batch}_speed_vs_e722f6e"] = (RESULTS[f"decode_b{batch}_ours_tok_s"]
                                                            / RESULTS[f"decode_b{batch}_ours_as_e722f6e_tok_s"])
            with bfloat16_state(model):  # mamba_ssm's decoding cache holds the model dtype, bfloat16 here
                low = Runtime(model, "triton", "capture")
                RESULTS[f"decode_b{batch}_ours_bf16_state_tok_s"] = decode_rate(greedy(low, None), prompts)
                RESULTS[f"decode_b{batch}_bf16_state_common_prefix_vs_mamba_ssm"] = decode_agreement(
                    theirs, low, prompts, 64)
        RESULTS[f"decode_b{batch}_speed_vs_mamba_ssm"] = (RESULTS[f"decode_b{batch}_ours_tok_s"]
                                                          / RESULTS[f"decode_b{batch}_mamba_ssm_tok_s"])
        args.out.write_text(json.dumps(RESULTS, indent=2))
    RESULTS["decode_b16_implicit_k4_vs_explicit_over_5"] = RESULTS["decode_b16_implicit_k4_tok_s"] / (
        RESULTS["decode_b16_ours_tok_s"] / 5)


def peak_mib(fn) -> float:
    """Peak memory allocated while fn() runs, above what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    gc.collect()  # what an earlier call left in reference cycles is freed before the baseline
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def section_memory(args, pair) -> None:
    """Each work twice: with logits (as scored) and without (the stack alone: mamba_ssm's backbone, our hidden
    states), since logits over a 50k vocabulary can hide the rest. Decoding from cold: each call makes its own
    cache and graphs (mamba_ssm's cached ones dropped first), as a new lm-eval run does."""
    from implicit_ssm_eval.model_adapters.runtime.generation import greedy_generate

    theirs, model = pair
    ours, implicit = Runtime(model, "triton", "off"), Runtime(implicit_twin(model), "triton", "off")

    def cold(*a, **kw):  # the readings in pieces as scoring runs them on a GPU, from a new runtime: the piece
        return Runtime(implicit.model, "triton", "capture")(*a, **kw)  # solve's state and its capture counted
    ids = torch.randint(0, VOCAB, (args.batch, args.length), device="cuda")
    short = ids[:16, :128]
    prompts = torch.randint(0, VOCAB, (16, 64), device="cuda")

    def mamba_decode():
        theirs.generate(prompts, max_length=128, cg=True, top_k=1)

    def drop_mamba_cache():  # before the baseline is read: dropped inside the timed call, the old cache's
        theirs._decoding_cache = None  # release offset the new one's allocation (51.8 MiB measured for ~151 MiB)

    def ours_decode():
        greedy_generate(Runtime(model, "triton", "capture"), prompts.tolist(), 64, None, lambda r, t: False, VOCAB,
                        check_every=64, cuda_graphs=True)

    def pairs(x, runtime, budget=None):
        stack = lambda: runtime(x, budget, want_state=False).hidden  # noqa: E731
        return {"logits": {"mamba_ssm": lambda: theirs(x).logits,
                           "ours": lambda: model.lm_head(stack().to(torch.bfloat16))},
                "stack": {"mamba_ssm": lambda: theirs.backbone(x), "ours": stack}}

    def low_state(fn):  # the same work with the SSM states stored in bfloat16 (state_dtype=bfloat16)
        def run():
            with bfloat16_state(model, implicit.model):
                return fn()
        return run

    work = {"forward": pairs(ids, ours), "decode_b16": {"cold": {"mamba_ssm": mamba_decode, "ours": ours_decode}},
            "decode_b16_bf16_state": {"cold": {"mamba_ssm": mamba_decode, "ours": low_state(ours_decode)}},
            "tolerance": pairs(ids, implicit, Budget(max_iter=16, tol=args.tol)),
            "sequential_k4": pairs(short, cold, Budget(max_iter=4, tol=0.0, mode="sequential")),
            "blockwise_k4_b256": pairs(ids, cold, Budget(max_iter=4, tol=0.0, mode="blockwise", block_size=256))}
    work["sequential_k4_bf16_state"] = {"stack": {"mamba_ssm": work["sequential_k4"]["stack"]["mamba_ssm"],
                                                  "ours": low_state(work["sequential_k4"]["stack"]["ours"])}}
    chosen = args.memory_works.split(",") if args.memory_works else list(work)
    unknown = sorted(set(chosen) - set(work))
    if unknown:
        raise SystemExit(f"--memory-works: unknown {unknown}; choose from {sorted(work)}")
    with torch.inference_mode():
        for name, variants in ((n, work[n]) for n in chosen):
            for variant, fns in variants.items():
                key = f"memory_{name}_{variant}"
                for who, fn in fns.items():
                    fn()  # warm-up: Triton compiles and autotunes
                    if fn is mamba_decode:
                        drop_mamba_cache()
                    RESULTS[f"{key}_{who}_mib"] = peak_mib(fn)
                RESULTS[f"{key}_ours_vs_mamba_ssm"] = RESULTS[f"{key}_ours_mib"] / RESULTS[f"{key}_mamba_ssm_mib"]
            args.out.write_text(json.dumps(RESULTS, indent=2))


def section_auto_batch(args, pair) -> None:
    """batch_size=auto through the adapter on a 130M checkpoint of each kind: the size it picks, then a scoring call
    of that many distinct requests at that size (an out-of-memory there is the failure this checks for)."""
    from implicit_ssm_eval.model_adapters.adapter.lm import ExplicitSSMLM, ImplicitSSMLM
    from implicit_ssm_eval.model_adapters.formats import native

    _, model = pair
    root = Path(tempfile.mkdtemp())
    tokenizer = Path(__file__).resolve().parents[1] / "checkpoints" / "text-implicit" / "tokenizer.json"
    native.save(model, root / "explicit", tokenizer_path=tokenizer)
    native.save(implicit_twin(model), root / "implicit", tokenizer_path=tokenizer)
    common = {"batch_size": "auto", "max_batch_size": args.max_batch_size, "dtype": "bfloat16", "device": "cuda",
              "max_length": args.length}
    made = {"explicit": lambda: ExplicitSSMLM(pretrained=str(root / "explicit"), **common),
            "implicit_anytime": lambda: ImplicitSSMLM(pretrained=str(root / "implicit"), max_iter=4, tol=0.0,
                                                      anytime="1;2;4", **common)}
    for name, make in made.items():
        _auto_batch_run(args, name, make())
        torch.cuda.empty_cache()
        args.out.write_text(json.dumps(RESULTS, indent=2))


def _auto_batch_run(args, name: str, lm) -> None:
    size = lm.scorer.batch_size(args.length)
    RESULTS[f"auto_batch_{name}_size"] = size
    gen = torch.Generator().manual_seed(0)
    requests = [(("", ""), torch.randint(4, 4000, (args.length - 8,), generator=gen).tolist(),
                 torch.randint(4, 4000, (8,), generator=gen).tolist()) for _ in range(size)]
    try:
        RESULTS[f"auto_batch_{name}_peak_mib"] = peak_mib(lambda: lm._loglikelihood_tokens(requests))
        RESULTS[f"auto_batch_{name}_ran"] = True
    except torch.cuda.OutOfMemoryError as exc:
        RESULTS[f"auto_batch_{name}_ran"] = f"out of memory: {exc}"[:300]
    RESULTS["auto_batch_gpu_total_mib"] = torch.cuda.get_device_properties(0).total_memory / 2**20


def section_lm_tolerance(args, pair) -> None:
    """Adaptive budgets at LM scale: the cost of scoring at the stored tolerance against (mean iterations x the
    explicit twin's forward), both on the same batches, in one process."""
    from lm_convergence import windows

    here = Path(__file__).resolve().parents[1] / "checkpoints"
    implicit = load_checkpoint(here / "text-implicit", dtype=torch.bfloat16, device="cuda")
    explicit = load_checkpoint(here / "text-explicit", dtype=torch.bfloat16, device="cuda").model
    ids, _ = windows(implicit.tokenizer, args.lm_docs, 256)
    batches = [b.cuda() for b in ids.split(args.lm_batch)]
    budget = implicit.default_budget
    iterations: list[torch.Tensor] = []

    def score(runtime, budget=None, record=False):
        def run():
            for x in batches:
                out = runtime(x, budget, want_state=False)
                runtime.model.logits(out.hidden)
                if record:
                    iterations.append(out.stats.iterations[:, 0].float())
        return run

    runs = {"explicit_graphs": score(Runtime(explicit, "triton", "capture")),
            "eager": score(Runtime(implicit.model, "triton", "off"), budget),
            "graphs": score(Runtime(implicit.model, "triton", "capture"), budget)}
    with torch.inference_mode():
        score(Runtime(implicit.model, "triton", "off"), budget, record=True)()
        mean_iterations = float(torch.cat(iterations).mean())
        slowest = sum(float(i.max()) for i in iterations) / len(iterations)
        best = {name: timed(fn, warmup=2, reps=5) for name, fn in runs.items()}
        best.update({name: min(best[name], timed(fn, warmup=0, reps=5)) for name, fn in runs.items()})
    RESULTS.update({f"lm_tolerance_{name}_ms": ms for name, ms in best.items()},
                   lm_tolerance_budget=budget.to_dict(), lm_tolerance_shape=[len(batches), args.lm_batch, ids.shape[1]],
                   lm_tolerance_mean_iterations=mean_iterations, lm_tolerance_slowest_row_iterations=slowest)
    for name in ("eager", "graphs"):
        RESULTS[f"lm_tolerance_{name}_vs_mean_iterations_x_explicit"] = best[name] / (
            mean_iterations * best["explicit_graphs"])


FLA: dict = {}  # fla's model, made once for both fla sections


def fla_model(pair, section: str):
    """fla's Mamba2ForCausalLM holding the pair's weights: mamba_ssm's bfloat16 model saved again and loaded by
    bench/fla_anchor.py. None, with the reason printed and in RESULTS, when fla does not import."""
    from fla_anchor import fla_missing, load_fla

    if "model" not in FLA:
        reason = fla_missing()
        if reason is None:
            root = Path(tempfile.mkdtemp())
            pair[0].save_pretrained(str(root))
            FLA["model"] = load_fla(root, dtype=torch.bfloat16, device="cuda")
        else:
            FLA["model"], FLA["reason"] = None, reason
    if FLA["model"] is None:
        RESULTS[f"section_{section}_skipped"] = FLA["reason"]
        print(f"[{section} skipped: {FLA['reason']}]", flush=True)
    return FLA["model"]


def section_fla_forward(args, pair) -> None:
    from fla_anchor import fla_forward_ms, fla_logits

    from implicit_ssm_eval.model_adapters.testing import rel_err

    model = fla_model(pair, "fla_forward")
    if model is None:
        return
    ids = torch.randint(0, VOCAB, (args.batch, args.length), device="cuda")
    RESULTS["forward_fla_ms"] = fla_forward_ms(model, ids)
    with torch.inference_mode():  # the same 2 rows through each: bfloat16 logits against mamba_ssm's
        rows = ids[:2]
        reference = pair[0](rows).logits.float()
        RESULTS["forward_fla_logits_rel_err_vs_mamba_ssm"] = rel_err(fla_logits(model, rows).float(), reference)
        RESULTS["forward_ours_logits_rel_err_vs_mamba_ssm"] = rel_err(
            forward_variants(pair, rows)["ours"]().float(), reference)
    if "forward_mamba_ssm_ms" not in RESULTS:
        RESULTS["fla_forward_note"] = "no forward section before this one: no comparison with ours"
        return
    faster = min(RESULTS["forward_mamba_ssm_ms"], RESULTS["forward_fla_ms"])
    RESULTS["forward_fla_speed_vs_mamba_ssm"] = RESULTS["forward_mamba_ssm_ms"] / RESULTS["forward_fla_ms"]
    RESULTS["forward_speed_vs_faster_anchor"] = faster / RESULTS["forward_ours_ms"]
    RESULTS["forward_graphs_speed_vs_faster_anchor"] = faster / RESULTS["forward_ours_graphs_ms"]


def section_fla_decode(args, pair) -> None:
    from fla_anchor import fla_decode_tokens_per_s

    model = fla_model(pair, "fla_decode")
    if model is None:
        return
    for batch in (1, 16):
        prompts = torch.randint(0, VOCAB, (batch, 64), device="cuda")
        for how, key in (("generate", f"decode_b{batch}_fla_tok_s"), ("loop", f"decode_b{batch}_fla_loop_tok_s")):
            try:
                RESULTS[key] = fla_decode_tokens_per_s(model, prompts, how=how)
            except RuntimeError as exc:  # fla's generate under a transformers that hides its cache from it
                RESULTS[key.replace("_tok_s", "_error")] = f"{type(exc).__name__}: {exc}"[:300]
        fla = [RESULTS[k] for k in (f"decode_b{batch}_fla_tok_s", f"decode_b{batch}_fla_loop_tok_s") if k in RESULTS]
        if fla and f"decode_b{batch}_mamba_ssm_tok_s" in RESULTS:
            mamba = RESULTS[f"decode_b{batch}_mamba_ssm_tok_s"]
            RESULTS[f"decode_b{batch}_fla_speed_vs_mamba_ssm"] = max(fla) / mamba
            RESULTS[f"decode_b{batch}_speed_vs_faster_anchor"] = (RESULTS[f"decode_b{batch}_ours_tok_s"]
                                                                  / max(mamba, *fla))
        else:
            RESULTS["fla_decode_note"] = "no decode section before this one: no comparison with ours"
        args.out.write_text(json.dumps(RESULTS, indent=2))


def print_anchors() -> None:
    """Ours beside both anchors, where the forward/decode and fla sections ran."""
    rows = [("forward ms (lower is faster)", "forward_{}_ms", "forward_speed_vs_faster_anchor"),
            ("decode b1 tok/s", "decode_b1_{}_tok_s", "decode_b1_speed_vs_faster_anchor"),
            ("decode b16 tok/s", "decode_b16_{}_tok_s", "decode_b16_speed_vs_faster_anchor")]
    names = ("mamba_ssm", "fla", "fla_loop", "ours")
    if not any(ratio in RESULTS for _, _, ratio in rows):
        return
    print(f"\n{'':30s}" + "".join(f"{n:>12s}" for n in names) + f"{'ours vs faster anchor':>24s}")
    for label, key, ratio in rows:
        cells = [RESULTS.get(key.format(n)) for n in names]
        print(f"{label:30s}" + "".join(f"{c:12.1f}" if isinstance(c, float) else f"{'-':>12s}" for c in cells)
              + (f"{RESULTS[ratio]:23.2f}x" if ratio in RESULTS else f"{'-':>24s}"))


SECTIONS = {"ceilings": section_ceilings, "forward": section_forward, "host": section_host, "profile": section_profile,
            "overhead": section_overhead, "lengths": section_lengths, "tolerance": section_tolerance,
            "sequential": section_sequential, "lanes": section_lanes, "step_tiles": section_step_tiles,
            "chain": section_chain,
            "step_profile": section_step_profile,
            "decode": section_decode, "fla_forward": section_fla_forward, "fla_decode": section_fla_decode,
            "memory": section_memory, "auto_batch": section_auto_batch, "lm_tolerance": section_lm_tolerance}


def tile_list(text: str) -> list[tuple[int, int]]:
    """--read-tiles, --commit-tiles: '32:2,16:4' -> [(32, 2), (16, 4)]."""
    tiles = []
    for item in filter(None, text.split(",")):
        p, _, warps = item.partition(":")
        if not (p in ("16", "32", "64") and warps in ("1", "2", "4", "8")):
            raise argparse.ArgumentTypeError(f"a tile is P:WARPS with P in 16, 32, 64 and WARPS in 1, 2, 4, 8, "
                                             f"got {item!r}")
        tiles.append((int(p), int(warps)))
    return tiles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--batches", type=int, default=64, help="lengths: batches in the stream")
    p.add_argument("--tol", type=float, default=0.1, help="tolerance: the residual tolerance (at random init the "
                   "residual falls slowly: at 0.01 every row runs to max_iter)")
    p.add_argument("--memory-works", default="", help="memory: a comma-separated subset of forward, decode_b16, "
                   "decode_b16_bf16_state, tolerance, sequential_k4, sequential_k4_bf16_state, blockwise_k4_b256 "
                   "(default: all)")
    p.add_argument("--max-batch-size", type=int, default=1024, help="auto_batch: where halving starts")
    p.add_argument("--lm-docs", type=int, default=256, help="lm_tolerance: held-out windows of 256 tokens")
    p.add_argument("--lm-batch", type=int, default=64, help="lm_tolerance: windows per forward")
    p.add_argument("--read-tiles", type=tile_list, default=[], help="step_tiles: tiles of conv_step_read to time "
                   "against its default, as P:WARPS,P:WARPS (P the most headdim rows a program: 16, 32 or 64)")
    p.add_argument("--commit-tiles", type=tile_list, default=[], help="step_tiles: tiles of conv_step_commit, as "
                   "--read-tiles")
    p.add_argument("--lanes-modes", default="sequential,blockwise", help="lanes: the readings to time "
                   "(sequential, blockwise: blocks of 16)")
    p.add_argument("--eager", action="store_true", help="sequential: also the reading without graphs (minutes)")
    args = p.parse_args()
    RESULTS.update(device=torch.cuda.get_device_name(), torch=torch.__version__, dtype="bfloat16",
                   config="130M: 24 layers, d_model 768, d_state 128, headdim 64")
    pair = mamba_pair(Path(tempfile.mkdtemp()))
    for name in args.sections.split(","):
        started = time.perf_counter()
        try:
            SECTIONS[name](args, pair)
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' figures
            RESULTS[f"section_{name}_error"] = f"{type(exc).__name__}: {exc}"
        RESULTS[f"section_{name}_s"] = round(time.perf_counter() - started, 1)
        args.out.write_text(json.dumps(RESULTS, indent=2))
        print(f"[{name} done in {RESULTS[f'section_{name}_s']:.0f}s]", flush=True)
    for key, value in RESULTS.items():
        print(f"{key:44s} {value:.4g}" if isinstance(value, float) else f"{key:44s} {value}")
    print_anchors()


if __name__ == "__main__":
    main()
