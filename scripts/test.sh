#!/usr/bin/env bash
# Sets everything up (apt packages, .venv with test extras), then runs the whole test suite.
#   scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# Lint first (ruff: pycodestyle, pyflakes, bugbear, simplify, pyupgrade, imports; rules in
# pyproject.toml), over the package, the tests and the scripts (benchmarks included).
echo "test: ruff check lakefs_fuse tests scripts" >&2
.venv/bin/ruff check --quiet lakefs_fuse tests scripts
# Then types ([tool.mypy] in pyproject.toml: the package, strict for the modules listed there).
# Silent while it works: ~15 s from cold, a second or two with its cache in .mypy_cache.
echo "test: type check (mypy) lakefs_fuse ..." >&2
.venv/bin/mypy
exec .venv/bin/python -m pytest -ra "$@"
