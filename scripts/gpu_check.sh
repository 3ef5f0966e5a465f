#!/usr/bin/env bash
# The one-call GPU check: configure for sm_90, build, run the GPU tests, compute-sanitizer on a
# subset, a short training run, the TTQ kernel lab (build-gpu/benchmarks/bench_ttq_gpu, JSON in
# LOG_DIR/ttq_kernels.json), the PyTorch peer (scripts/pytorch_peer.py, bf16 and fp32), and print
# the engine's training throughput (build-gpu/ttq_throughput), and a short table last. Full logs go to the folder given
# (default: gpu_check_logs). Works without Debian packages when third_party/ holds the json
# headers and GoogleTest sources (scripts/gpu_carry.sh); finds cuDNN/NCCL in Python wheels.
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
step() {  # step NAME COMMAND...: runs it, logs to $out/NAME.log, records ok/FAILED and seconds
  local name=$1; shift
  local t0=$(date +%s)
  local left=$(( limit - (t0 - started) ))
  if (( left < 30 )); then result[$name]="not started (time limit ${limit}s)"; return; fi
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
# One process per test case (gtest_discover_tests), each creating its CUDA context: several at once.
step gpu_tests bash -c "cd $build && ctest -L gpu -j 6 --timeout 120 --no-tests=error --output-on-failure"
step train "$build/ttq" train configs/synthetic_smoke.json --quiet --set device=$train_device --set output_dir="$out/train_run"
step train_bf16 "$build/ttq" train configs/synthetic_smoke.json --quiet --set device=$train_device --set precision=bf16 \
  --set output_dir="$out/train_run_bf16"
# TTQ kernels (fused / per-layer / unfused, every mode; verifies itself, exits 1 on a mismatch):
# about 20-40 s on an H200. PyTorch peer: ResNet-18, batch 256, 10 warm-up + 30 timed steps each.
step kernels timeout 240 "$build/benchmarks/bench_ttq_gpu" --mode all --json "$out/ttq_kernels.json"
# The engine's training throughput on synthetic data (fp32), with a per-phase breakdown in each log.
step thr_r18_ttq timeout 180 "$build/ttq_throughput" --device cuda --model resnet18 --image-size 224 --classes 1000 --batch 256 --ttq 1 --warmup 5 --steps 30
step thr_r18_fp timeout 180 "$build/ttq_throughput" --device cuda --model resnet18 --image-size 224 --classes 1000 --batch 256 --ttq 0 --warmup 5 --steps 30
step thr_r18_ttq_bf16 timeout 180 "$build/ttq_throughput" --device cuda --model resnet18 --image-size 224 --classes 1000 --batch 256 --ttq 1 --precision bf16 --warmup 5 --steps 30
step thr_r18_ttq_cl timeout 180 "$build/ttq_throughput" --device cuda --model resnet18 --image-size 224 --classes 1000 --batch 256 --ttq 1 --precision bf16 --memory-format channels_last --warmup 5 --steps 30
step thr_r18_fp_bf16 timeout 180 "$build/ttq_throughput" --device cuda --model resnet18 --image-size 224 --classes 1000 --batch 256 --ttq 0 --precision bf16 --warmup 5 --steps 30
step thr_alex_ttq timeout 180 "$build/ttq_throughput" --device cuda --model alexnet --image-size 224 --classes 1000 --batch 128 --ttq 1 --warmup 5 --steps 30
step thr_r20_ttq timeout 120 "$build/ttq_throughput" --device cuda --model resnet20 --image-size 32 --classes 10 --batch 128 --ttq 1 --warmup 10 --steps 50
step peer_bf16 timeout 300 python3 scripts/pytorch_peer.py --model resnet18 --precision bf16 --warmup 10 --steps 30
step peer_fp32 timeout 300 python3 scripts/pytorch_peer.py --model resnet18 --precision fp32 --warmup 10 --steps 30
# compute-sanitizer (memcheck) on a small subset, after the numbers: it is the slowest step.
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
if [[ -n $sanitizer ]]; then
  step sanitizer timeout 180 bash -c "'$sanitizer' --error-exitcode 1 '$build/tests/test_gpu_ttq' --gtest_filter='*n1000*:*Ties*' &&
    '$sanitizer' --error-exitcode 1 '$build/tests/test_gpu_bf16' --gtest_filter='*Casts*:*Relu*:*TtqMultiTensor*' &&
    '$sanitizer' --error-exitcode 1 '$build/tests/test_gpu_channels_last' --gtest_filter='*Permutation*:*bn2d_chunked_odd*'"
else
  result[sanitizer]="not found"
fi
# The CPU tests last: CI runs them on every change; here they check the GPU machine's build.
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
  local v
  v=$(sed -n 's/^THROUGHPUT .*images_per_s=\([0-9.]*\).*/\1 images\/s/p' "$out/$1.log" 2>/dev/null | tail -1)
  if [[ -z $v ]] && grep -q '^SKIPPED' "$out/$1.log" 2>/dev/null; then v="skipped (no GPU)"; fi
  echo "${v:-?}"
}
echo
echo "GPU check $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') on ${gpu:-no GPU} ($(( $(date +%s) - started ))s)"
printf '| %-16s | %s |\n' "step" "result"
printf '|%s|%s|\n' "------------------" "------------------------------"
for s in configure build gpu_tests train train_bf16 kernels thr_r18_ttq thr_r18_fp thr_r18_ttq_bf16 thr_r18_ttq_cl thr_r18_fp_bf16 thr_alex_ttq thr_r20_ttq peer_bf16 peer_fp32 sanitizer cpu_tests; do printf '| %-16s | %s |\n' "$s" "${result[$s]}"; done
printf '| %-16s | %s |\n' "gpu tests" "${passed:-?}, ${skipped} skipped"
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
printf '| %-16s | %s |\n' "torch bf16" "$(peer peer_bf16)"
printf '| %-16s | %s |\n' "torch fp32" "$(peer peer_fp32)"
