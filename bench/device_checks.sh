#!/usr/bin/env bash
# One device call: GPU tests, benchmarks, lm-eval throughput vs mamba_ssm, multi-GPU evaluation, and a short
# GPU training probe. Run from the project root on the device machine (see BENCHMARKS.md):
#   source .device/on-device.sh; bash bench/device_checks.sh "$OUT"
set -uo pipefail
OUT=${1:?output folder}
export TOKENIZERS_PARALLELISM=false
# The project is on PYTHONPATH, not pip-installed: emulate its .pth registration hook for lm-eval.
echo "import implicit_ssm_eval.model_adapters.lm_eval_hook" > /tmp/site/sitecustomize.py
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
# A short training probe (step time on this GPU) shares the GPU with the tests, which time nothing.
python3 checkpoints/recipes.py a5-implicit a5-explicit --device cuda --time-limit 60 --runs "$OUT/r" \
  > /dev/null 2>&1 &
probe=$!
timeout 200 python3 -m pytest -m gpu tests/model_adapters/test_triton_backend.py -q -p no:cacheprovider \
  > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests exit $?"; tail -3 "$OUT/gpu_tests.log"
wait $probe
tail -2 "$OUT"/r/*/train_log.csv
rm -f "$OUT"/r/*/stdout.log "$OUT"/r/*/train_state.pt
timeout 240 python3 bench/gpu_bench.py --out "$OUT/bench.json" 2>&1 | tail -45
timeout 150 python3 bench/lm_eval_throughput.py --out "$OUT/lm_eval_throughput.json" --docs 256 --context 1024 \
  2>&1 | tail -12
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  timeout 150 python3 bench/multi_gpu.py --out "$OUT/multi_gpu.json" --gpus 2 --docs 512 --context 512 2>&1 | tail -14
fi
