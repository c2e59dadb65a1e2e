#!/usr/bin/env bash
# The whole product locally: venv + pinned deps, PostgreSQL/Redis (started if down), a Milvus
# Lite server, migrations of every schema, the demo tenant, a Celery worker + beat, and the
# ASGI web server (config/web.py: WEB_CONCURRENCY daphne processes) in the foreground. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
export DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE:-config.settings.local}
PORT=${PORT:-8000}
MILVUS_PORT=${MILVUS_PORT:-19530}

scripts/venv.sh
scripts/services.sh
scripts/db.sh
mkdir -p var/log var/milvus var/media

pids=()
cleanup() {
  echo; echo "Stopping..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_open "$MILVUS_PORT"; then
  echo "Starting Milvus Lite on :$MILVUS_PORT (data in var/milvus)..."
  .venv/bin/milvus-lite server --data-dir var/milvus --host 127.0.0.1 --port "$MILVUS_PORT" \
    >var/log/milvus.log 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do port_open "$MILVUS_PORT" && break; sleep 0.2; done
fi
export MILVUS_URI=${MILVUS_URI:-http://127.0.0.1:$MILVUS_PORT}

.venv/bin/python manage.py platform_migrate
.venv/bin/python manage.py demo_bootstrap --port "$PORT"
# Chunks whose vectors this Milvus does not hold (var/milvus wiped, a new MILVUS_COLLECTION,
# the collection layout changed) are re-embedded now, with a progress bar; nothing to do is
# quick. Without it those documents would show "indexed" and never be found.
.venv/bin/python manage.py reconcile_vectors

.venv/bin/celery -A config worker --loglevel=INFO >var/log/worker.log 2>&1 &
pids+=($!)
.venv/bin/celery -A config beat --loglevel=INFO --schedule var/celerybeat-schedule >var/log/beat.log 2>&1 &
pids+=($!)
echo "Worker and beat logs: var/log/worker.log, var/log/beat.log"
echo "Web server on http://localhost:$PORT/ (Ctrl-C to stop)"
.venv/bin/python -m config.web --bind 127.0.0.1 --port "$PORT" &  # WEB_CONCURRENCY daphne processes
pids+=($!)
wait -n "${pids[@]}"
