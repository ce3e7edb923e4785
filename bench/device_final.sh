#!/usr/bin/env bash
# Decoding benchmark (eager vs CUDA graph), logit parity with mamba_ssm at 130M, and data-parallel evaluation
# on 2 GPUs with a workload large enough to time.   source .device/on-device.sh; bash bench/device_final.sh "$OUT"
set -uo pipefail
OUT=${1:?output folder}
echo "import implicit_ssm_eval.model_adapters.lm_eval_hook" > /tmp/site/sitecustomize.py
timeout 100 python3 bench/gpu_bench.py --out "$OUT/bench_decode.json" --sections decode 2>&1 | tail -12
timeout 70 python3 bench/check_mamba_ssm_parity.py --out "$OUT/parity.json" 2>&1 | tail -8
timeout 170 python3 bench/multi_gpu.py --out "$OUT/multi_gpu.json" --gpus 2 --docs 1024 --context 2048 2>&1 | tail -20
