#!/usr/bin/env bash
# The one-call GPU check, in this order: configure for sm_90, build (the programs that give numbers
# first), a short training run (fp32, bf16), the TTQ kernel lab (build-gpu/benchmarks/bench_ttq_gpu,
# JSON in LOG_DIR/ttq_kernels.json), the engine's training throughput (build-gpu/ttq_throughput),
# each beside its PyTorch peer (scripts/pytorch_peer.py), the GPU tests with compute-sanitizer on a
# subset beside them, the CPU tests, and a short table last.
#
#   scripts/gpu_check.sh [LOG_DIR]     full logs in LOG_DIR (default: gpu_check_logs)
#
# Environment: GPU_CHECK_LIMIT_S (the time limit, default 450 s), GPU_CHECK_COMMIT (the commit the
# table names where the tree has no .git), GPU_CHECK_ARCHIVE=1 (at the end, LOG_DIR becomes
# LOG_DIR.tar.gz, and the table is also written to LOG_DIR.table.txt: two files to fetch).
# Works without Debian packages when third_party/ holds the json headers and GoogleTest sources
# (scripts/gpu_carry.sh); finds nvcc in /usr/local/cuda/bin and cuDNN/NCCL in Python wheels.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check_logs}
out=${out%/}  # the archive goes beside the folder, not into it
mkdir -p "$out"
build=build-gpu
declare -A result
started=$(date +%s)
export PYTHONUNBUFFERED=1
scratch=$(mktemp -d)  # the training runs' checkpoints: not logs
trap 'rm -rf "$scratch"' EXIT

# Every step runs under what is left of the run's time limit, so the table is printed inside
# 8 minutes even when something is slower than planned; a step that would start with under 30 s
# left is not started, and the table says so. One `timeout` per step, on the step's whole process
# group (a nested timeout would leave its child running when the outer one fires).
limit=${GPU_CHECK_LIMIT_S:-450}
keep=0       # seconds kept back for later steps (the GPU tests), which the current steps may not use
stop_why=""  # set when going on is pointless (no CUDA in the build): later steps are not started
step() {  # step NAME [CAP_S] COMMAND...: runs it, logs to $out/NAME.log, records ok/FAILED and seconds
  local name=$1; shift
  local cap=100000
  [[ $1 =~ ^[0-9]+$ ]] && { cap=$1; shift; }
  local t0=$(date +%s)
  local left=$(( limit - (t0 - started) - keep ))
  if [[ -n $stop_why ]]; then result[$name]="not started ($stop_why)"; return; fi
  if (( left < 30 )); then
    result[$name]="not started (time limit ${limit}s$( (( keep > 0 )) && echo ", ${keep}s kept for the GPU tests"))"
    return
  fi
  (( cap < left )) && left=$cap
  timeout -k 10 "$left" "$@" > "$out/$name.log" 2>&1  # SIGTERM at the limit, SIGKILL 10 s later
  case $? in
    0) result[$name]="ok" ;;
    124|137) result[$name]="TIMED OUT (see $name.log)" ;;
    *) result[$name]="FAILED (see $name.log)" ;;
  esac
  result[$name]="${result[$name]} $(( $(date +%s) - t0 ))s"
}

# nvcc: on PATH, or the toolkit's usual place.
if ! command -v nvcc > /dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
hints=()
# cuBLAS comes with the toolkit; should it not, the CUDA 13 wheels hold it in nvidia/cu13.
cu13=$(python3 -c "import nvidia.cu13 as m; print(list(m.__path__)[0])" 2>/dev/null || true)
if [[ -n $cu13 && -d $cu13/lib ]]; then
  hints+=("-DCUBLAS_ROOT=$cu13")
  export LD_LIBRARY_PATH="$cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
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
# The toolkit's own libraries (cudart, cuBLAS), wherever RUNPATH and ld.so.cache do not reach.
if nvcc_path=$(command -v nvcc); then
  cuda_lib=$(cd "$(dirname "$(readlink -f "$nvcc_path")")/.." && pwd)/lib64
  [[ -d $cuda_lib ]] && export LD_LIBRARY_PATH="$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
jobs=$(nproc); (( jobs > 16 )) && jobs=16

