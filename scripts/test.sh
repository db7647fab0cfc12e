#!/usr/bin/env bash
# Sets everything up (apt packages, .venv with test extras), then runs the whole test suite.
#   scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# Lint first (ruff: pycodestyle, pyflakes, bugbear, simplify, pyupgrade, imports; rules in
# pyproject.toml). scripts/bench joins once issue 12 gives the benchmarks one shared module.
echo "test: ruff check lakefs_fuse tests" >&2
.venv/bin/ruff check --quiet lakefs_fuse tests
exec .venv/bin/python -m pytest -ra "$@"
