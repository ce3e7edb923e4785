#!/usr/bin/env bash
# The measurements of BENCHMARKS.md's "near the limit" sections (the anchors, memory, batch_size=auto, adaptive
# budgets at LM scale, the sequential reading), in device calls of at most 10 minutes:
#   source .device/on-device.sh; bash bench/device_limits.sh "$OUT" anchors     # forward and decoding beside
#                                                                                # mamba_ssm and fla; decoding tests
#   source .device/on-device.sh; bash bench/device_limits.sh "$OUT" memory      # memory, auto_batch, lm_tolerance
#   source .device/on-device.sh; bash bench/device_limits.sh "$OUT" sequential  # the sequential reading, and
#                                                                                # the context read once (130M)
#   source .device/on-device.sh; bash bench/device_limits.sh "$OUT" shared      # the context read once from CUDA
#                                                                                # graphs: its GPU tests, the 130M
#                                                                                # explicit and lockstep readings
#   source .device/on-device.sh; bash bench/device_limits.sh "$OUT" step        # one f evaluation kernel by kernel,
#                                                                                # the sequential reading and decoding
#                                                                                # beside the kernels they replaced;
#                                                                                # the few-rows GEMM against cuBLAS
#   source .device/on-device.sh; bash bench/device_limits.sh "$OUT" cold        # the few-rows GEMM and the read-only
#                                                                                # step with operands past the L2, as
#                                                                                # the model reads them, beside warm;
#                                                                                # the fused steps' best tiles end to
#                                                                                # end; the fused-step checks
#   source .device/on-device.sh; bash bench/device_limits.sh "$OUT" chain       # the sequential reading with its
#                                                                                # iterations chained (three launches
#                                                                                # a layer) against the default; its
#                                                                                # checks on CUDA
#   source .device/on-device.sh; bash bench/device_limits.sh "$OUT" lanes       # the sequential reading in 1, 2
#                                                                                # or 4 lanes (row groups on their
#                                                                                # own streams); their GPU test; one
#                                                                                # evaluation's rows on streams
#   source .device/on-device.sh; bash bench/device_limits.sh "$OUT" fused       # blockwise vs sequential on A5
#                                                                                # with a block's conv inside its
#                                                                                # scan and the injection added in
#                                                                                # the kernels, beside the kernels
#                                                                                # as before; the
#                                                                                # kernels alone; their check; the
#                                                                                # language model's readings
#   source .device/on-device.sh; bash bench/device_limits.sh "$OUT" backoff     # blockwise vs sequential at the
#                                                                                # checkpoint's damping, solver backoff
#   source .device/on-device.sh; bash bench/device_limits.sh "$OUT" tests DIR   # the GPU tests under tests/DIR
# fla (flash-linear-attention 0.6.0 and fla-core, which need transformers >= 5.6.2) comes from wheels in .device/fla
# (`pip download --no-deps -d .device/fla flash-linear-attention==0.6.0 fla-core==0.6.0 transformers==5.25.0
# huggingface_hub==2.4.0`), installed in a folder of its own that only the anchors' process sees.
# The steps write under /tmp/device_limits/PART, packed after each step into DEST/PART.tgz (a device call brings back
# at most 8 files; the fused part writes 13): a call stopped at its limit keeps every step finished before.
set -uo pipefail
DEST=${1:?output folder}
PART=${2:?anchors, memory, sequential, shared, fused, backoff, step, cold, chain, lanes or tests}
OUT=/tmp/device_limits/$PART
mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false
echo "import implicit_ssm_eval.model_adapters.adapter.hook" > /tmp/site/sitecustomize.py
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

pack() {  # everything written so far, as one archive in DEST (replaced whole, so a stop mid-pack keeps the last)
    tar czf "$DEST/$PART.tgz.part" -C /tmp/device_limits "$PART" && mv "$DEST/$PART.tgz.part" "$DEST/$PART.tgz"
}

step() {  # name, time limit in seconds, command...: the log under $OUT as it goes, the exit status on stdout
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name exit $?" | tee -a "$OUT/steps.txt"
    pack
}

