#!/usr/bin/env bash
# The whole test suite against the real PostgreSQL and Redis (Milvus Lite and Celery workers
# are started by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/venv.sh dev
scripts/services.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
