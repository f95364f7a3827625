#!/usr/bin/env bash
# Run benchmarks/speed.py on one NVIDIA GPU with GPU batch sizes. The fast setting there adds
# torch.compile and a fused optimizer to bf16 autocast and channels_last. Models not started
# within 150 s are skipped and listed, which keeps the run near 5 minutes (an estimate: this
# script has not yet run on a GPU). Without a GPU it runs the CPU quick mode instead.
#
#   bash benchmarks/gpu.sh [more speed.py options, e.g. --checkpoint PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if "$python_bin" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  exec "$python_bin" benchmarks/speed.py --device cuda --gpu-sizes --compile --time-budget 150 \
    --workers 8 --output benchmarks/results/speed_gpu.json "$@"
fi

echo "gpu.sh: torch finds no CUDA GPU, so this runs the CPU quick mode instead" >&2
exec "$python_bin" benchmarks/speed.py --device cpu --quick --no-isolate \
  --models gap-lite0,ml-gcn-lite0 --output benchmarks/results/speed_gpu_fallback.json "$@"
