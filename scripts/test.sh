#!/usr/bin/env bash
# The default test suite (what CI runs after scripts/setup.sh). Slow checks: add `-m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -q "$@"
