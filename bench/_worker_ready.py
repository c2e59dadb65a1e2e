"""``bench/ingest.py``: tells the bench when each of the worker's processes has its embedding
model loaded, so that the clock starts with a warm worker (as the in-process run starts with
the model loaded: a worker loads it once, not per document).

Loaded by the worker with ``--include bench._worker_ready``. Each pool process, as it starts,
waits in a background thread for the model (``get_embedder`` holds a lock: this is the load
that ``config/celery_app.py`` started, not a second one) and then writes
``$ZHIDA_BENCH_READY_DIR/ready-<pid>``. Nothing runs per task."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from celery.signals import worker_process_init


@worker_process_init.connect
def _announce_when_warm(**_kwargs) -> None:
    directory = os.environ.get("ZHIDA_BENCH_READY_DIR")
    if not directory:
        return

    def wait() -> None:
        from apps.knowledge.pipeline.embed import get_embedder

        get_embedder()
        (Path(directory) / f"ready-{os.getpid()}").write_text("ready")

    threading.Thread(target=wait, name="bench-ready", daemon=True).start()
