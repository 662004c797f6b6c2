#!/usr/bin/env bash
# Set up (first run only), lint and format-check, then run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"
"$root/scripts/bootstrap.sh"
cd "$root"
"$root/.venv/bin/ruff" check .
"$root/.venv/bin/ruff" format --check .
exec "$root/.venv/bin/python" -m pytest "$@"
