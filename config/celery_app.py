"""Celery, tenant-aware: tenant-schemas-celery stamps the current schema on every task
sent and switches the worker to it before the task runs."""

import os

from celery.signals import task_postrun, task_prerun, worker_init, worker_process_init
from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
# One BLAS thread per worker process: steadier embedding latency with several processes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

app = CeleryApp("zhida")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _db_connections_keep(**_kwargs) -> None:
    """A worker process runs one task after another on one thread: it keeps its database
    connection between tasks (WORKER_DB_CONN_MAX_AGE) and checks it before each task, the
    way Django treats requests (``close_old_connections`` at start and end, health checks
    on). Celery's Django fixup would close it after every task: ``CELERY_DB_REUSE_MAX``
    tells it not to. The web processes keep Django's CONN_MAX_AGE (0 under ASGI). Sent in
    the worker's main process before the pool forks, so its processes inherit it."""
    from django.conf import settings
    from django.db import connections

    for alias in connections:
        connections[alias].settings_dict.update(CONN_MAX_AGE=settings.WORKER_DB_CONN_MAX_AGE, CONN_HEALTH_CHECKS=True)
    task_prerun.connect(_db_connections_check, weak=False)
    task_postrun.connect(_db_connections_check, weak=False)


def _db_connections_check(sender=None, **_kwargs) -> None:
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return  # a task run inline belongs to its caller's connection (and transaction)
    from django.db import close_old_connections

    close_old_connections()


@worker_process_init.connect
def _models_warm_up(**_kwargs) -> None:
    """Each worker process loads the embedding model and jieba as it starts, in the
    background (Celery gives a process 4 s to report itself up), as a web process does
    (``apps.core.warmup``), not in its first document. A task arriving meanwhile waits for
    the same load (``embed.get_embedder`` holds a lock)."""
    from django.conf import settings

    if settings.MODEL_WARMUP:
        from apps.core.warmup import warmup_in_background

        warmup_in_background()
