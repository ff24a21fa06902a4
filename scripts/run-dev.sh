#!/usr/bin/env bash
# Start the service on the in-memory backend with a development secret and
# print what a person needs to watch an event arrive.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
# The demo page and its token endpoints (off unless asked for): this machine
# only, so listen on the loopback address unless told otherwise.
export SSE_DEMO_PAGE="${SSE_DEMO_PAGE:-true}"
export SSE_HOST="${SSE_HOST:-127.0.0.1}"
export SSE_JWT_SECRET="${SSE_JWT_SECRET:-dev-only-secret-change-me-0123456789}"
PORT="${SSE_PORT:-8005}"
TOKEN=$("$BIN/sse-service" token --user 42 --ttl 86400)
cat <<MSG

  sse-service on http://127.0.0.1:$PORT  (in-memory backend, development secret)

  Demo page:    http://127.0.0.1:$PORT/
  Watch user 42's stream:
    curl -N -H "Authorization: Bearer $TOKEN" http://127.0.0.1:$PORT/events
  Then, in another shell, publish an event as the Dapr sidecar would:
    $BIN/sse-service publish --user 42 --event task.created --task '{"id": 1, "title": "hello"}' --url http://127.0.0.1:$PORT

MSG
exec "$BIN/sse-service" serve --port "$PORT"
