#!/usr/bin/env bash
# Create .venv and install imgsvc with its dependencies (dev tools too with --dev). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
reqs=requirements.txt
[ "${1:-}" = "--dev" ] && reqs=requirements-dev.txt
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum "$reqs" requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r "$reqs"
  .venv/bin/pip install -q --no-deps -e .
  touch "$stamp"
fi
