#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md (the 2-GPU kind also runs the multi-GPU sweep):
#   source .device/on-device.sh; bash bench/device_run.sh "$OUT"
# Each step has its own time limit and writes its figures under $OUT as it goes; all of them take more than one
# 10-minute device call, so run them across calls (the first ones, or the 2-GPU ones). A fresh machine spends minutes
# compiling and autotuning Triton kernels on first use: the later steps find them in Triton's disk cache.
set -uo pipefail
OUT=${1:?output folder}
export TOKENIZERS_PARALLELISM=false
# The project is on PYTHONPATH, not pip-installed: emulate its .pth registration hook for lm-eval.
echo "import implicit_ssm_eval.model_adapters.adapter.hook" > /tmp/site/sitecustomize.py
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
for backend in triton torch; do
  timeout 270 python3 bench/readings.py --device cuda --backend $backend --graphs capture --block-sizes 8 16 32 64 \
    --repeats 3 --out "$OUT/readings_gpu_$backend.json" --plot "$OUT/readings_gpu_$backend.png" 2>&1 | tail -7
done
timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider tests/model_adapters/test_triton_kernels.py \
  tests/model_adapters/test_triton_backend.py \
  > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests exit $?"; tail -3 "$OUT/gpu_tests.log"
timeout 90 python3 bench/kernels.py --out "$OUT/kernels.json" 2>&1 | tail -32
timeout 250 python3 bench/gpu_bench.py --out "$OUT/bench.json" --sections forward,host,overhead,profile,lengths,tolerance \
  > "$OUT/bench.log" 2>&1
grep -E "forward_|host_|overhead|profile_share|lengths_.*_s|tolerance_|error" "$OUT/bench.log"
timeout 300 python3 bench/lm_eval_throughput.py --docs 256 --context 1024 --out "$OUT/lm_eval_throughput.json" \
  > "$OUT/lm_eval_throughput.log" 2>&1; echo "lm-eval throughput exit $?"
timeout 300 python3 bench/cross_process.py --out "$OUT/cross_process.json" --processes 2 2>&1 | tail -30
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  timeout 400 python3 bench/multi_gpu_sweep.py --out "$OUT/multi_gpu_sweep.json" --workers 2 2>&1 | tail -30
fi
timeout 400 python3 -m pytest -m gpu -q -p no:cacheprovider tests/lm_eval_adapters/test_mamba_ssm_parity.py \
  > "$OUT/parity_tests.log" 2>&1; echo "parity tests exit $?"; tail -3 "$OUT/parity_tests.log"
