"""config.web: several daphne processes behind one port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from apps.core.testing import free_port, stop_process

ROOT = Path(__file__).resolve().parents[3]
PID_APP = "apps.core.tests.asgi_pid:application"


def launch(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "config.web", "--bind", "127.0.0.1", "--port", str(port), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, port


def get(port: int, path: str = "/", *, deadline: float = 60.0) -> requests.Response:
    """GET on a new connection, waiting for the server to come up."""
    until = time.monotonic() + deadline
    while True:
        try:
            with requests.Session() as session:
                return session.get(f"http://127.0.0.1:{port}{path}", timeout=5, headers={"Connection": "close"})
        except requests.ConnectionError:
            if time.monotonic() > until:
                raise
            time.sleep(0.1)


def children_of(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


@pytest.fixture
def launched():
    started: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
        process, port = launch(*args, env=env)
        started.append(process)
        return process, port

    yield start
    for process in started:
        stop_process(process, timeout=20)


def test_connections_are_spread_over_every_process(launched):
    process, port = launched("--processes", "3", "--application", PID_APP)

    pids = {int(get(port).text) for _ in range(60)}

    assert pids == children_of(process.pid)
    assert len(pids) == 3


def test_sigterm_stops_every_process(launched):
    process, port = launched("--processes", "2", "--application", PID_APP)
    get(port)
    children = children_of(process.pid)
    assert len(children) == 2

    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=20) == 0
    assert not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in children)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_dead_process_stops_the_others_and_the_launcher_fails(launched):
    process, port = launched("--processes", "2", "--application", PID_APP)
    get(port)
    first, second = sorted(children_of(process.pid))

    os.kill(first, signal.SIGKILL)

    assert process.wait(timeout=20) != 0  # a supervisor restarts the whole web role
    assert not _alive(second)
    assert "exited with" in process.stdout.read()


def test_web_concurrency_sets_the_number_of_processes(launched):
    process, port = launched("--application", PID_APP, env={"WEB_CONCURRENCY": "2"})
    get(port)

    assert len(children_of(process.pid)) == 2


def test_the_application_is_served(launched):
    process, port = launched("--processes", "2")

    response = get(port, "/healthz", deadline=120)

    assert response.status_code in (200, 503)  # up, or up with a dependency down: JSON either way
    assert response.headers["content-type"].startswith("application/json")


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status
