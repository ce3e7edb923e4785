"""Two CPU costs quoted in BENCHMARKS.md, timed in interleaved rounds in one process (medians and ranges, us or s).

    OMP_NUM_THREADS=2 python bench/cpu_costs.py

conv: the block's causal depthwise conv + SiLU on (40 rows, 8 tokens, 320 channels) with a 3-token state, as
F.conv1d (torch_ops) and three other forms. plan: what planning a sweep reads per checkpoint, for a 130M checkpoint
saved in float32: load_checkpoint (the old plan) against inspect_checkpoint, the first time in a process and after.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))


def conv_forms() -> None:
    torch.manual_seed(0)
    b, length, c, k = 40, 8, 320, 4
    x, state, w, bias = torch.randn(b, length, c), torch.randn(b, c, k - 1), torch.randn(c, k), torch.randn(c)

    def conv1d():
        window = torch.cat([state, x.transpose(1, 2)], dim=-1)
        return F.silu(F.conv1d(window, w[:, None, :], bias, groups=c)).transpose(1, 2)

    def unfold():
        window = torch.cat([state.transpose(1, 2), x], dim=1)
        return F.silu((window.unfold(1, k, 1) * w).sum(-1) + bias)

    def shifted():
        window = torch.cat([state.transpose(1, 2), x], dim=1)
        out = window[:, :length] * w[:, 0]
        for i in range(1, k):
            out = out + window[:, i:i + length] * w[:, i]
        return F.silu(out + bias)

    def einsum():
        window = torch.cat([state.transpose(1, 2), x], dim=1)
        return F.silu(torch.einsum("blck,ck->blc", window.unfold(1, k, 1), w) + bias)

    forms = [conv1d, unfold, shifted, einsum]
    for f in forms[1:]:
        assert torch.allclose(f(), conv1d(), atol=1e-5), f.__name__
    times = {f.__name__: [] for f in forms}
    for _ in range(9):
        for f in forms:
            for _ in range(20):
                f()
            start = time.perf_counter()
            for _ in range(200):
                f()
            times[f.__name__].append((time.perf_counter() - start) / 200 * 1e6)
    for name, t in times.items():
        print(f"conv {name:8s} median {statistics.median(t):6.0f} us  range {min(t):.0f}-{max(t):.0f}")


def plan_cost() -> None:
    from multi_gpu_sweep import checkpoint_130m

    from implicit_ssm_eval.model_adapters.formats import common, inspect_checkpoint, load_checkpoint

    ckpt = checkpoint_130m(Path(tempfile.mkdtemp()))
    times = {"load_checkpoint (first: hashing)": [], "load_checkpoint": [], "inspect_checkpoint, first": [],
             "inspect_checkpoint, again": []}
    for _ in range(3):
        common._HASHES.clear()
        for name, fn in (("load_checkpoint (first: hashing)", load_checkpoint), ("load_checkpoint", load_checkpoint)):
            start = time.perf_counter()
            fn(ckpt)
            times[name].append(time.perf_counter() - start)
        common._HASHES.clear()
        for name in ("inspect_checkpoint, first", "inspect_checkpoint, again"):
            start = time.perf_counter()
            inspect_checkpoint(ckpt)
            times[name].append(time.perf_counter() - start)
    for name, t in times.items():
        print(f"plan {name:34s} median {statistics.median(t):.3f} s  range {min(t):.3f}-{max(t):.3f}")


if __name__ == "__main__":
    print(f"threads {torch.get_num_threads()}")
    conv_forms()
    plan_cost()
