"""Sweeps on several GPUs: `implicit-eval sweep --workers N` against one GPU, same jobs, fresh output folders.

    python bench/multi_gpu_sweep.py --out $OUT/multi_gpu_sweep.json --workers 2

Two workloads: the bundled checkpoints' default sweep (many small jobs), and a 130M-configuration implicit model
(random init, bfloat16) over k = 1, 2, 4 in the simultaneous and sequential readings on a local text (rolling
log-likelihood of random words). Reports wall times, the speed-up, and whether every metric is identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from implicit_ssm_eval.model_adapters.config import ModelConfig
from implicit_ssm_eval.model_adapters.formats import save
from implicit_ssm_eval.model_adapters.models import build_model

VOCAB = 50277


def checkpoint_130m(root: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    cfg = ModelConfig(kind="implicit", vocab_size=VOCAB, pad_vocab_size_multiple=16, d_model=768, n_layer=24,
                      d_state=128, headdim=64, expand=2, chunk_size=256, budget={"max_iter": 4})
    vocab = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(root / "tokenizer.json"))
    return save(build_model(cfg), root / "implicit-130m", tokenizer_path=root / "tokenizer.json", eos_token="<eos>")


def sweep(args: list[str], out: Path, workers: int, env: dict | None = None) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "implicit_ssm_eval.harness", "sweep", *args, "--device", "cuda", "--workers",
           str(workers), "--out", str(out), "--quiet"]
    start, began = time.perf_counter(), time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return time.perf_counter() - start, timeline(out, began)


def timeline(out: Path, began: float) -> dict:
    """Where a sweep's wall time went, from the jobs' own records: seconds from the command's start to the first
    job's start (start-up), when the workers were spawned, each worker's busy seconds and when its last job ended."""
    runs = [json.loads(p.read_text()) for p in out.glob("*/*/results.json")]
    runs = [(r["sweep"], r["date"]) for r in runs if r["sweep"]["wall_s"] > 0]  # anytime budgets share a run
    workers: dict[str, dict] = {}
    for info, ended in runs:
        w = workers.setdefault(str(info.get("worker", 0)), {"jobs": 0, "busy_s": 0.0, "last_end_s": 0.0})
        w["jobs"] += 1
        w["busy_s"] = round(w["busy_s"] + info["wall_s"], 1)
        w["last_end_s"] = round(max(w["last_end_s"], ended - began), 1)
    spawned = json.loads((out / "sweep.json").read_text()).get("workers_spawned")
    return {"first_job_s": round(min(i["started"] for i, _ in runs) - began, 1) if runs else None,
            "workers": workers, "workers_spawned_s": round(spawned - began, 1) if spawned else None}


def metrics(out: Path) -> dict:
    found = {}
    for path in sorted(out.glob("*/*/results.json")):
        data = json.loads(path.read_text())
        found[str(path.relative_to(out))] = {t: {k: v for k, v in m.items() if not k.endswith("_stderr,none")
                                                 and isinstance(v, float)} for t, m in data["results"].items()}
    return found


def differences(a: dict, b: dict) -> list[str]:
    """'job task metric: a vs b' for every metric that differs (or is missing on one side)."""
    out = []
    for job in sorted(set(a) | set(b)):
        for task in sorted(set(a.get(job, {})) | set(b.get(job, {}))):
            ma, mb = a.get(job, {}).get(task, {}), b.get(job, {}).get(task, {})
            out += [f"{job} {task} {k}: {ma.get(k)!r} vs {mb.get(k)!r}" for k in sorted(set(ma) | set(mb))
                    if ma.get(k) != mb.get(k)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--paragraphs", type=int, nargs="+", default=[16],
                   help="130m workload: paragraphs of 500 words (job length); one workload per value")
    p.add_argument("--workloads", nargs="+", default=["130m", "bundled"], choices=["130m", "bundled"])
    p.add_argument("--cold", action="store_true", help="an empty Triton cache for each workload, and the workers "
                   "first: they compile and tune side by side; then one GPU, reading their choices (the metrics must "
                   "still be identical; the times include compilation and are not a speed-up)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp())
    ckpt = checkpoint_130m(root)
    workloads = {}
    for n in args.paragraphs if "130m" in args.workloads else []:
        rng = random.Random(0)
        text = root / f"words-{n}.txt"
        text.write_text("\n\n".join(" ".join(f"w{rng.randrange(2, VOCAB)}" for _ in range(500)) for _ in range(n)))
        workloads[f"130m-{n}"] = [
            str(ckpt), "--tasks", "ppl_local_text", "--max-iter", "1", "2", "4", "--tol", "0", "--modes",
            "simultaneous", "sequential", "--dtype", "bfloat16", "--batch-size", "8", "--metadata",
            json.dumps({"ppl_text_path": str(text), "ppl_split": "paragraphs"})]
    if "bundled" in args.workloads:
        workloads["bundled"] = ["--num-docs", "5"]
    results = {"device": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(), "workers": args.workers,
               "cold": args.cold}
    for name, sweep_args in workloads.items():
        if args.cold:
            env = {"TRITON_CACHE_DIR": str(root / f"triton-{name}")}
            many, many_timeline = sweep(sweep_args, root / f"{name}-{args.workers}", args.workers, env)
            one, one_timeline = sweep(sweep_args, root / f"{name}-1", 1, env)
        else:
            sweep([*sweep_args, "--modes", "simultaneous", "sequential", "--max-iter", "1", "--tol", "0"],
                  root / f"warm-{name}", 1)  # warm-up: Triton compiles into its cache (shared by later processes)
            one, one_timeline = sweep(sweep_args, root / f"{name}-1", 1)
            many, many_timeline = sweep(sweep_args, root / f"{name}-{args.workers}", args.workers)
        first, second = metrics(root / f"{name}-1"), metrics(root / f"{name}-{args.workers}")
        results[name] = {"one_gpu_s": round(one, 1), f"{args.workers}_gpus_s": round(many, 1),
                         "speedup": round(one / many, 2), "identical_metrics": first == second,
                         "jobs": len(first), "differences": differences(first, second)[:10],
                         "timeline_one": one_timeline, f"timeline_{args.workers}": many_timeline}
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