{
  timeout 20 nvidia-smi || true
  nvcc --version || true
  for tool in cmake ninja g++ python3; do echo "$tool: $(command -v $tool) $($tool --version 2>&1 | head -1)"; done
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" 2>&1
  echo "hints: ${hints[*]}"
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
} > "$out/machine.log" 2>&1
gpu=$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
# With a GPU the training runs ask for it (a CUDA failure is then an error, not a quiet CPU run).
train_device=auto
[[ -n $gpu ]] && train_device=cuda
step configure 120 cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DTTQ_JSON_INCLUDE_DIR="$PWD/third_party" -DTTQ_GTEST_SOURCE_DIR="$PWD/third_party/googletest" "${hints[@]}"
# With a GPU, a build without CUDA, cuDNN or cuBLAS would only give failed rows: stop here, say why.
if [[ -n $gpu ]]; then
  missing=""
  for lib in "CUDA" "cuBLAS\|cublas" "cudnn"; do
    grep -q -- "-- \($lib\): found" "$out/configure.log" 2>/dev/null || missing+=" ${lib%%\\*}"
  done
  [[ -n $missing ]] && stop_why="configure found no$missing; see configure.log"
fi
# The programs that give the numbers first, so a failing test file cannot keep them from being
# linked; then everything else, going on past failures (-k 0).
tools=(ttq ttq_throughput)
grep -q -- "-- CUDA: found" "$out/configure.log" 2>/dev/null && tools+=(bench_ttq_gpu)  # built with CUDA only
step build_tools cmake --build "$build" -j "$jobs" --target "${tools[@]}"
step build cmake --build "$build" -j "$jobs" -- -k 0
{ timeout 30 "$build/ttq" info; ldd "$build/ttq" | grep -E "not found|cudnn|nccl|cublas|cudart"; } > "$out/info.log" 2>&1
# The numbers first (each capped well above its expected time), then the GPU tests, so a slow
# test run cannot starve the benchmarks; 150 s stay kept for the tests, so the numbers cannot
# starve them either. A training run end to end first: the quickest sign that the GPU path works.
keep=150
step train "$build/ttq" train configs/synthetic_smoke.json --quiet --set device=$train_device --set output_dir="$scratch/train_run"
step train_bf16 "$build/ttq" train configs/synthetic_smoke.json --quiet --set device=$train_device --set precision=bf16 \
  --set output_dir="$scratch/train_run_bf16"
# TTQ kernels (fused / per-layer / unfused / fused with per-channel scales, every mode; verifies
# itself, exits 1 on a mismatch): about 20-40 s on an H200.
step kernels 120 "$build/benchmarks/bench_ttq_gpu" --mode all --json "$out/ttq_kernels.json"
# The engine's training throughput on synthetic data, with a per-phase breakdown in each log:
# 5 warm-up + 30 timed steps, about 10-20 s each, each ResNet-18 row followed by the PyTorch peer
# it is compared with (batch 256, 10 warm-up + 30 timed steps, cudnn.benchmark on; the engine keeps
# to cuDNN's deterministic algorithms).
thr() { local name=$1; shift; step "$name" 90 "$build/ttq_throughput" --device cuda --warmup 5 --steps 30 "$@"; }
peer() { local name=$1; shift; step "$name" 150 python3 scripts/pytorch_peer.py --model resnet18 --warmup 10 --steps 30 "$@"; }
r18=(--model resnet18 --image-size 224 --classes 1000 --batch 256)
thr thr_r18_ttq "${r18[@]}" --ttq 1
peer peer_fp32 --precision fp32
thr thr_r18_ttq_cl "${r18[@]}" --ttq 1 --precision bf16 --memory-format channels_last
peer peer_bf16 --precision bf16 --channels-last
thr thr_r18_ttq_bf16 "${r18[@]}" --ttq 1 --precision bf16
peer peer_bf16_nchw --precision bf16 --no-channels-last
thr thr_r18_fp "${r18[@]}" --ttq 0
thr thr_r18_fp_bf16 "${r18[@]}" --ttq 0 --precision bf16
thr thr_alex_ttq --model alexnet --image-size 224 --classes 1000 --batch 128 --ttq 1
thr thr_r20_ttq --model resnet20 --image-size 32 --classes 10 --batch 128 --ttq 1
keep=0

