#!/usr/bin/env bash
# The main job: install what is missing, build (Release), run the default experiment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
# Run again, it starts the experiment again (--overwrite) unless told to --resume it.
case " $* " in
  *" --resume "*|*" --overwrite "*) build/ttq train configs/fashion_mnist_resnet20.json "$@" ;;
  *) build/ttq train configs/fashion_mnist_resnet20.json --overwrite "$@" ;;
esac
