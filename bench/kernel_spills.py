"""Registers and spills of the one-chunk scan kernel, compiled for a GPU without one (Triton's own ptxas, on the CPU):

    python bench/kernel_spills.py [--warps all] [--out spills.json]

For the blocks of the bundled a5 model (8 heads of 32, d_state 32) and of the text model (8 heads of 64, d_state 64)
at 16, 32 and 64 tokens, three forms of triton_ssd's one-chunk kernel (bfloat16 inputs, an iteration: no final
state):
  plain     x, B and C read as the conv's own kernel wrote them (the default)
  conv      the conv computed in the kernel (triton_ops.FUSED_CONV_SCAN)
  conv+inj  the same with the injection added there (triton_ops.INJECT_IN_KERNELS)
at the warps the kernel launches with (triton_ssd._warps), or at 1, 2, 4 and 8 (--warps all). A thread's registers
and its stack (bytes a thread spills to local memory) are read from the compiled binary (cuobjdump). No timing: a
kernel that spills kilobytes a thread is slow, one that does not may still be.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from implicit_ssm_eval.model_adapters.backends import triton_ssd

SHAPES = {"a5": (32, 32), "text": (64, 64)}  # headdim, d_state (8 heads, one group)
LENGTHS = (16, 32, 64)
FORMS = {"plain": (False, False), "conv": (True, False), "conv+inj": (True, True)}
POINTERS = {"VALID": "*u8", "DT_BIAS": "*fp32", "A": "*fp32", "D": "*fp32", "S0": "*fp32", "Y": "*fp32",
            "SF": "*fp32"}  # every other pointer is to bfloat16
CONSTEXPRS = ("RAW_DT", "HAS_VALID", "HAS_D", "D_PER_P", "HAS_INIT", "FINAL", "BLOCK_T", "BLOCK_P", "BLOCK_N",
              "PRECISION", "CONV", "K", "HAS_BIAS", "HAS_WIN", "HAS_ADD", "CONV_ROWS")


def usage(length: int, headdim: int, dstate: int, form: str, warps: int | None = None, arch: int = 90) -> dict:
    """{'registers', 'stack', 'warps'} of the one-chunk kernel in `form` for this shape, compiled for sm_{arch}."""
    conv, injected = FORMS[form]
    t, p, n = (triton_ssd._block(v) for v in (length, headdim, dstate))
    warps = warps or triton_ssd._warps(t, p, n)
    constants = dict(RAW_DT=True, HAS_VALID=False, HAS_D=True, D_PER_P=False, HAS_INIT=True, FINAL=False, BLOCK_T=t,
                     BLOCK_P=p, BLOCK_N=n, PRECISION=triton_ssd.PRECISION, CONV=conv, K=4 if conv else 1,
                     HAS_BIAS=conv, HAS_WIN=conv, HAS_ADD=injected,
                     CONV_ROWS=triton_ssd.conv_rows(t, p, n) if conv else 1)
    kernel = triton_ssd._ssd_one_chunk_kernel
    names = kernel.arg_names
    signature = {a: "constexpr" if a in CONSTEXPRS else ("i32" if a[0].islower() or a in ("L", "P", "N") else
                                                         POINTERS.get(a, "*bf16")) for a in names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(names.index(k),): v for k, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        report = subprocess.run([str(tool), "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                                check=True).stdout
    return {"registers": int(re.search(r"REG:(\d+)", report)[1]), "stack": int(re.search(r"STACK:(\d+)", report)[1]),
            "warps": warps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warps", choices=("default", "all"), default="default")
    p.add_argument("--arch", type=int, default=90, help="sm_ARCH (90: H100 and H200)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)  # compiled, not interpreted
    rows = []
    for (model, (headdim, dstate)), length in ((m, n) for m in SHAPES.items() for n in LENGTHS):
        for warps in ((None,) if args.warps == "default" else (1, 2, 4, 8)):
            row = {"model": model, "tokens": length}
            for form in FORMS:
                used = usage(length, headdim, dstate, form, warps, args.arch)
                row["warps"] = used["warps"]
                row[form] = {k: used[k] for k in ("registers", "stack")}
            rows.append(row)
            print(f"{model:5s} {length:3d} tokens, {row['warps']} warps: " + "; ".join(
                f"{form} {row[form]['registers']} registers, {row[form]['stack']} B stack" for form in FORMS),
                flush=True)
    if args.out:
        args.out.write_text(json.dumps({"arch": args.arch, "triton": triton.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
