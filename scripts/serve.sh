#!/usr/bin/env bash
# Set up and run the whole service on this machine: Redis (started if none answers),
# the database tables, WORKER_COUNT workers, the webhook worker and gunicorn on WEB_HOST:WEB_PORT.
# Ctrl+C stops everything and exits 0. Every process logs JSON lines; this script's own
# lines start with "imgsvc: ".
set -euo pipefail
cd "$(dirname "$0")/.."
note() { printf 'imgsvc: %s\n' "$*" >&2; }
[ -f .env ] && set -a && . ./.env && set +a
# .env is loaded above; Flask's own loader would only print a tip where python-dotenv is absent.
export FLASK_SKIP_DOTENV=1
scripts/bootstrap.sh
scripts/ensure-redis.sh
. .venv/bin/activate
# The offline scene describer's detector weights (pinned, checked; a no-op once there). Not strict:
# without npm or a network the worker runs with what there is and says so. Its lines are set-up
# notes like this script's own, so they read the same.
imgsvc fetch-models 2>&1 | sed -u 's/^/imgsvc: /' >&2
imgsvc fetch-captioner   # the captioner's weights, when the Hub answers (FETCH_CAPTIONER=off skips)
initialised=$(flask --app imgsvc init-db)
note "$initialised"

pids=()
stop() {
  trap - EXIT INT TERM
  kill "${pids[@]}" 2>/dev/null || true
  # Workers finish the job in hand first (RQ's warm shutdown); whatever still runs after 30 s is killed.
  ( sleep 30 && kill -KILL "${pids[@]}" 2>/dev/null ) &
  local watchdog=$!
  wait "${pids[@]}" 2>/dev/null || true
  kill "$watchdog" 2>/dev/null || true
}
# Ctrl+C or a kill is how this is meant to end: stop the processes and exit 0 (make then says nothing).
trap 'stop; note "stopped"; exit 0' INT TERM
trap 'status=$?; stop; exit $status' EXIT

for i in $(seq "${WORKER_COUNT:-1}"); do
  python worker.py --name "imgsvc-worker-$i-$$" &
  pids+=($!)
done
imgsvc webhooks --name "imgsvc-webhooks-$$" &
pids+=($!)
gunicorn -c gunicorn.conf.py wsgi:app &
pids+=($!)
host="${WEB_HOST:-127.0.0.1}"
note "web on http://$host:${WEB_PORT:-8000}/ (API docs at /docs), ${WORKER_COUNT:-1} worker(s); Ctrl+C stops"
note "command line: .venv/bin/imgsvc --help (or activate the venv: . .venv/bin/activate)"
# Any one of them ending ends the run: a half-running service is worse than a stopped one.
status=0
wait -n "${pids[@]}" || status=$?
note "a process exited (status $status); stopping the others"
exit "$(( status == 0 ? 1 : status ))"
