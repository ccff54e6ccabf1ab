#!/usr/bin/env bash
# The project's test command (README; .ci/run calls exactly this): bootstrap, lint, types, the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k pull -x
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/bootstrap.sh

echo "== ruff"
.venv/bin/ruff check wrapper tests benchmarks scripts
.venv/bin/ruff format --check wrapper tests benchmarks scripts
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