# compute-sanitizer, each program on its own (one failure does not hide the others): memcheck on a
# small subset, racecheck on the shared-memory block reductions of the TTQ kernels. One line:
# how many runs were clean, and for the others what was found (memory errors, CUDA API errors
# reported by the tool, failed tests, a timeout, or a machine the tool does not support).
sanitize() {
  local tool=$1 prog=$2 filter=$3 log=$out/sanitizer_run.log
  local left=$(( limit - ($(date +%s) - started) - 20 ))
  (( left > 120 )) && left=120
  if (( left < 10 )); then echo "$tool $prog: not started (time limit)"; return; fi
  timeout -k 5 "$left" "$sanitizer" --tool "$tool" --error-exitcode 86 "$build/tests/$prog" --gtest_filter="$filter" > "$log" 2>&1
  local rc=$?
  { echo "==== $tool $prog $filter: exit $rc"; cat "$log"; } >> "$out/sanitizer.log"
  if grep -qi "device not supported\|not supported on this" "$log"; then echo "$tool: unsupported on this machine"; return; fi
  case $rc in
    0) echo "clean" ;;
    86) echo "$tool $prog: $(grep -oE '(ERROR|RACECHECK) SUMMARY: [0-9]+ [a-z]+' "$log" | tail -1 | sed 's/.*SUMMARY: //')," \
             "$(grep -c '^========= Program hit' "$log") of them CUDA API errors (see sanitizer.log)" ;;
    124|137) echo "$tool $prog: timed out" ;;
    *) echo "$tool $prog: tests failed (exit $rc)" ;;
  esac
}
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
if [[ -n $stop_why ]]; then
  echo "not started ($stop_why)" > "$out/.sanitizer.result"
elif [[ -n $sanitizer ]]; then
  (
    runs=()
    while read -r tool prog filter; do runs+=("$(sanitize "$tool" "$prog" "$filter")"); done <<'EOF'
memcheck test_gpu_ttq *n1000*:*Ties*
memcheck test_gpu_ttq_multi *PerChannel*
memcheck test_gpu_ops *TtqPerChannel*
memcheck test_gpu_bf16 *Casts*:*Relu*:*TtqMultiTensor*
racecheck test_gpu_ops *TtqPerChannel*
racecheck test_gpu_ttq_multi *PerChannel*
memcheck test_gpu_channels_last *Permutation*:*bn2d_chunked_odd*
EOF
    clean=0 notes=""
    for r in "${runs[@]}"; do
      if [[ $r == clean ]]; then clean=$(( clean + 1 )); else notes+="; $r"; fi
    done
    echo "$clean of ${#runs[@]} runs clean$notes" > "$out/.sanitizer.result"
  ) &
else
  echo "not found" > "$out/.sanitizer.result"
fi
# The GPU tests (one process per test case, each creating its CUDA context: six at a time), beside
# the sanitizer; then the CPU tests (CI runs them on every change; here they check this build).
step gpu_tests bash -c "cd $build && ctest -L gpu -j 6 --timeout 120 --no-tests=error --output-on-failure"
wait
result[sanitizer]=$(cat "$out/.sanitizer.result" 2>/dev/null || echo "? (no result)")
rm -f "$out/.sanitizer.result" "$out/sanitizer_run.log"
step cpu_tests bash -c "cd $build && ctest -L cpu -j $jobs --no-tests=error --output-on-failure"

passed=$(grep -oE "[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+" "$out/gpu_tests.log" 2>/dev/null | tail -1)
skipped=$(grep -c '\*\*\*Skipped' "$out/gpu_tests.log" 2>/dev/null)
# A program that reports SKIPPED (no GPU) on a machine where nvidia-smi found one has failed.
skip_text() { if [[ -n $gpu ]]; then echo "FAILED: skipped although $gpu is present (see $1.log)"; else echo "skipped (no GPU)"; fi; }
# Headlines: fused TTQ fwd+bwd over ResNet-18's quantized layers (max mode) against the copy floor,
# and the PyTorch peer's images/s.
kern=$(grep -m1 '^RESULT ttq_fused_resnet18_max ' "$out/kernels.log" 2>/dev/null)
if [[ -n $kern ]]; then
  kern="$(sed -n 's/.*total_us=\([0-9.]*\).*/\1/p' <<< "$kern") us, $(sed -n 's/.*pct_copy_floor=\([0-9.]*\).*/\1/p' <<< "$kern")% of copy floor (target >= 80%)"
elif grep -q '^SKIPPED' "$out/kernels.log" 2>/dev/null; then
  kern=$(skip_text kernels)
