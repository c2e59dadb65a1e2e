"""Celery, tenant-aware: tenant-schemas-celery stamps the current schema on every task
sent and switches the worker to it before the task runs."""

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
# One BLAS thread per worker process: steadier embedding latency with several processes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

app = CeleryApp("zhida")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
