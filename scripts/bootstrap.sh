#!/usr/bin/env bash
# Create ./.venv (if missing) and install dd3g into it.
#   bash scripts/bootstrap.sh          runtime + Dagster pipeline
#   bash scripts/bootstrap.sh dev      ... + test tools
# torch is installed first and pinned: an unpinned torch pulled in by a dependency makes pip
# fetch a multi-GB CUDA build. On a CUDA machine `torch==2.13.0` from PyPI is the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="pipeline"
[ "${1:-}" = "dev" ] && extras="dev"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
mkdir -p .dagster_home
echo "dd3g installed in $(pwd)/.venv (extras: ${extras})"
