#!/usr/bin/env bash
# Install sk_mann with its test dependencies (CPU torch) and run lint + tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -c constraints.txt -e ".[dev]"
python -m ruff check sk_mann tests benchmarks examples
python -m pytest -q
