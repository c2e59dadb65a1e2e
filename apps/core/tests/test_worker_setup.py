"""How a Celery worker process sets itself up (``config/celery_app.py``): the pool size from
settings, its database connection kept between tasks, the embedding model loaded as the
process starts."""

from __future__ import annotations

import threading

from django.conf import settings
from django.db import connections

from config.celery_app import _db_connections_check, _db_connections_keep, _models_warm_up, app


def test_the_worker_runs_the_settings_number_of_processes():
    assert app.conf.worker_concurrency == settings.CELERY_WORKER_CONCURRENCY >= 2


def test_a_worker_keeps_its_database_connection_between_tasks(settings, monkeypatch):
    from celery.signals import task_postrun, task_prerun

    settings_dict = connections["default"].settings_dict
    saved = {key: settings_dict[key] for key in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS")}
    settings.WORKER_DB_CONN_MAX_AGE = 123
    try:
        _db_connections_keep()
        assert (settings_dict["CONN_MAX_AGE"], settings_dict["CONN_HEALTH_CHECKS"]) == (123, True)
        assert app.conf.get("CELERY_DB_REUSE_MAX") >= 1000  # Celery's fixup leaves it open
    finally:
        settings_dict.update(saved)
        task_prerun.disconnect(_db_connections_check)
        task_postrun.disconnect(_db_connections_check)

    checked = []
    monkeypatch.setattr("django.db.close_old_connections", lambda: checked.append(True))

    class Request:
        is_eager = True

    class Task:
        request = Request()

    _db_connections_check(sender=Task())  # an eager task: its caller's transaction, left alone
    assert checked == []
    Request.is_eager = False
    _db_connections_check(sender=Task())
    assert checked == [True]


def test_a_worker_process_loads_the_model_in_the_background(settings, monkeypatch):
    from apps.knowledge.pipeline import embed

    loaded = threading.Event()
    monkeypatch.setattr(embed, "get_embedder", loaded.set)
    settings.MODEL_WARMUP = False
    _models_warm_up()
    assert not loaded.wait(0.2)

    settings.MODEL_WARMUP = True
    _models_warm_up()
    assert loaded.wait(5)
