#!/usr/bin/env bash
# Configures and builds into build/ (Release unless BUILD_TYPE says otherwise). Extra arguments
# go to cmake's configure step, e.g. -DTTQ_WITH_CUDA=OFF or -DTTQ_SANITIZE=ON.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" "$@"
cmake --build "$build_dir" -j "$(nproc)"
