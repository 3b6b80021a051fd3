#!/usr/bin/env bash
# Make sure a Redis answers at the given URL (default $REDIS_URL): start a local
# redis-server, with append-only persistence under instance/, when none does. Prints the path of
# the pid file of the server it started (nothing when one already answered), for make run to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
# --quiet: no note when one is started (make run says so in its own summary).
quiet=; [ "${1:-}" = "--quiet" ] && quiet=1 && shift
url="${1:-${REDIS_URL:-redis://localhost:6379/0}}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%:*}"; port="${hostport##*:}"
[ "$host" = "$port" ] && port=6379
ping() { (exec 3<>"/dev/tcp/$host/$port" && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
if ping; then exit 0; fi
case "$host" in
  localhost|127.0.0.1|::1) ;;
  *) echo "imgsvc: Redis at $url does not answer, and it is not local: start it first." >&2; exit 1 ;;
esac
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else
    echo "imgsvc: redis-server is not installed (Debian/Ubuntu: sudo apt-get install redis-server)." >&2; exit 1
  fi
fi
mkdir -p instance
[ -n "$quiet" ] || echo "imgsvc: starting a local redis-server on port $port (data in instance/, log in instance/redis.log)" >&2
pidfile="$PWD/instance/redis-$port.pid"
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$PWD/instance" \
  --appendonly yes --appendfsync everysec --logfile "$PWD/instance/redis.log" --pidfile "$pidfile"
for _ in $(seq 50); do ping && echo "$pidfile" && exit 0; sleep 0.1; done
echo "imgsvc: redis-server did not come up; see instance/redis.log" >&2; exit 1
