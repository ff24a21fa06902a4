#!/usr/bin/env bash
# Development set-up in one place, for `make run` and `make token`:
#   scripts/run-dev.sh serve        start the service on the in-memory backend with a
#                                   development secret and print how to watch an event arrive
#   scripts/run-dev.sh token USER   print a development token for USER
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
# The demo page and its token endpoints (off unless asked for): this machine
# only, so listen on the loopback address unless told otherwise.
export SSE_DEMO_PAGE="${SSE_DEMO_PAGE:-true}"
export SSE_HOST="${SSE_HOST:-127.0.0.1}"
export SSE_JWT_SECRET="${SSE_JWT_SECRET:-dev-only-secret-change-me-0123456789}"
PORT="${SSE_PORT:-8005}"

if [ "${1:-serve}" = "token" ]; then
  exec "$BIN/sse-service" token --user "${2:-42}" --ttl 86400
fi

# Say so in one line rather than print a banner for a server that cannot start.
if ! "$BIN/python" -c "import socket, sys; s = socket.socket(); s.bind((sys.argv[1], int(sys.argv[2])))" \
    "$SSE_HOST" "$PORT" 2>/dev/null; then
  echo "make run: port $PORT on $SSE_HOST is in use (another make run?); free it or set SSE_PORT" >&2
  exit 1
fi
TOKEN=$("$BIN/sse-service" token --user 42 --ttl 86400)
cat <<MSG

  sse-service on http://127.0.0.1:$PORT  (in-memory backend, development secret)

  Demo page:    http://127.0.0.1:$PORT/
  Watch user 42's stream:
    curl -N -H "Authorization: Bearer $TOKEN" http://127.0.0.1:$PORT/events
  Then, in another shell, publish an event as the Dapr sidecar would:
    $BIN/sse-service publish --user 42 --event task.created --task '{"id": 1, "title": "hello"}' --url http://127.0.0.1:$PORT
  A token for another user, in another shell:  make token USER=7

MSG
exec "$BIN/sse-service" serve --port "$PORT"
