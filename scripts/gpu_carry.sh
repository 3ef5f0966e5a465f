#!/usr/bin/env bash
# Copies what a GPU machine without Debian packages needs into third_party/ (git-ignored):
# the nlohmann/json headers and the GoogleTest sources. Run it here, then carry third_party/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p third_party
rm -rf third_party/nlohmann third_party/googletest
cp -r /usr/include/nlohmann third_party/nlohmann
cp -r /usr/src/googletest third_party/googletest
du -sh third_party
