#!/usr/bin/env bash
# Installs the Debian 12 packages the build and the tests need (only those missing).
# Nothing is fetched from anywhere but the distribution's package archive.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  nlohmann-json3-dev        # JSON configs (required)
  libgtest-dev              # tests
  libbenchmark-dev          # benchmarks
  libdnnl-dev               # oneDNN: CPU convolution / batch norm / pooling fast path
  ocl-icd-opencl-dev        # OpenCL, which Debian's oneDNN CMake package requires
  libopenmpi-dev openmpi-bin  # multi-process launch
  libturbojpeg0-dev         # JPEG decoding for ImageNet
  zlib1g-dev                # gzip-compressed IDX files
  dataset-fashion-mnist     # the real Fashion-MNIST, under /usr/share/datasets/fashion-mnist
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "setup: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
