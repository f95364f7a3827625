#!/usr/bin/env bash
# Create .venv (if missing) and install the package with everything the notebooks and book need.
# torch 2.14.1 and torchvision 0.29.1 are pinned in pyproject.toml; on the reference machine pip
# takes them from local disk, elsewhere from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
python -m pip install --quiet -e .
python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" >/dev/null
# A pinned MathJax copy for the book, so that it renders equations offline.
bash scripts/fetch_mathjax.sh
