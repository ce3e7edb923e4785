#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md in one device call (the 2-GPU kind for the multi-GPU sweep):
#   source .device/on-device.sh; bash bench/device_run.sh "$OUT"
# Each step has its own time limit and writes its figures under $OUT as it goes.
set -uo pipefail
OUT=${1:?output folder}
export TOKENIZERS_PARALLELISM=false
# The project is on PYTHONPATH, not pip-installed: emulate its .pth registration hook for lm-eval.
echo "import implicit_ssm_eval.model_adapters.lm_eval_hook" > /tmp/site/sitecustomize.py
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/model_adapters/test_triton_conv.py \
  tests/lm_eval_adapters/test_mamba_ssm_parity.py > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests exit $?"
tail -3 "$OUT/gpu_tests.log"
timeout 100 python3 bench/gpu_bench.py --out "$OUT/bench.json" --sections forward,profile > "$OUT/bench.log" 2>&1
grep -E "forward_|decode_|profile_share|error" "$OUT/bench.log"
timeout 70 python3 bench/readings.py --device cuda --backend torch --graphs capture --block-sizes 4 8 16 32 \
  --repeats 3 --out "$OUT/readings_gpu.json" --plot "$OUT/readings_gpu.png" 2>&1 | tail -7
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  timeout 200 python3 bench/multi_gpu_sweep.py --out "$OUT/multi_gpu_sweep.json" --workers 2 2>&1 | tail -20
fi
