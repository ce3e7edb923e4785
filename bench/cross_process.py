"""Are two fresh processes bitwise identical on the GPU? The same checkpoint and input, one process after another.

    python bench/cross_process.py --out $OUT/cross_process.json [--processes 3]

Each child loads a 130M-configuration implicit model (random init, bfloat16, backend triton), reads the same
ids in the simultaneous reading (k = 2) and the sequential one (k = 2, 64 tokens), and reports a hash of the
hidden states and which configuration Triton's autotuner chose for each kernel. Run twice: with the autotuner's
disk cache off (every process benchmarks the kernels' configurations afresh and takes the fastest it timed) and
on (TRITON_CACHE_AUTOTUNING=1: the first process's choice is stored and reused). Prints whether the hashes agree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import hashlib, sys, torch
from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.formats import load_checkpoint
ckpt = load_checkpoint(sys.argv[1], dtype=torch.bfloat16, device=torch.device("cuda"))
from implicit_ssm_eval.model_adapters.runtime import Runtime
runtime = Runtime(ckpt.model, "triton")
ids = torch.randint(2, 50000, (8, 512), generator=torch.Generator().manual_seed(0)).cuda()
digest = hashlib.sha256()
with torch.inference_mode():
    for ids_, mode in ((ids, "simultaneous"), (ids[:, :64], "sequential")):
        digest.update(runtime(ids_, Budget(max_iter=2, tol=0.0, mode=mode)).hidden.float().cpu().numpy().tobytes())
print("HASH", digest.hexdigest())
"""


def child(checkpoint: Path, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(checkpoint)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    pattern = r"autotuning for function (\w+),\s*with key as (.*?),\s*finished.*?best config selected: (.*?);"
    chosen = re.findall(pattern, done.stdout, flags=re.S)
    return {"hash": re.search(r"HASH (\w+)", done.stdout).group(1),
            "tuned": sorted(f"{fn} {key} -> {cfg}" for fn, key, cfg in chosen)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--processes", type=int, default=3)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from multi_gpu_sweep import checkpoint_130m

    root = Path(tempfile.mkdtemp())
    ckpt = checkpoint_130m(root)
    results = {}
    for cache in ("off", "on"):
        env = {**os.environ, "TRITON_PRINT_AUTOTUNING": "1", "TRITON_CACHE_AUTOTUNING": "1" if cache == "on" else "0",
               "TRITON_CACHE_DIR": str(root / f"triton-{cache}")}
        runs = [child(ckpt, env) for _ in range(args.processes)]
        results[f"autotune_cache_{cache}"] = {
            "hashes": [r["hash"][:16] for r in runs], "identical": len({r["hash"] for r in runs}) == 1,
            # with the cache on, only the first process tunes: the others read its choices
            "tuned_differently": sorted(set().union(*map(set, (r["tuned"] for r in runs)))
                                        - set.intersection(*map(set, (r["tuned"] for r in runs))))
            if cache == "off" else []}
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