fla_site() {
    local site=/tmp/fla
    python3 -m pip install -q --no-index --no-deps --target $site .device/fla/flash_linear*.whl \
        .device/fla/fla_core*.whl || return 1
    if ! python3 -c "import sys, transformers; from packaging.version import Version as V
sys.exit(V(transformers.__version__) < V('5.6.2'))"; then
        python3 -m pip install -q --no-index --no-deps --target $site .device/fla/transformers*.whl \
            .device/fla/huggingface_hub*.whl >&2 || echo "transformers is older than fla needs" >&2
    fi
    echo $site
}

case $PART in
anchors)
    step gpu_tests_decoding 150 python3 -m pytest -m gpu -q -p no:cacheprovider \
        tests/model_adapters/test_triton_backend.py -k decoding
    site=$(fla_site) || site=""
    PYTHONPATH=$site${site:+:}$PYTHONPATH step bench_anchors 330 python3 bench/gpu_bench.py \
        --out "$OUT/bench_anchors.json" --sections forward,decode,fla_forward,fla_decode
    ;;
memory)
    step bench_memory 330 python3 bench/gpu_bench.py --out "$OUT/bench_memory.json" --sections memory,auto_batch
    step bench_lm_tolerance 200 python3 bench/gpu_bench.py --out "$OUT/bench_lm_tolerance.json" \
        --sections lm_tolerance
    ;;
sequential)
    step bench_sequential 220 python3 bench/gpu_bench.py --out "$OUT/bench_sequential.json" --sections sequential
    step shared_context_130m 200 python3 bench/shared_context.py --device cuda --make-130m /tmp/m130 --context 1024 \
        --questions 8
    ;;
shared)
    step gpu_tests_shared 270 python3 -m pytest -m gpu -q -p no:cacheprovider \
        tests/lm_eval_adapters/test_shared_context.py tests/lm_eval_adapters/test_adapters.py -k "shared or graphed"
    step shared_context_130m_graphs 300 python3 bench/shared_context.py --device cuda --make-130m /tmp/m130 \
        --context 1024 --questions 32 --run explicit:/tmp/m130/explicit-130m:dtype=bfloat16 \
        --run "implicit:/tmp/m130/implicit-130m:mode=simultaneous,max_iter=16,tol=0,dtype=bfloat16"
    ;;
backoff)  # blockwise against sequential at the checkpoint's damping with the backoff solver: two buckets the
    # solver's constants were not chosen on (seeds 1, 2) first, fixed_point beside them, then the one they were
    # (seed 0); bfloat16. The first call compiles the kernels on a fresh device, so it has the longest limit.
    readings() {  # solver, seed, time limit
        step "readings_$1_seed$2" "$3" python3 bench/readings.py --device cuda --backend triton --graphs capture \
            --dtype bfloat16 --docs 100 --seed "$2" --tau 0.8 --solver "$1" --block-sizes 16 32 --repeats 3 \
            --out "$OUT/readings_gpu_bf16_bucket100_tau0.8_$1_seed$2.json"
    }
    readings backoff 1 270
    readings backoff 2 120
    readings fixed_point 1 120
    step lm_readings 150 python3 bench/lm_readings.py --device cuda --backend triton --graphs capture \
        --dtype bfloat16 --docs 64 --out "$OUT/lm_readings_gpu_bf16.json"
    readings backoff 0 120
    step gpu_tests_backoff 120 python3 -m pytest -m gpu -q -p no:cacheprovider \
        tests/model_adapters/test_triton_backend.py tests/model_adapters/test_triton_kernels.py -k "backoff or solve"
    ;;
fused)  # a block's conv inside its one-chunk scan and its injection added in the kernels (triton_ops.FUSED_CONV_SCAN,
    # INJECT_IN_KERNELS): the kernels alone at every block shape, then A5 at 8x at the
    # checkpoint's damping with backoff on a bucket its constants were not chosen on, each blockwise reading beside the
    # same with the kernels apart and with the conv alone fused (a runtime each, interleaved); the language model; the
    # fused kernels' checks; a second bucket
    fused_readings() {  # seed, time limit
        step "readings_fused_seed$1" "$2" python3 bench/readings.py --device cuda --backend triton --graphs capture \
            --dtype bfloat16 --docs 100 --seed "$1" --tau 0.8 --solver backoff --block-sizes 16 32 --repeats 3 \
            --block-kernels apart conv --out "$OUT/readings_gpu_bf16_bucket100_tau0.8_backoff_fused_seed$1.json"
    }
    step kernels_conv_scan 100 python3 bench/kernels.py --out "$OUT/kernels_conv_scan.json" --sections conv_scan
    fused_readings 1 200
    step lm_readings 100 python3 bench/lm_readings.py --device cuda --backend triton --graphs capture \
        --dtype bfloat16 --docs 64 --solvers fixed_point --block-kernels apart --repeats 2 \
        --out "$OUT/lm_readings_gpu_bf16.json"
    step check_conv_scan 90 python3 -c "import sys; sys.path.insert(0, 'tests'); import triton_ssd_check as c
