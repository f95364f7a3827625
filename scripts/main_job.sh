#!/usr/bin/env bash
# Main job: the `cpu` profile on the real coco-subset images, then the tables, the figures and
# the book. Table 1 and 3 rows train on coco-subset, Table 2 rows on its VOC-20 view. Finished
# variants are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT="${MSDGCN_COCO_SUBSET:-../shared/data/coco-subset}"
bash scripts/setup_env.sh
. .venv/bin/activate
# Two variants at once, one thread each: 1.26 times the throughput of one run on two threads
# on the 2-core reference machine (benchmarks/parallel_runs.py).
python -m msdgcn batch --profile cpu --dataset coco-subset --data-root "$DATA_ROOT" --jobs "${MSDGCN_JOBS:-2}" "$@"
# Table 2 (per-class AP on the 20 VOC classes) reads the rows of Table 1 trained on the VOC-20
# view of the same images. The head-check rows run first, because they take longest.
VOC_VARIANTS=$(python -c "from msdgcn.tables import MEASURED_VARIANTS as v; print(*sorted(v, key=lambda n: not n.startswith('head-')))")
# shellcheck disable=SC2086  # one word per variant
python -m msdgcn batch --profile cpu --dataset coco-subset-voc20 --data-root "$DATA_ROOT" --jobs "${MSDGCN_JOBS:-2}" --variants $VOC_VARIANTS "$@"
python -m msdgcn report --profile cpu
jupyter-book build . --path-output book --quiet
echo "Results: results/cpu/coco-subset/   Book: book/_build/html/index.html"
