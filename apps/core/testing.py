"""Test support shared by every app's tests: real service processes (Milvus Lite, Redis,
Celery) started on free ports and stopped by their owner. Imported by conftest files only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)
VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 60.0


def shared_eval_dir() -> Path:
    """The shared evaluation material (``shared/eval``: documents in every format, QA sets).

    ``ZHIDA_EVAL_DIR`` if set; otherwise ``shared/eval`` beside the checkout (the workplace's
    layout), or beside ``/work/main`` for a clone made elsewhere on the same machine (CI
    clones into a directory of its own). Tests that need it skip, saying where they looked,
    only when none exists."""
    explicit = os.environ.get("ZHIDA_EVAL_DIR")
    if explicit:
        return Path(explicit)
    repo = Path(__file__).resolve().parents[2]
    candidates = [repo.parent / "shared" / "eval", Path("/work/shared/eval")]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(ready: Callable[[], bool], *, timeout: float, what: str, process=None, log: Path | None = None) -> None:
    """Poll ``ready`` until it returns True; fail early (with the log) if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001, S110 - not ready yet
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    exited = process is not None and process.poll() is not None
    stop_process(process)
    reason = f"exited with code {process.returncode}" if exited else f"was not ready within {timeout:.0f} s"
    pytest.fail(f"{what} {reason}\n{tail}")


def stop_process(process: subprocess.Popen | None, *, timeout: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@dataclass
class ServiceProcess:
    process: subprocess.Popen
    port: int
    url: str

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the port stays open and accepts connections, nothing answers (a hung
        server, the case only timeouts can bound)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()
        stop_process(self.process)


def start_milvus(workdir: Path) -> ServiceProcess:
    """A real Milvus Lite gRPC server on a free port, answering ``list_collections``."""
    from pymilvus import MilvusClient

    port = free_port()
    log = workdir / "milvus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(VENV_BIN / "milvus-lite"),
                "server",
                "--data-dir",
                str(workdir / "data"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    uri = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        client = MilvusClient(uri=uri, timeout=1.0)
        try:
            client.list_collections(timeout=1.0)
        finally:
            client.close()
        return True

    wait_for(ready, timeout=STARTUP_TIMEOUT, what="Milvus Lite", process=process, log=log)
    return ServiceProcess(process=process, port=port, url=uri)


def worker_database_url() -> str:
    """DATABASE_URL of the test database (pytest-django has switched NAME to it)."""
    from django.db import connection

    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def start_celery_worker(
    workdir: Path,
    *,
    env_extra: dict[str, str] | None = None,
    worker_args: tuple[str, ...] = ("--pool=solo", "--concurrency=1"),
) -> tuple[subprocess.Popen, str]:
    """A real ``celery worker`` subprocess (solo pool unless ``worker_args`` says otherwise;
    ``()``: the settings' pool and concurrency, as ``scripts/run.sh`` runs it) on the test
    database and broker; returns (process, node name) once it answers a ping."""
    import uuid

    from config.celery_app import app

    hostname = f"pytest-{uuid.uuid4().hex[:8]}@localhost"
    log = workdir / "worker.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": worker_database_url(),
        **(env_extra or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(VENV_BIN / "celery"),
                "-A",
                "config",
                "worker",
                *worker_args,
                "-Q",
                "celery",
                "-n",
                hostname,
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for(
        lambda: bool(app.control.ping(destination=[hostname], timeout=0.5)),
        timeout=STARTUP_TIMEOUT,
        what="Celery worker",
        process=process,
        log=log,
    )
    return process, hostname
