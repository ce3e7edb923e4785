"""Log-likelihood throughput through lm-eval: `explicit_ssm` vs lm-eval's own `mamba_ssm` model, on the same
mamba_ssm checkpoint (the 130M configuration at random initialisation) and the same requests.

    python bench/lm_eval_throughput.py --out $OUT/lm_eval_throughput.json [--docs 512 --context 1024] [--vary]
        [--profile]

The checkpoint and a word-level tokenizer (50277 entries, no hub access needed) are written to a temporary
directory; the task is bench/tasks/bench_ll.yaml (random words, a context and an 8-word continuation).
Both models run in bfloat16 at batch size 16; the timed region is lm-eval's evaluation after the model is
built. Ours runs as it does by default on a GPU (cuda_graphs=auto: the scoring forward replayed from a CUDA graph
per padded batch shape, graphs.padded_length), with graphs at the exact batch shapes (no padding), and eagerly
(cuda_graphs=false). --vary draws each context's length from --context / 2 to --context words, so that batches
come in many lengths, as in real tasks; the captures and replays of each run are counted. The models'
log-likelihoods are compared as a sanity check.
Then each model's own loglikelihood() is timed on the task's prebuilt requests (best of 2 interleaved rounds): at
this size lm-eval's fixed costs (building the task, templates, the environment report) are most of an evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch

TASKS = Path(__file__).parent / "tasks"
VOCAB = 50277


def make_checkpoint(root: Path) -> Path:
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    from implicit_ssm_eval.model_adapters.testing import write_word_tokenizer

    torch.manual_seed(0)
    cfg = MambaConfig(d_model=768, n_layer=24, d_intermediate=0, vocab_size=VOCAB, pad_vocab_size_multiple=16,
                      ssm_cfg={"layer": "Mamba2", "use_mem_eff_path": False}, rms_norm=True, residual_in_fp32=True,
                      fused_add_norm=True, tie_embeddings=True)
    MambaLMHeadModel(cfg, device="cuda", dtype=torch.float32).save_pretrained(str(root))
    write_word_tokenizer(root, ["<eos>", *(f"w{i}" for i in range(1, VOCAB))])
    return root


def evaluate(lm, limit: int | None) -> tuple[float, dict]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=["bench_ll"], task_manager=manager, limit=limit,
                                  bootstrap_iters=0, log_samples=True)
    torch.cuda.synchronize()
    return time.perf_counter() - start, res


COUNTS = {"captures": 0, "replays": 0}  # of forward graphs, counted by count_graphs()


def count_graphs() -> None:
    from implicit_ssm_eval.model_adapters.runtime import graphs

    init, call = graphs.ForwardGraph.__init__, graphs.ForwardGraph.__call__

    def counted_init(self, *args, **kw):
        COUNTS["captures"] += 1
        init(self, *args, **kw)

    def counted_call(self, *args):
        COUNTS["replays"] += 1
        return call(self, *args)

    graphs.ForwardGraph.__init__, graphs.ForwardGraph.__call__ = counted_init, counted_call


@contextlib.contextmanager
def shapes(name: str):
    """The "_exact" variant captures the exact batch shapes: padded_length switched off while it runs."""
    from implicit_ssm_eval.model_adapters.runtime import runtime

    original = runtime.padded_length
    if name.endswith("_exact"):
        runtime.padded_length = lambda n: n
    try:
        yield
    finally:
        runtime.padded_length = original


def request_rates(models: dict, rounds: int = 2) -> dict:
    """Seconds of each model's own loglikelihood() over the task's prebuilt requests (tokenization and scoring,
    none of lm-eval's task building, templating or environment report), best of interleaved rounds."""
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict(["bench_ll"], TaskManager(include_path=str(TASKS), include_defaults=False))["bench_ll"]
    task.build_all_requests(limit=None)
    requests = list(task.instances)
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, lm in models.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            with shapes(name):
                lm.loglikelihood(requests, disable_tqdm=True)
            torch.cuda.synchronize()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    return {"requests": len(requests), **{f"{name}_seconds": s for name, s in best.items()}}


def profiled(fn, path: Path | None):
    """fn(), and with a path its cProfile statistics (cumulative time, 45 rows) written there as text."""
    if not path:
        return fn()
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    out = profiler.runcall(fn)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(45)
    path.with_suffix(".txt").write_text(text.getvalue())
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--docs", type=int, default=512)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--vary", action="store_true", help="context lengths from --context / 2 to --context words")
    p.add_argument("--profile", action="store_true", help="also write each timed run's cProfile next to --out")
    args = p.parse_args()
    os.environ.update(BENCH_DOCS=str(args.docs), BENCH_CONTEXT=str(args.context), BENCH_VARY=str(int(args.vary)))
    count_graphs()
    from lm_eval.models.mamba_lm import MambaLMWrapper

    from implicit_ssm_eval.model_adapters.adapter.lm import ExplicitSSMLM

    root = make_checkpoint(Path(tempfile.mkdtemp()))
    ours = ExplicitSSMLM(pretrained=str(root), dtype="bfloat16", batch_size=16, device="cuda")
    exact = ExplicitSSMLM(pretrained=str(root), dtype="bfloat16", batch_size=16, device="cuda")
    eager = ExplicitSSMLM(pretrained=str(root), dtype="bfloat16", batch_size=16, device="cuda", cuda_graphs=False)
    theirs = MambaLMWrapper(pretrained=str(root), tokenizer=str(root), dtype="bfloat16", batch_size=16, device="cuda")
    for lm in (ours, eager, theirs):
        evaluate(lm, 32)  # warm-up: Triton compilation, allocator
    for lm in (ours, exact):
        lm.runtime._caches.clear()  # no capture of the warm-up kept: both start cold
    results = {}
    for name, lm in (("explicit_ssm", ours), ("mamba_ssm", theirs), ("explicit_ssm_eager", eager),
                     ("explicit_ssm_exact", exact), ("explicit_ssm_repeat", ours)):
        COUNTS.update(captures=0, replays=0)
        with shapes(name):
            seconds, res = profiled(lambda lm=lm: evaluate(lm, None), args.profile and args.out.parent / f"{name}.prof")
        results[name] = {"seconds": seconds, "requests_per_s": args.docs / seconds, **COUNTS,
                         "loglikelihoods": [s["resps"][0][0][0] for s in res["samples"]["bench_ll"]]}
    a = torch.tensor(results["explicit_ssm"].pop("loglikelihoods"))
    b = torch.tensor(results["mamba_ssm"].pop("loglikelihoods"))
    c = torch.tensor(results["explicit_ssm_eager"].pop("loglikelihoods"))
    d = torch.tensor(results["explicit_ssm_exact"].pop("loglikelihoods"))
    results["explicit_ssm_repeat"].pop("loglikelihoods")
    summary = {"device": torch.cuda.get_device_name(), "dtype": "bfloat16", "batch_size": 16, "docs": args.docs,
               "context_tokens": args.context, "vary": args.vary, "continuation_tokens": 8, **results,
               "throughput_ratio_ours_over_mamba_ssm": results["mamba_ssm"]["seconds"]
               / results["explicit_ssm"]["seconds"],
               "throughput_ratio_eager_over_mamba_ssm": results["mamba_ssm"]["seconds"]
               / results["explicit_ssm_eager"]["seconds"],
               "graphs_vs_eager_max_abs_diff": float((a - c).abs().max()),
               "exact_graphs_vs_eager_max_abs_diff": float((d - c).abs().max()),
               "loglikelihood_mean_abs_diff": float((a - b).abs().mean()),
               "loglikelihood_mean": float(b.mean())}
    calls = request_rates({"explicit_ssm": ours, "mamba_ssm": theirs, "explicit_ssm_eager": eager,
                           "explicit_ssm_exact": exact})
    summary.update(loglikelihood_calls=calls, loglikelihood_call_ratio_ours_over_mamba_ssm=calls["mamba_ssm_seconds"]
                   / calls["explicit_ssm_seconds"])
    args.out.write_text(json.dumps(summary, indent=2))
    for key, value in summary.items():
        print(f"{key:40s} {value}")


if __name__ == "__main__":
    main()
