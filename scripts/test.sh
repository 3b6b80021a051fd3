#!/usr/bin/env bash
# Set up and run the test suite: dev dependencies, the detector weights (MODELS_DIR), a Redis for
# TEST_REDIS_URL (default 127.0.0.1:6379/15, and the DB below it for the second test process; the
# suite refuses a DB that holds keys it did not write, see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --dev
scripts/ensure-redis.sh "${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}" >/dev/null
. .venv/bin/activate
# Strict: the detector tests need every weight file, so a failed download stops here, said plainly.
imgsvc fetch-models --strict
ruff check .
ruff format --check .
# Two processes, a test file each at a time: most of the suite's time is spent waiting on the real
# workers, servers and browser it starts. Each process has a Redis DB of its own (tests/conftest.py).
HF_HUB_OFFLINE=1 python -m pytest -n "${TEST_PROCESSES:-2}" --dist loadfile "$@"
