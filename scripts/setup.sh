#!/usr/bin/env bash
# Create the virtual environment .venv at the repository root and install rsflow into it.
#
# TORCH_SPEC sets the torch requirement installed first (default torch==2.13.0, a CPU build).
# On a CUDA machine use, for example, TORCH_SPEC="torch==2.13.0" with the CUDA index of
# your choice in PIP_EXTRA_INDEX_URL, or TORCH_SPEC=torch for PyPI's default build.
# RSFLOW_EXTRAS sets the extras (default "cpu,test": faiss-cpu, pytest and the offline
# sentence-transformers model); use "gpu,test" for faiss-gpu instead of faiss-cpu.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
RSFLOW_EXTRAS="${RSFLOW_EXTRAS:-cpu,test}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch goes first and pinned: left to the resolver, a dependency would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[${RSFLOW_EXTRAS}]"
