#!/usr/bin/env bash
# Create or reuse the project-local virtual environment (.venv) with pinned dependencies.
# Sourced by ./quickstart.sh and ./test.sh; safe to run repeatedly (a stamp skips work when nothing changed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
stamp="$venv/.policyopt-stamp"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  # torch first, from the pinned CPU build, so nothing pulls a CUDA build.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$root/constraints.txt" -e "$root[dev,bench,lm,report,ray,video]"
  echo "$want" > "$stamp"
fi
