#!/usr/bin/env bash
# Main job: the `cpu` profile on the real coco-subset images, then the tables, the figures and
# the book. About 25 minutes on 2 CPU cores. Finished variants are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT="${MSDGCN_COCO_SUBSET:-../shared/data/coco-subset}"
bash scripts/setup_env.sh
. .venv/bin/activate
# Two variants at once, one thread each: 1.26 times the throughput of one run on two threads
# on the 2-core reference machine (benchmarks/parallel_runs.py).
python -m msdgcn batch --profile cpu --dataset coco-subset --data-root "$DATA_ROOT" --jobs "${MSDGCN_JOBS:-2}" "$@"
python -m msdgcn report --profile cpu
jupyter-book build . --path-output book --quiet
echo "Results: results/cpu/coco-subset/   Book: book/_build/html/index.html"
