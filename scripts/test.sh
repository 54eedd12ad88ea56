#!/usr/bin/env bash
# The test command: set up .venv, lint, then the default test suite (slow real-model tests excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# Both tiers: the unit tests (plain `pytest`, about 2 minutes) and the integration tier.
.venv/bin/python -m pytest -q -m "not slow" "$@"
