#!/usr/bin/env bash
# Sets everything up (apt packages, .venv with test extras), then runs the whole test suite.
#   scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest -ra "$@"