fi
rate() {
  local v n
  v=$(sed -n 's/^THROUGHPUT .*images_per_s=\([0-9.]*\).*/\1 images\/s/p' "$out/$1.log" 2>/dev/null | tail -1)
  if [[ -z $v ]] && grep -q '^SKIPPED' "$out/$1.log" 2>/dev/null; then v=$(skip_text "$1"); fi
  v=${v:-?}
  # Convolutions that ran on NCHW or f32 copies (no deterministic cuDNN algorithm): a slower path.
  # One line per geometry and direction.
  n=$(grep -c '; running on ' "$out/$1.log" 2>/dev/null)
  [[ ${n:-0} -gt 0 ]] && v="$v, $n convolution geometry-directions ran on copies (see the log)"
  echo "$v"
}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "${GPU_CHECK_COMMIT:-?}")
[[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]] && commit="$commit+changes"
steps=(configure build_tools build train train_bf16 kernels thr_r18_ttq peer_fp32 thr_r18_ttq_cl peer_bf16
       thr_r18_ttq_bf16 peer_bf16_nchw thr_r18_fp thr_r18_fp_bf16 thr_alex_ttq thr_r20_ttq gpu_tests sanitizer cpu_tests)
# The end of each failed step's log, before the table (the table stays last).
for s in "${steps[@]}"; do
  if [[ ${result[$s]:-} == FAILED* || ${result[$s]:-} == "TIMED OUT"* ]] && [[ -f $out/$s.log ]]; then
    echo; echo "---- $s: ${result[$s]}, last lines of $s.log"; tail -n 12 "$out/$s.log"
  fi
done
table() {
  echo "GPU check $(date -u +%Y-%m-%d) commit $commit on ${gpu:-no GPU} ($(( $(date +%s) - started ))s)"
  printf '| %-16s | %s |\n' "step" "result"
  printf '|%s|%s|\n' "------------------" "------------------------------"
  for s in "${steps[@]}"; do
    printf '| %-16s | %s |\n' "$s" "${result[$s]:-?}"
  done
  printf '| %-16s | %s |\n' "gpu tests" "${passed:-?}, ${skipped:-?} skipped"
  for lib in CUDA cuDNN NCCL; do
    printf '| %-16s | %s |\n' "$lib" "$(sed -n "s/^  $lib *: //p" "$out/info.log" 2>/dev/null | head -1)"
  done
  for t in train train_bf16; do  # the device and precision the run's first line names
    printf '| %-16s | %s |\n' "$t on" "$(sed -n 's/^ttq train .*(\(\(cpu\|cuda\)[^)]*\))$/\1/p' "$out/$t.log" 2>/dev/null | head -1) (asked: $train_device)"
  done
  printf '| %-16s | %s |\n' "ttq r18" "${kern:-?}"
  printf '| %-16s | %s |\n' "r18 ttq" "$(rate thr_r18_ttq) (engine fp32)"
  printf '| %-16s | %s |\n' "torch fp32" "$(rate peer_fp32) (beside r18 ttq)"
  printf '| %-16s | %s |\n' "r18 ttq cl" "$(rate thr_r18_ttq_cl) (engine bf16, channels_last)"
  printf '| %-16s | %s |\n' "torch bf16 cl" "$(rate peer_bf16) (torch bf16 autocast, channels_last: beside r18 ttq cl)"
  printf '| %-16s | %s |\n' "r18 ttq bf" "$(rate thr_r18_ttq_bf16) (engine bf16)"
  printf '| %-16s | %s |\n' "torch bf16" "$(rate peer_bf16_nchw) (contiguous: beside r18 ttq bf)"
  printf '| %-16s | %s |\n' "r18 fp" "$(rate thr_r18_fp) (engine fp32)"
  printf '| %-16s | %s |\n' "r18 fp bf" "$(rate thr_r18_fp_bf16) (engine bf16)"
  printf '| %-16s | %s |\n' "alex ttq" "$(rate thr_alex_ttq) (engine fp32, batch 128)"
  printf '| %-16s | %s |\n' "r20 ttq" "$(rate thr_r20_ttq) (engine fp32, 32x32)"
  printf '| %-16s | %s |\n' "note" "torch: cudnn.benchmark; engine: cuDNN's heuristic, deterministic algorithms only"
}
echo
table | tee "$out/table.txt"
if [[ ${GPU_CHECK_ARCHIVE:-0} == 1 ]]; then
  cp "$out/table.txt" "$out.table.txt"
  tar czf "$out.tar.gz" -C "$(dirname "$out")" "$(basename "$out")" && rm -rf "$out"
fi
