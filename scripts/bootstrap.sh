#!/usr/bin/env bash
# Create .venv and install imgsvc with its dependencies (dev tools too with --dev). Idempotent:
# a stamp named after the requirement files' hash skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
note() { printf 'imgsvc: %s\n' "$*" >&2; }
reqs=requirements.txt
[ "${1:-}" = "--dev" ] && reqs=requirements-dev.txt
if [ ! -x .venv/bin/python ]; then
  note "creating the virtual environment .venv"
  python3 -m venv .venv || {
    rm -rf .venv  # half made: the next run must not take it for a working one
    note "python3 -m venv failed; on Debian/Ubuntu: sudo apt-get install python3-venv"
    exit 1
  }
fi
stamp=".venv/.installed-$(sha256sum "$reqs" requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # Not quiet: the first install takes a minute or more, and pip's own lines show it moving.
  note "installing $reqs into .venv (the first time takes a few minutes; later runs skip this)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -r "$reqs"
  .venv/bin/pip install -q --no-deps -e .
  touch "$stamp"
  note "installed; the imgsvc command is .venv/bin/imgsvc"
fi
