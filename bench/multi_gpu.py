"""Data-parallel evaluation: `lm_eval` on one GPU vs `torchrun --nproc_per_node N` on N GPUs, same metrics.

    python bench/multi_gpu.py --out $OUT/multi_gpu.json [--gpus 2 --docs 512 --context 512]

Writes an implicit model of the 130M configuration (random, native format, word-level tokenizer), runs the
bench_ll task at max_iter=8 through the stock CLI both ways, and compares metrics and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TASKS = Path(__file__).parent / "tasks"


def make_checkpoint(root: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from implicit_ssm_eval.model_adapters.config import ModelConfig
    from implicit_ssm_eval.model_adapters.formats import save
    from implicit_ssm_eval.model_adapters.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(kind="implicit", vocab_size=50277, pad_vocab_size_multiple=16, d_model=768, n_layer=24,
                      d_state=128, headdim=64, expand=2, chunk_size=256, budget={"max_iter": 8, "tol": 0.0, "tau": 0.8})
    vocab = {"<eos>": 0, **{f"w{i}": i for i in range(1, 50277)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(root / "tokenizer.json"))
    return save(build_model(cfg), root / "ckpt", tokenizer_path=root / "tokenizer.json", eos_token="<eos>")


def run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - start


def results(folder: Path) -> dict:
    return json.loads(sorted(folder.rglob("results_*.json"))[-1].read_text())


def loglikelihoods(folder: Path) -> dict[int, float]:
    out = {}
    for path in folder.rglob("samples_bench_ll_*.jsonl"):
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            out[sample["doc_id"]] = float(sample["resps"][0][0][0])
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--docs", type=int, default=512)
    p.add_argument("--context", type=int, default=512)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp())
    ckpt = make_checkpoint(root)
    env = {**os.environ, "BENCH_DOCS": str(args.docs), "BENCH_CONTEXT": str(args.context)}
    common = ["--model", "implicit_ssm", "--model_args", f"pretrained={ckpt},dtype=bfloat16", "--tasks", "bench_ll",
              "--include_path", str(TASKS), "--batch_size", "16", "--log_samples"]
    one = run([sys.executable, "-m", "lm_eval", *common, "--device", "cuda:0", "--output_path", str(root / "one")],
              env)
    many = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.gpus), "-m", "lm_eval",
                *common, "--device", "cuda", "--output_path", str(root / "many")], env)
    r1, rn = results(root / "one"), results(root / "many")
    l1, ln = loglikelihoods(root / "one"), loglikelihoods(root / "many")
    diff = max(abs(l1[d] - ln[d]) for d in l1) if l1.keys() == ln.keys() else float("nan")
    summary = {"device": torch.cuda.get_device_name(), "gpus": args.gpus, "docs": args.docs,
               "context_tokens": args.context, "seconds_1_gpu": one, f"seconds_{args.gpus}_gpus": many,
               "speedup_wall_incl_startup": one / many,
               "request_seconds_1": r1["config"]["ssm_model"]["request_seconds"],
               "request_seconds_n": rn["config"]["ssm_model"]["request_seconds"],
               "speedup_request_time": r1["config"]["ssm_model"]["request_seconds"]
               / rn["config"]["ssm_model"]["request_seconds"],
               "acc_1_gpu": r1["results"]["bench_ll"]["acc,none"], f"acc_{args.gpus}_gpus": rn["results"]["bench_ll"]
               ["acc,none"], "world_size_reported": rn["config"]["ssm_model"]["world_size"],
               "iterations_mean_1": r1["config"]["ssm_model"]["convergence"]["scoring"]["iterations_mean"],
               "iterations_mean_n": rn["config"]["ssm_model"]["convergence"]["scoring"]["iterations_mean"],
               "docs_scored_1": len(l1), "docs_scored_n": len(ln), "max_abs_loglikelihood_diff": diff}
    args.out.write_text(json.dumps(summary, indent=2))
    for key, value in summary.items():
        print(f"{key:32s} {value}")


if __name__ == "__main__":
    main()
