#!/usr/bin/env bash
# The one-call GPU check, in this order: configure for sm_90, build, a short training run (fp32,
# bf16), the TTQ kernel lab (build-gpu/benchmarks/bench_ttq_gpu, JSON in LOG_DIR/ttq_kernels.json),
# the engine's training throughput (build-gpu/ttq_throughput), the PyTorch peer
# (scripts/pytorch_peer.py), the GPU tests with compute-sanitizer on a subset beside them, the CPU
# tests, and a short table last. Full logs go to the folder given (default: gpu_check_logs). Works without
# Debian packages when third_party/ holds the json headers and GoogleTest sources
# (scripts/gpu_carry.sh); finds cuDNN/NCCL in Python wheels.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check_logs}
mkdir -p "$out"
build=build-gpu
declare -A result
started=$(date +%s)

# Every step runs under what is left of the run's time limit (GPU_CHECK_LIMIT_S, default 450 s), so
# the table is printed inside 8 minutes even when something is slower than planned; a step that
# would start with under 30 s left is not started, and the table says so.
limit=${GPU_CHECK_LIMIT_S:-450}
keep=0  # seconds kept back for later steps (the GPU tests), which the current steps may not use
step() {  # step NAME COMMAND...: runs it, logs to $out/NAME.log, records ok/FAILED and seconds
  local name=$1; shift
  local t0=$(date +%s)
  local left=$(( limit - (t0 - started) - keep ))
  if (( left < 30 )); then
    result[$name]="not started (time limit ${limit}s$( (( keep > 0 )) && echo ", ${keep}s kept for the GPU tests"))"
    return
  fi
  set -- timeout -k 10 "$left" "$@"  # SIGTERM at the limit, SIGKILL 10 s later
  "$@" > "$out/$name.log" 2>&1
  case $? in
    0) result[$name]="ok" ;;
    124|137) result[$name]="TIMED OUT (see $name.log)" ;;
    *) result[$name]="FAILED (see $name.log)" ;;
  esac
  result[$name]="${result[$name]} $(( $(date +%s) - t0 ))s"
}

hints=()
# cuBLAS comes with the toolkit; should it not, the CUDA 13 wheels hold it in nvidia/cu13.
cu13=$(python3 -c "import nvidia.cu13 as m; print(list(m.__path__)[0])" 2>/dev/null || true)
[[ -n $cu13 && -d $cu13/lib ]] && hints+=("-DCUBLAS_ROOT=$cu13")
for pkg in cudnn nccl; do
  # nvidia.cudnn may be a namespace package (no __file__): take its folder from __path__.
  dir=$(python3 -c "import nvidia.$pkg as m; print(list(m.__path__)[0])" 2>/dev/null || true)
  if [[ -n $dir && -d $dir/lib ]]; then
    up=$(echo $pkg | tr a-z A-Z)
    hints+=("-D${up}_ROOT=$dir")
    # The build tree's RUNPATH already names this folder; the loader path also covers programs
    # started from elsewhere (the PyTorch peer loads the same wheels).
    export LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
done

{ nvidia-smi || true; nvcc --version || true; } > "$out/machine.log" 2>&1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
# With a GPU the training runs ask for it (a CUDA failure is then an error, not a quiet CPU run).
train_device=auto
[[ -n $gpu ]] && train_device=cuda
step configure cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DTTQ_JSON_INCLUDE_DIR="$PWD/third_party" -DTTQ_GTEST_SOURCE_DIR="$PWD/third_party/googletest" "${hints[@]}"
step build cmake --build "$build" -j "$(nproc)"
timeout 30 "$build/ttq" info > "$out/info.log" 2>&1  # versions built against and loaded, the GPUs found
# The numbers first (each capped well above its expected time), then the GPU tests, so a slow
# test run cannot starve the benchmarks; 150 s stay kept for the tests, so the numbers cannot
# starve them either. A training run end to end first: the quickest sign that the GPU path works.
keep=150
step train "$build/ttq" train configs/synthetic_smoke.json --quiet --set device=$train_device --set output_dir="$out/train_run"
step train_bf16 "$build/ttq" train configs/synthetic_smoke.json --quiet --set device=$train_device --set precision=bf16 \
  --set output_dir="$out/train_run_bf16"