import triton_norm_check as n
failures = c.check_conv_scan('cuda') + n.check('cuda'); print('\n'.join(failures) or 'ok'); sys.exit(bool(failures))"
    step gpu_tests_fused 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/model_adapters/test_triton_backend.py \
        -k conv_in_the_scan
    fused_readings 2 100
    ;;
step)  # what matters first comes first: a call cut short by the device's limit keeps the logs written before
    step bench_step 240 python3 bench/gpu_bench.py --out "$OUT/bench_step.json" --sections sequential,step_profile
    step bench_decode 150 python3 bench/gpu_bench.py --out "$OUT/bench_decode.json" --sections decode
    step kernels_skinny_gemm 100 python3 bench/kernels.py --out "$OUT/kernels_skinny_gemm.json" --sections skinny_gemm
    step gpu_tests_step_kernels 150 python3 -m pytest -m gpu -q -p no:cacheprovider \
        tests/model_adapters/test_triton_kernels.py -k "norm or solve or gemm"  # the ssd checks: the cold part
    step kernels_steps 45 python3 bench/kernels.py --out "$OUT/kernels_steps.json" --sections steps
    ;;
cold)  # the survey, then the tiles it ranks first (one a state dtype, each kernel) in the sequential reading end to
    # end, then the fused-step checks (every surveyed tile at the 130M shape)
    step kernels_cold 120 python3 bench/kernels.py --out "$OUT/kernels_cold.json" --sections cold
    read=$(python3 bench/kernels.py --rank-tiles "$OUT/kernels_cold.json" read 2>> "$OUT/kernels_cold.log")
    commit=$(python3 bench/kernels.py --rank-tiles "$OUT/kernels_cold.json" commit 2>> "$OUT/kernels_cold.log")
    echo "ranked first: read ${read:-none}, commit ${commit:-none}"
    step step_tiles 140 python3 bench/gpu_bench.py --out "$OUT/step_tiles.json" --sections step_tiles \
        --read-tiles "$read" --commit-tiles "$commit"
    step gpu_tests_ssd 300 python3 -m pytest -m gpu -q -p no:cacheprovider \
        tests/model_adapters/test_triton_kernels.py -k ssd  # 170 s of compiling on a fresh H100 were too few
    ;;
chain)  # the bench compiles every kernel the checks need, so it comes first on a fresh device
    step bench_chain 330 python3 bench/gpu_bench.py --out "$OUT/bench_chain.json" --sections chain
    step gpu_tests_chain 150 python3 -m pytest -m gpu -q -p no:cacheprovider \
        tests/model_adapters/test_triton_kernels.py -k chain
    ;;
lanes)
    step bench_lanes 330 python3 bench/gpu_bench.py --out "$OUT/bench_lanes.json" --sections lanes
    step gpu_tests_lanes 100 python3 -m pytest -m gpu -q -p no:cacheprovider \
        tests/model_adapters/test_triton_backend.py -k lanes
    step kernels_streams 120 python3 bench/kernels.py --out "$OUT/kernels_streams.json" --sections streams
    ;;
tests)
    site=$(fla_site) || site=""
    PYTHONPATH=$site${site:+:}$PYTHONPATH step "gpu_tests_${3:?a folder under tests/}" 560 python3 -m pytest -m gpu \
        -q -p no:cacheprovider --durations=10 "tests/$3"
    ;;
*)
    echo "part must be anchors, memory, sequential, shared, fused, backoff, step, cold, chain, lanes or tests, got $PART" >&2
    exit 2
    ;;
esac
pack
