"""The conv inside the one-chunk scan spills no more registers than the scan alone (bench/kernel_spills.py: the kernel
compiled for sm_90 by Triton's own ptxas, on the CPU; its resource usage read from the binary)."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


@pytest.fixture(scope="module")
def kernel_spills():
    # bench/ on the path only for this import (its kernels.py would shadow the `kernels` package transformers uses)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        import kernel_spills
    finally:
        sys.path.pop(0)
    return kernel_spills


@pytest.mark.parametrize("model", ["a5", "text"])
@pytest.mark.parametrize("length", [16, 32, 64])
def test_the_conv_and_the_injection_in_the_scan_spill_no_more_than_the_scan(kernel_spills, model, length,
                                                                            monkeypatch):
    """At the warps the kernel launches with, for the bundled models' blocks: computed whole in registers, the conv's
    three tiles spilled up to 4.7 KB a thread where the scan alone spills 0.1 KB (the text model's 64-token blocks)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    headdim, dstate = kernel_spills.SHAPES[model]
    plain = kernel_spills.usage(length, headdim, dstate, "plain")
    fused = kernel_spills.usage(length, headdim, dstate, "conv+inj")
    assert fused["warps"] == plain["warps"]
    assert fused["stack"] <= plain["stack"], (plain, fused)
