#!/usr/bin/env bash
# The GPU figures: the throughput, batching and pipeline benches with the model on CUDA in float16.
#
#   bench/gpu.sh [--quick] [OUTDIR]     (default OUTDIR bench/out/gpu: one .txt per bench)
#
# DEVICE=cuda and DTYPE=float16 unless set; the benches' Redis DB is BENCH_REDIS_URL (DB 10 here),
# started locally by scripts/ensure-redis.sh where none answers. --quick: the tiny model and few jobs,
# to check this script (DEVICE=cpu bench/gpu.sh --quick runs it without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
quick=()
big=blip-base
if [ "${1:-}" = --quick ]; then quick=(--quick); big=tiny; shift; fi
out="${1:-bench/out/gpu}"
mkdir -p "$out"
export DEVICE="${DEVICE:-cuda}" DTYPE="${DTYPE:-float16}" PYTHONUNBUFFERED=1
export BENCH_REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/10}"
python="${PYTHON:-python3}"
scripts/ensure-redis.sh "$BENCH_REDIS_URL" || exit 1
if [ "$DEVICE" != cpu ]; then
  "$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"
print(torch.cuda.get_device_name(), "torch", torch.__version__)' || exit 1
fi

status=0
run() {  # NAME BENCH ARGS...: one bench, its output shown and kept in OUTDIR/NAME.txt
  local name=$1
  shift
  echo "##### python -m bench $*"
  timeout "${BENCH_STEP_TIMEOUT:-300}" "$python" -m bench "$@" 2>&1 | tee "$out/$name.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "##### $name FAILED"; status=1; }
}
# Is the service what limits a fast model? BLIP-base at 20 tokens is a few ms per image at batch 16.
run throughput-blip-base throughput --part worker --model "$big" --tokens 20 --jobs 64 "${quick[@]}"
run batching batching --images 32 "${quick[@]}"
run pipeline pipeline --images 20 "${quick[@]}"
run throughput-tiny throughput --part worker --model tiny "${quick[@]}"
# The instant describer runs no model: this is the host's CPU (its cores), beside the CPU figures.
run throughput-instant throughput --part worker "${quick[@]}"
exit $status
