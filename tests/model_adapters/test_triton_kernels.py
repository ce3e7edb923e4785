"""Our Triton kernels against their torch twins: the causal conv + SiLU (tests/triton_conv_check.py) and the one-chunk
SSD scan (tests/triton_ssd_check.py). Natively on CUDA; under Triton's interpreter on the CPU where triton is
installed (it is the GPU extra's)."""

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
CHECKS = ["triton_conv_check", "triton_ssd_check", "triton_solve_check", "triton_norm_check", "triton_gemm_check",
          "triton_chain_check"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("check", CHECKS)
def test_kernel_matches_its_twin_on_cuda(check):
    assert importlib.import_module(check).check("cuda") == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the native test runs")
@pytest.mark.parametrize("check", CHECKS)
def test_kernel_matches_its_twin_in_the_interpreter(check):
    script = Path(__file__).parents[1] / f"{check}.py"
    out = subprocess.run([sys.executable, str(script)], env={**os.environ, "TRITON_INTERPRET": "1"},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout[-2000:] + out.stderr[-2000:]
