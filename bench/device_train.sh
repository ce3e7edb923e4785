#!/usr/bin/env bash
# One device call on the 2-GPU machine: train the word-problem recipes (GPU 0: a5-implicit; GPU 1: the wide
# variant and the explicit twin) while the GPU tests run on GPU 1. Keeps only states and logs under $OUT.
#   source .device/on-device.sh; bash bench/device_train.sh "$OUT" SECONDS
set -uo pipefail
OUT=${1:?output folder}; LIMIT=${2:-480}
echo "import implicit_ssm_eval.model_adapters.lm_eval_hook" > /tmp/site/sitecustomize.py
CUDA_VISIBLE_DEVICES=0 python3 checkpoints/recipes.py a5-implicit --device cuda --time-limit "$LIMIT" --runs "$OUT/r" &
p0=$!
CUDA_VISIBLE_DEVICES=1 python3 checkpoints/recipes.py a5-implicit-wide a5-explicit --device cuda \
  --time-limit "$LIMIT" --runs "$OUT/r" &
p1=$!
CUDA_VISIBLE_DEVICES=1 timeout 300 python3 -m pytest -m gpu tests/model_adapters/test_triton_backend.py -q \
  -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests exit $?"; tail -4 "$OUT/gpu_tests.log"
wait $p0 $p1
for d in "$OUT"/r/*/; do echo "$d"; tail -2 "$d/train_log.csv"; done
rm -rf "$OUT"/r/*/model "$OUT"/r/*/stdout.log "$OUT"/r/*/tokenizer.json "$OUT"/r/*/training.json