# TTQ kernels (fused / per-layer / unfused / fused with per-channel scales, every mode; verifies
# itself, exits 1 on a mismatch):
# about 20-40 s on an H200.
step kernels timeout 120 "$build/benchmarks/bench_ttq_gpu" --mode all --json "$out/ttq_kernels.json"
# The engine's training throughput on synthetic data, with a per-phase breakdown in each log:
# 5 warm-up + 30 timed steps, about 10-20 s each. PyTorch peer: ResNet-18, batch 256, 10 warm-up +
# 30 timed steps, cudnn.benchmark on (the engine keeps to cuDNN's deterministic algorithms).
thr() { local name=$1; shift; step "$name" timeout 90 "$build/ttq_throughput" --device cuda --warmup 5 --steps 30 "$@"; }
r18=(--model resnet18 --image-size 224 --classes 1000 --batch 256)
thr thr_r18_ttq "${r18[@]}" --ttq 1
thr thr_r18_fp "${r18[@]}" --ttq 0
thr thr_r18_ttq_bf16 "${r18[@]}" --ttq 1 --precision bf16
thr thr_r18_ttq_cl "${r18[@]}" --ttq 1 --precision bf16 --memory-format channels_last
thr thr_r18_fp_bf16 "${r18[@]}" --ttq 0 --precision bf16
thr thr_alex_ttq --model alexnet --image-size 224 --classes 1000 --batch 128 --ttq 1
thr thr_r20_ttq --model resnet20 --image-size 32 --classes 10 --batch 128 --ttq 1
step peer_bf16 timeout 150 python3 scripts/pytorch_peer.py --model resnet18 --precision bf16 --channels-last --warmup 10 --steps 30
step peer_fp32 timeout 150 python3 scripts/pytorch_peer.py --model resnet18 --precision fp32 --warmup 10 --steps 30
step peer_bf16_nchw timeout 150 python3 scripts/pytorch_peer.py --model resnet18 --precision bf16 --no-channels-last --warmup 10 --steps 30
keep=0
# After the numbers (nothing is timed any more): the GPU tests (one process per test case, each
# creating its CUDA context: six at a time) and, beside them, compute-sanitizer (memcheck) on a
# small subset, its result left in a file; then the CPU tests (CI runs them on every change; here
# they check this machine's build).
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
if [[ -n $sanitizer ]]; then
  ( step sanitizer timeout 180 bash -c "'$sanitizer' --error-exitcode 1 '$build/tests/test_gpu_ttq' --gtest_filter='*n1000*:*Ties*' &&
      '$sanitizer' --error-exitcode 1 '$build/tests/test_gpu_bf16' --gtest_filter='*Casts*:*Relu*:*TtqMultiTensor*' &&
      '$sanitizer' --error-exitcode 1 '$build/tests/test_gpu_channels_last' --gtest_filter='*Permutation*:*bn2d_chunked_odd*' &&
      '$sanitizer' --error-exitcode 1 '$build/tests/test_gpu_ttq_multi' --gtest_filter='*PerChannel*' &&
      '$sanitizer' --error-exitcode 1 '$build/tests/test_gpu_ops' --gtest_filter='*TtqPerChannel*'"
    echo "${result[sanitizer]}" > "$out/.sanitizer.result" ) &
else
  echo "not found" > "$out/.sanitizer.result"
fi
step gpu_tests bash -c "cd $build && ctest -L gpu -j 6 --timeout 120 --no-tests=error --output-on-failure"
wait
result[sanitizer]=$(cat "$out/.sanitizer.result" 2>/dev/null || echo "? (no result)")
rm -f "$out/.sanitizer.result"
step cpu_tests bash -c "cd $build && ctest -L cpu -j $(nproc) --no-tests=error --output-on-failure"

