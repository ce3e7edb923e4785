"""Processes sharing Triton's cache take turns to autotune (backends/triton_tuning.py): the lock itself on the CPU,
and on CUDA two processes that tune the same kernel at the same moment, of which only one may time it."""

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("triton")

from implicit_ssm_eval.model_adapters.backends import triton_tuning  # noqa: E402


def _hold(path: str, seconds: float, queue) -> None:
    with triton_tuning.file_lock(Path(path)):
        began = time.monotonic()
        time.sleep(seconds)
        queue.put((began, time.monotonic()))


def test_the_lock_excludes_other_processes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(str(tmp_path / "locks" / "k.lock"), 0.4, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    spans = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert all(a_end <= b_began for (_, a_end), (b_began, _) in zip(spans, spans[1:])), spans


def test_without_a_lock_the_block_still_runs_and_says_so(tmp_path, caplog):
    (tmp_path / "a-file").write_text("")
    ran = []
    with caplog.at_level("WARNING"), triton_tuning.file_lock(tmp_path / "a-file" / "locks" / "k.lock"):
        ran.append(True)  # the cache folder cannot be made: tuning goes on, unlocked
    assert ran == [True] and "cannot lock" in caplog.text and "on its own" in caplog.text


def test_one_lock_per_kernel_and_tuning_key(tmp_path):
    path = triton_tuning.lock_path(tmp_path, "_chunk_scan_fwd_kernel", (256, 64, 128, "torch.bfloat16"))
    assert path == triton_tuning.lock_path(tmp_path, "_chunk_scan_fwd_kernel", (256, 64, 128, "torch.bfloat16"))
    assert path.parent == tmp_path / "autotune-locks"
    assert path != triton_tuning.lock_path(tmp_path, "_chunk_scan_fwd_kernel", (256, 64, 128, "torch.float32"))
    assert path != triton_tuning.lock_path(tmp_path, "_chunk_state_fwd_kernel", (256, 64, 128, "torch.bfloat16"))


def test_the_autotuners_cache_look_up_runs_under_the_lock(tmp_path, monkeypatch):
    import fcntl

    from triton import knobs
    from triton.runtime.autotuner import Autotuner

    seen = []

    def look_up(self, tuning_key, configs, bench_fn):  # Triton's signature
        path = triton_tuning.lock_path(tmp_path, "kernel_a", tuning_key)
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)
        return bench_fn()

    monkeypatch.setattr(knobs.cache, "dir", str(tmp_path))
    monkeypatch.setattr(Autotuner, "check_disk_cache", look_up)
    assert triton_tuning.install() and triton_tuning.install()  # idempotent: wrapped once
    wrapped = Autotuner.check_disk_cache
    assert wrapped.__wrapped__ is look_up
    tuner = SimpleNamespace(base_fn=SimpleNamespace(__name__="kernel_a"))  # an Autotuner, as the wrapper sees it
    assert wrapped(tuner, (64, "torch.float32"), [], lambda: "timed") == "timed"
    assert seen == ["held"]


TWO_TUNERS = '''
import sys, time
import torch, triton, triton.language as tl
from implicit_ssm_eval.model_adapters.backends import triton_ops  # turns the cache on and installs the lock

@triton.autotune(configs=[triton.Config({"BLOCK": b}, num_warps=w) for b in (64, 128, 256, 512, 1024)
                          for w in (1, 2, 4, 8)], key=["n"])
@triton.jit
def scale(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)

x = torch.ones(1 << 22, device="cuda")
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))  # both processes reach the tuner at the same moment
scale[lambda m: (triton.cdiv(x.numel(), m["BLOCK"]),)](x, x.numel())
torch.cuda.synchronize()
print("CHOSE", scale.best_config.kwargs["BLOCK"], scale.best_config.num_warps, flush=True)
'''


@pytest.mark.gpu
def test_two_processes_tune_a_kernel_once_and_choose_alike(tmp_path):
    script = tmp_path / "tune.py"
    script.write_text(TWO_TUNERS)
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache"), "TRITON_PRINT_AUTOTUNING": "1"}
    start = json.dumps(time.time() + 20)  # past both processes' imports (mamba_ssm takes about 9 s)
    procs = [subprocess.Popen([sys.executable, str(script), start], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    tuned = [o.count("Triton autotuning for function") for o in outputs]
    chose = [next(line for line in o.splitlines() if line.startswith("CHOSE")) for o in outputs]
    assert sorted(tuned) == [0, 1], outputs  # one timed the configurations, the other read its choice
    assert chose[0] == chose[1]
