#!/usr/bin/env bash
# Set up and run the whole service on this machine: Redis (started if none answers),
# the database tables, WORKER_COUNT workers, the webhook worker and gunicorn on WEB_HOST:WEB_PORT.
# What could stop it (the port, Redis, the weights) is checked before anything starts, and what it
# will run is said in three lines. Ctrl+C stops everything it started, the Redis included, and
# exits 0. This script's own lines start with "imgsvc: ".
set -euo pipefail
cd "$(dirname "$0")/.."
note() { printf 'imgsvc: %s\n' "$*" >&2; }
# .env fills in what the environment leaves unset: `WEB_PORT=8002 make run` wins over .env's
# WEB_PORT, as with python-dotenv's default and Compose. The environment is saved and put back.
if [ -f .env ]; then
  environment=$(export -p)
  set -a && . ./.env && set +a
  eval "$environment"
fi
# .env is loaded above; Flask's own loader would only print a tip where python-dotenv is absent.
export FLASK_SKIP_DOTENV=1
host="${WEB_HOST:-127.0.0.1}"
port="${WEB_PORT:-8000}"

# 1. The port, before anything is set up or started: a second `make run` must not start a worker
# on the live queue and then fail. A bind test with SO_REUSEADDR, as gunicorn binds: a socket
# still in TIME_WAIT after a stop does not count as busy, a listener does.
if ! python3 - "$host" "$port" <<'PY'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError:
        sys.exit(1)
PY
then
  note "port $port is busy (another make run?); stop it, or choose another with WEB_PORT=..."
  exit 1
fi
redis_pidfile=
pids=()
stop_redis() {
  [ -n "$redis_pidfile" ] && [ -f "$redis_pidfile" ] || return 0
  local pid
  pid=$(cat "$redis_pidfile")
  kill "$pid" 2>/dev/null || return 0  # SIGTERM: Redis writes its append-only file and exits
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  note "stopped the redis-server this run started"
}
stop() {
  trap - EXIT INT TERM
  # SIGTERM is the graceful stop for each: RQ's warm shutdown (the job in hand first), gunicorn's
  # graceful stop (requests in hand first). Whatever still runs after 30 s is killed.
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 300); do
    [ -z "$(jobs -rp)" ] && break
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  stop_redis
}
# From here on, Ctrl+C, a kill or a failed step stops what was started, the Redis included.
# Ctrl+C or a kill is how this is meant to end: stop the processes and exit 0 (make then says nothing).
trap 'stop; note "stopped"; exit 0' INT TERM
trap 'status=$?; stop; exit $status' EXIT

# 2. Redis: one that answers, or a local one started now (stopped again with the rest).
redis_pidfile=$(scripts/ensure-redis.sh --quiet)
# 3. The environment and the weights (both are no-ops once done).
scripts/bootstrap.sh
. .venv/bin/activate
# The offline scene describer's detector weights (pinned, checked). Not strict: without npm or a
# network the worker runs with what there is and says so. Its lines are set-up notes like this one's.
imgsvc fetch-models --quiet 2>&1 | sed -u 's/^/imgsvc: /' >&2
imgsvc fetch-captioner   # the captioner's weights, when the Hub answers (FETCH_CAPTIONER=off skips)
initialised=$(flask --app imgsvc init-db)

workers="${WORKER_COUNT:-1}"
# What runs, in two lines (a third, above, when fetch-captioner had something to say about the model).
note "web on http://$host:$port/ (API docs at /docs), $workers worker(s) and the webhook deliverer; Ctrl+C stops all"
note "Redis ${REDIS_URL:-redis://localhost:6379/0}${redis_pidfile:+ (started here, stopped with the rest)}; ${initialised#Initialised the }; command line: .venv/bin/imgsvc"
for i in $(seq "$workers"); do
  python worker.py --name "imgsvc-worker-$i-$$" &
  pids+=($!)
done
imgsvc webhooks --name "imgsvc-webhooks-$$" &
pids+=($!)
# A process group of its own: Ctrl+C reaches the workers (RQ's warm shutdown) and this script,
# which then stops gunicorn gracefully, rather than interrupting its workers mid-request.
setsid gunicorn -c gunicorn.conf.py wsgi:app &
pids+=($!)
# Any one of them ending ends the run: a half-running service is worse than a stopped one.
status=0
wait -n "${pids[@]}" || status=$?
note "a process exited (status $status); stopping the others"
exit "$(( status == 0 ? 1 : status ))"
