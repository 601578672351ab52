#!/usr/bin/env bash
# Set up (dev) and run the whole test suite. This is exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check .
# quality gates (issue #10); one per line so they can be reordered or dropped independently
.venv/bin/ruff format --check .
.venv/bin/mypy --strict relay signaling
.venv/bin/mypy --explicit-package-bases training bench  # bench/ scripts import each other as bench.x
.venv/bin/python -m pytest "$@"
