#!/usr/bin/env bash
# The GPU check a reviewer runs (issue 13): on a machine with an NVIDIA GPU, Python >= 3.9,
# PyTorch with CUDA, NumPy, tqdm and matplotlib (JAX with CUDA, Flax and Optax too, for the
# jax rows) and nothing else installed, in about 5 minutes it prints one summary:
#   - the torch test suite on the GPU (RESNET_BACKEND=torch, the GPU as the default device),
#   - `bench` per precision (fp32, tf32, bf16) at 96 and 28 px, batch 256, against the
#     chapter's code with PyTorch's defaults and with the same precision,
#   - the chapter's recipe end to end (--preset d2l: 10 epochs, lr 0.05, batch 256, 96 px) in
#     fp32 and bf16: final test accuracy, img/s over epochs 2-10, peak GPU memory,
# and checks them against the issue's targets.
#
# On this (networked) machine, once:   bash tools/gpu_check.sh --prepare .gpu
#   copies the four Fashion-MNIST files and pytest's wheels into .gpu (git-ignored);
# on the GPU machine, from the repository root:   bash tools/gpu_check.sh .gpu
#   (the device tool: carry [".gpu"]). Results also go to $OUT (or DIR/results-<time>) as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    dir=${2:?usage: tools/gpu_check.sh --prepare DIR}
    data=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
    mkdir -p "$dir/data" "$dir/wheels"
    cp "$data"/*-ubyte.gz "$dir/data/"
    python3 -m pip download -q --only-binary :all: --python-version 3.12 -d "$dir/wheels" pytest
    ls -l "$dir/data" "$dir/wheels"
    exit 0
fi

dir=${1:?usage: tools/gpu_check.sh DIR (made by --prepare) [--smoke]}
shift
python=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" FASHION_MNIST_DIR="$dir/data" PYTHONUNBUFFERED=1
export PYTHONHASHSEED=0 RESNET_REQUIRE_REAL_DATA=1 MPLBACKEND=Agg
results=${OUT:-$dir/results-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"

if ! "$python" -c "import pytest" 2>/dev/null; then
    # No network there: pytest comes from the prepared wheels (pure Python), once.
    export PYTHONPATH="$PYTHONPATH:$(cd "$dir" && pwd)/site"
    "$python" -c "import pytest" 2>/dev/null ||
        "$python" -m pip install -q --no-index --find-links "$dir/wheels" --target "$dir/site" pytest
fi

exec "$python" tools/gpu_check.py --results "$results" "$@"
