#!/usr/bin/env bash
# The one-call GPU check: configure for sm_90, build, run the GPU tests, compute-sanitizer on a
# subset, a short training run, and print a short table last. Full logs go to the folder given
# (default: gpu_check_logs). Works without Debian packages when third_party/ holds the json
# headers and GoogleTest sources (scripts/gpu_carry.sh); finds cuDNN/NCCL in Python wheels.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check_logs}
mkdir -p "$out"
build=build-gpu
declare -A result
started=$(date +%s)

step() {  # step NAME COMMAND...: runs it, logs to $out/NAME.log, records ok/FAILED and seconds
  local name=$1; shift
  local t0=$(date +%s)
  if "$@" > "$out/$name.log" 2>&1; then result[$name]="ok"; else result[$name]="FAILED (see $name.log)"; fi
  result[$name]="${result[$name]} $(( $(date +%s) - t0 ))s"
}

hints=()
for pkg in cudnn nccl; do
  dir=$(python3 -c "import nvidia.$pkg, os; print(os.path.dirname(nvidia.$pkg.__file__))" 2>/dev/null || true)
  if [[ -n $dir ]]; then
    up=$(echo $pkg | tr a-z A-Z)
    hints+=("-D${up}_ROOT=$dir")
    # CMake finds libcudnn.so.9 only through an unversioned name: provide one in the build tree.
    mkdir -p "$build/_libs/$pkg"
    for f in "$dir"/lib/lib$pkg*.so.*; do [[ -e $f ]] && ln -sf "$f" "$build/_libs/$pkg/$(basename "$f" | sed 's/\.so\..*/.so/')"; done
    hints+=("-D${up}_LIBRARY=$(ls "$build/_libs/$pkg"/lib$pkg.so 2>/dev/null || true)")
  fi
done

{ nvidia-smi || true; nvcc --version || true; } > "$out/machine.log" 2>&1
step configure cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DTTQ_JSON_INCLUDE_DIR="$PWD/third_party" -DTTQ_GTEST_SOURCE_DIR="$PWD/third_party/googletest" "${hints[@]}"
step build cmake --build "$build" -j "$(nproc)"
step gpu_tests bash -c "cd $build && ctest -L gpu --output-on-failure"
step cpu_tests bash -c "cd $build && ctest -L cpu -j $(nproc) --output-on-failure"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
if [[ -n $sanitizer ]]; then
  step sanitizer "$sanitizer" --error-exitcode 1 "$build/tests/test_gpu_ttq" --gtest_filter='*n1000*:*Ties*'
else
  result[sanitizer]="not found"
fi
step train "$build/ttq" train configs/synthetic_smoke.json --quiet --set device=auto --set output_dir="$out/train_run"

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
passed=$(grep -oE "[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+" "$out/gpu_tests.log" | tail -1)
skipped=$(grep -c '\*\*\*Skipped' "$out/gpu_tests.log" || true)
echo
echo "GPU check $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') on ${gpu:-no GPU} ($(( $(date +%s) - started ))s)"
printf '| %-10s | %s |\n' "step" "result"
printf '|%s|%s|\n' "------------" "------------------------------"
for s in configure build gpu_tests cpu_tests sanitizer train; do printf '| %-10s | %s |\n' "$s" "${result[$s]}"; done
printf '| %-10s | %s |\n' "gpu tests" "${passed:-?}, ${skipped} skipped"
