#!/usr/bin/env bash
# Set up (dev) and run the whole test suite. This is exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check relay signaling run_server.py
.venv/bin/mypy --strict relay signaling
.venv/bin/python -m pytest "$@"
