"""``bench/ingest.py --probe``: the breakdown of where the time goes, inside the Celery
worker's own processes.

Loaded by the worker with ``--include bench._worker_probe`` (so, in the parent, before the
pool forks). Each pool process installs ``ingest.Breakdown`` (the same wrappers as the
in-process run) when it starts, times every task from ``task_prerun`` to ``task_postrun``,
and writes its figures to ``$ZHIDA_BENCH_PROBE_DIR/probe-<pid>.json`` after each task (at
most every 2 s, and after the last task once the queue has been idle for 1 s). The wrappers
cost a few microseconds a call: the headline figures come from runs without ``--probe``."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from celery.signals import task_postrun, task_prerun, worker_process_init

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_state: dict = {}


@worker_process_init.connect
def _install(**_kwargs) -> None:
    from bench.ingest import Breakdown

    breakdown = Breakdown()
    context = breakdown.installed()
    context.__enter__()  # for the life of the process
    _state.update(
        breakdown=breakdown,
        context=context,
        tasks=0,
        task_seconds=0.0,
        task_cpu=0.0,
        first=None,
        last=None,
        written=0.0,
        started=None,
        timer=None,
        lock=threading.Lock(),
    )


@task_prerun.connect
def _prerun(**_kwargs) -> None:
    if "breakdown" not in _state:
        return
    now = time.perf_counter()
    _state["started"] = (now, time.process_time())
    if _state["first"] is None:
        _state["first"] = now


@task_postrun.connect
def _postrun(**_kwargs) -> None:
    if "breakdown" not in _state or _state["started"] is None:
        return
    now = time.perf_counter()
    started, started_cpu = _state.pop("started")
    _state["started"] = None
    _state["tasks"] += 1
    _state["task_seconds"] += now - started
    _state["task_cpu"] += time.process_time() - started_cpu
    _state["last"] = now
    if now - _state["written"] > 2.0:
        _write()
    if _state["timer"] is not None:
        _state["timer"].cancel()
    _state["timer"] = threading.Timer(1.0, _write)
    _state["timer"].daemon = True
    _state["timer"].start()


def _write() -> None:
    directory = os.environ.get("ZHIDA_BENCH_PROBE_DIR")
    if not directory:
        return
    with _state["lock"]:
        breakdown = _state["breakdown"]
        entries = [
            [*key, breakdown.seconds[key], breakdown.cpu[key], breakdown.calls[key]] for key in list(breakdown.seconds)
        ]
        figures = {
            "pid": os.getpid(),
            "tasks": _state["tasks"],
            "task_seconds": _state["task_seconds"],
            "task_cpu": _state["task_cpu"],
            "span": (_state["last"] - _state["first"]) if _state["first"] is not None and _state["last"] else 0.0,
            "entries": entries,
        }
        path = Path(directory) / f"probe-{os.getpid()}.json"
        path.with_suffix(".tmp").write_text(json.dumps(figures))
        path.with_suffix(".tmp").replace(path)
        _state["written"] = time.perf_counter()
