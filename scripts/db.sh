#!/usr/bin/env bash
# Create the database named in DATABASE_URL (default zhida) if it does not exist.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python - <<'PY'
import os
import environ
import psycopg

env = environ.Env()
environ.Env.read_env(".env", overwrite=False)
cfg = env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/zhida")
name = cfg["NAME"]
with psycopg.connect(
    host=cfg.get("HOST") or "127.0.0.1", port=cfg.get("PORT") or 5432, user=cfg.get("USER") or "postgres",
    password=cfg.get("PASSWORD") or None, dbname="postgres", autocommit=True,
) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
        conn.execute(f'CREATE DATABASE "{name}"')
        print(f"Created database {name}")
PY
