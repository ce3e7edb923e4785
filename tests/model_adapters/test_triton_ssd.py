"""The one-chunk Triton SSD kernel against its torch twin (tests/triton_ssd_check.py): natively on CUDA, under Triton's
interpreter on the CPU where triton is installed (it is the GPU extra's)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_chunk_scan_matches_its_twin_on_cuda():
    from triton_ssd_check import check

    assert check("cuda") == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the native test runs")
def test_one_chunk_scan_matches_its_twin_in_the_interpreter():
    script = Path(__file__).parents[1] / "triton_ssd_check.py"
    out = subprocess.run([sys.executable, str(script)], env={**os.environ, "TRITON_INTERPRET": "1"},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout[-2000:] + out.stderr[-2000:]