passed=$(grep -oE "[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+" "$out/gpu_tests.log" | tail -1)
skipped=$(grep -c '\*\*\*Skipped' "$out/gpu_tests.log" || true)
# Headlines: fused TTQ fwd+bwd over ResNet-18's quantized layers (max mode) against the copy floor,
# and the PyTorch peer's images/s.
kern=$(grep -m1 '^RESULT ttq_fused_resnet18_max ' "$out/kernels.log" 2>/dev/null)
if [[ -n $kern ]]; then
  kern="$(sed -n 's/.*total_us=\([0-9.]*\).*/\1/p' <<< "$kern") us, $(sed -n 's/.*pct_copy_floor=\([0-9.]*\).*/\1/p' <<< "$kern")% of copy floor (target >= 80%)"
elif grep -q '^SKIPPED' "$out/kernels.log" 2>/dev/null; then
  kern="skipped (no GPU)"
fi
peer() {
  local v n
  v=$(sed -n 's/^THROUGHPUT .*images_per_s=\([0-9.]*\).*/\1 images\/s/p' "$out/$1.log" 2>/dev/null | tail -1)
  if [[ -z $v ]] && grep -q '^SKIPPED' "$out/$1.log" 2>/dev/null; then v="skipped (no GPU)"; fi
  # Convolutions that ran on NCHW or f32 copies (no deterministic cuDNN algorithm): a slower path.
  v=${v:-?}
  n=$(grep -c '; running on ' "$out/$1.log" 2>/dev/null)
  [[ ${n:-0} -gt 0 ]] && v="$v, $n convolution geometries fell back to copies (see the log)"
  echo "${v:-?}"
}
echo
echo "GPU check $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') on ${gpu:-no GPU} ($(( $(date +%s) - started ))s)"
printf '| %-16s | %s |\n' "step" "result"
printf '|%s|%s|\n' "------------------" "------------------------------"
for s in configure build train train_bf16 kernels thr_r18_ttq thr_r18_fp thr_r18_ttq_bf16 thr_r18_ttq_cl thr_r18_fp_bf16 thr_alex_ttq thr_r20_ttq peer_bf16 peer_fp32 peer_bf16_nchw gpu_tests sanitizer cpu_tests; do printf '| %-16s | %s |\n' "$s" "${result[$s]}"; done
printf '| %-16s | %s |\n' "gpu tests" "${passed:-?}, ${skipped} skipped"
for lib in CUDA cuDNN NCCL; do
  printf '| %-16s | %s |\n' "$lib" "$(sed -n "s/^  $lib *: //p" "$out/info.log" 2>/dev/null | head -1)"
done
for t in train train_bf16; do  # the device and precision the run's first line names
  printf '| %-16s | %s |\n' "$t on" "$(sed -n 's/^ttq train .*(\(\(cpu\|cuda\)[^)]*\))$/\1/p' "$out/$t.log" 2>/dev/null | head -1) (asked: $train_device)"
done
printf '| %-16s | %s |\n' "ttq r18" "${kern:-?}"
printf '| %-16s | %s |\n' "r18 ttq" "$(peer thr_r18_ttq) (engine fp32)"
printf '| %-16s | %s |\n' "r18 fp" "$(peer thr_r18_fp) (engine fp32)"
printf '| %-16s | %s |\n' "r18 ttq bf" "$(peer thr_r18_ttq_bf16) (engine bf16)"
printf '| %-16s | %s |\n' "r18 ttq cl" "$(peer thr_r18_ttq_cl) (engine bf16, channels_last)"
printf '| %-16s | %s |\n' "r18 fp bf" "$(peer thr_r18_fp_bf16) (engine bf16)"
printf '| %-16s | %s |\n' "alex ttq" "$(peer thr_alex_ttq) (engine fp32, batch 128)"
printf '| %-16s | %s |\n' "r20 ttq" "$(peer thr_r20_ttq) (engine fp32, 32x32)"
printf '| %-16s | %s |\n' "torch bf16 cl" "$(peer peer_bf16) (torch bf16 autocast, channels_last: beside r18 ttq cl)"
printf '| %-16s | %s |\n' "torch fp32" "$(peer peer_fp32) (beside r18 ttq)"
printf '| %-16s | %s |\n' "torch bf16" "$(peer peer_bf16_nchw) (contiguous: beside r18 ttq bf)"
printf '| %-16s | %s |\n' "note" "torch: cudnn.benchmark; engine: cuDNN's heuristic, deterministic algorithms only"
