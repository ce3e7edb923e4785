"""GPU benchmarks of the paper's 130M configuration (24 layers, d_model 768, d_state 128, headdim 64, expand 2)
at random initialisation in bfloat16. Run on the device machine (see BENCHMARKS.md for the command):

    python bench/gpu_bench.py --out $OUT/bench.json [--sections ceilings,forward,...]

Every figure is a median of CUDA-event timings after warm-up, measured in one process so ratios compare
like with like. Prints a table at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from implicit_ssm_eval.model_adapters.config import Budget, ModelConfig
from implicit_ssm_eval.model_adapters.models import build_model

CFG_130M = dict(vocab_size=50277, pad_vocab_size_multiple=16, d_model=768, n_layer=24, d_state=128, headdim=64,
                expand=2, ngroups=1, chunk_size=256)
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


def peak_mb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def models(backend: str = "triton"):
    torch.manual_seed(0)
    explicit = build_model(ModelConfig(kind="explicit", **CFG_130M)).to("cuda", torch.bfloat16).eval()
    implicit = build_model(ModelConfig(kind="implicit", budget={"max_iter": 8}, **CFG_130M)).to("cuda", torch.bfloat16)
    implicit.load_state_dict(explicit.state_dict(), strict=False)  # same stack; the injection is its own
    for m in (explicit, implicit.eval()):
        m.use_backend(backend)
    return explicit, implicit


def section_ceilings(args) -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = timed(lambda: a @ b)
    RESULTS["bf16_matmul_tflops"] = 2 * 8192**3 / ms / 1e9
    x = torch.empty(2**30, device="cuda", dtype=torch.uint8)
    y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x))
    RESULTS["copy_tb_s"] = 2 * 2**30 / ms / 1e9


def layer_flops_per_token(cfg: ModelConfig) -> float:
    """Matrix-unit FLOPs of one Mamba2 layer per token: in/out projections plus the SSD products at chunk T
    (intra-chunk C B^T and its product with x, chunk states, state readout)."""
    T, N, P, H, G = cfg.chunk_size, cfg.d_state, cfg.headdim, cfg.nheads, cfg.ngroups
    proj = 2 * cfg.d_model * cfg.d_in_proj + 2 * cfg.d_inner * cfg.d_model
    ssd = 2 * G * T * N + 2 * H * T * P + 2 * H * N * P * 2
    return proj + ssd


def section_forward(args) -> None:
    explicit, implicit = models()
    B, L = args.batch, args.length
    ids = torch.randint(0, 50277, (B, L), device="cuda")
    with torch.inference_mode():
        ms = timed(lambda: explicit(ids))
        RESULTS["explicit_forward_ms"] = ms
        RESULTS["explicit_tokens_per_s"] = B * L / ms * 1e3
        flops = layer_flops_per_token(explicit.cfg) * explicit.cfg.n_layer * B * L
        RESULTS["explicit_tflops"] = flops / ms / 1e9
        RESULTS["explicit_peak_mb"] = peak_mb(lambda: explicit(ids))
        for k in (1, 2, 4, 8, 16, 32):
            budget = Budget(max_iter=k, tol=0.0)
            ms_k = timed(lambda budget=budget: implicit(ids, budget), warmup=1, reps=3 if k >= 16 else 5)
            RESULTS[f"implicit_k{k}_ms"] = ms_k
            RESULTS[f"implicit_k{k}_overhead"] = ms_k / (k * ms)
        RESULTS["implicit_k32_peak_mb"] = peak_mb(lambda: implicit(ids, Budget(max_iter=32, tol=0.0)))


def section_anytime(args) -> None:
    """A sweep over {1,...,32}: one run with anytime outputs (scored at the last position of each sequence, as
    lm-eval scores continuations) vs separate runs."""
    _, implicit = models()
    B, L = args.batch, args.length
    ids = torch.randint(0, 50277, (B, L), device="cuda")
    budgets = (1, 2, 4, 8, 16, 32)

    def one_run():
        out = implicit(ids, Budget(max_iter=32, tol=0.0), anytime=budgets)
        return [implicit.logits(h[:, -1]) for h in out.anytime.values()]

    def separate():
        return [implicit.logits(implicit(ids, Budget(max_iter=k, tol=0.0)).hidden[:, -1]) for k in budgets]

    with torch.inference_mode():
        single = timed(lambda: implicit.logits(implicit(ids, Budget(max_iter=32, tol=0.0)).hidden[:, -1]), 1, 3)
        RESULTS["anytime_sweep_ratio"] = timed(one_run, 1, 3) / single
        RESULTS["separate_sweep_ratio"] = timed(separate, 1, 3) / single


def section_backends(args) -> None:
    ids = torch.randint(0, 50277, (args.batch, args.length), device="cuda")
    for backend in ("torch", "triton"):
        RESULTS[f"{backend}_forward_ms"], RESULTS[f"{backend}_peak_mb"] = forward_cost(models(backend)[0], ids)
        torch.cuda.empty_cache()


@torch.inference_mode()
def forward_cost(model, ids) -> tuple[float, float]:
    return timed(lambda: model(ids), 2, 5), peak_mb(lambda: model(ids))


def section_decode(args) -> None:
    """Generation tokens/s: explicit steps and implicit sequential steps (k = 4), eager vs CUDA graph."""
    from implicit_ssm_eval.model_adapters.generation import greedy_generate

    explicit, implicit = models()
    for batch in (1, 16):
        prompts = [[int(t) for t in torch.randint(0, 50277, (64,))] for _ in range(batch)]
        for name, model, budget in (("explicit", explicit, None),
                                    ("implicit_k4", implicit, Budget(max_iter=4, tol=0.0, mode="sequential"))):
            for graphs in (False, True):
                RESULTS[f"decode_{name}_b{batch}_{'graph' if graphs else 'eager'}_tok_s"] = \
                    decode_rate(greedy_generate, model, prompts, budget, graphs, args.new_tokens)
                args.out.write_text(json.dumps(RESULTS, indent=2))  # keep what is measured if cut short


def decode_rate(generate, model, prompts, budget, graphs: bool, new_tokens: int = 128) -> float:
    """Generated tokens per second (the prompt's prefill included), after a warm-up run that also captures."""
    def run():
        return generate(model, prompts, new_tokens, budget, lambda r, t: False, 50277, check_every=64,
                        cuda_graphs=graphs)

    run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return len(prompts) * new_tokens / (time.perf_counter() - start)


SECTIONS = {"ceilings": section_ceilings, "forward": section_forward, "anytime": section_anytime,
            "backends": section_backends, "decode": section_decode}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=128, help="tokens generated per decoding measurement")
    args = p.parse_args()
    RESULTS.update(device=torch.cuda.get_device_name(), torch=torch.__version__, dtype="bfloat16",
                   batch=args.batch, length=args.length, config="130M: 24 layers, d_model 768, d_state 128")
    for name in args.sections.split(","):
        started = time.perf_counter()
        SECTIONS[name](args)
        RESULTS[f"section_{name}_s"] = time.perf_counter() - started
        args.out.write_text(json.dumps(RESULTS, indent=2))
        print(f"[{name} done in {RESULTS[f'section_{name}_s']:.0f}s]", flush=True)
    for key, value in RESULTS.items():
        print(f"{key:42s} {value:.4g}" if isinstance(value, float) else f"{key:42s} {value}")


if __name__ == "__main__":
    main()
