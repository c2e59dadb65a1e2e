.PHONY: run test lint fmt bench migrate

run:  ## set up and run everything locally (web + worker + beat + Milvus Lite + demo tenant)
	scripts/run.sh

test:  ## the whole test suite against real PostgreSQL, Redis, Milvus Lite and Celery
	scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

fmt:
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .

migrate:
	.venv/bin/python manage.py platform_migrate

bench:
	.venv/bin/python bench/tenant_create.py
