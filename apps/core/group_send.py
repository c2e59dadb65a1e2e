"""Channel-layer ``group_send`` from synchronous code (Celery tasks, services), cheaply.

``async_to_sync(layer.group_send)`` makes a new event loop per call, and channels_redis keeps
its connection pools per loop: every call opened and closed a Redis connection (about 9 ms
of a worker's time per progress event while ingesting). Here one daemon thread per process
runs one event loop for the process's lifetime, so the layer's pool for that loop, and its
connections, are reused. Callers wait for their own send (at most ``timeout`` seconds), so
the events of one caller arrive in the order it sent them.

Thread-safe (any thread may call; the loop thread is started once, under a lock) and
fork-safe (a forked child, e.g. a Celery prefork process, starts a loop of its own on first
use: threads do not survive ``fork``). The layer is looked up on every call, so a settings
change (tests) takes effect at once, and the previous layer's connections of this loop are
closed.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

DEFAULT_TIMEOUT = 5.0


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.layer: Any = None  # the layer last used on this loop
        self.thread = threading.Thread(target=self._run, name="channel-layer-send", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def send(self, layer: Any, group: str, message: dict[str, Any]) -> None:
        if layer is not self.layer:
            previous, self.layer = self.layer, layer
            # channels drops its layer when CHANNEL_LAYERS changes (tests): close the old
            # one's connections on this loop rather than leave them open for good.
            pool = getattr(previous, "_layers", {}).pop(self.loop, None)
            if pool is not None:
                await pool.flush()
        await layer.group_send(group, message)


_lock = threading.Lock()
_runner: _LoopThread | None = None
_runner_pid = 0


def _forget_after_fork() -> None:
    """In a forked child the loop thread is gone (and the lock may have been held by another
    thread at the fork): start from nothing."""
    global _lock, _runner, _runner_pid
    _lock = threading.Lock()
    _runner, _runner_pid = None, 0


os.register_at_fork(after_in_child=_forget_after_fork)


def _runner_get() -> _LoopThread:
    global _runner, _runner_pid
    runner = _runner
    if runner is not None and _runner_pid == os.getpid() and runner.thread.is_alive():
        return runner
    with _lock:
        if _runner is None or _runner_pid != os.getpid() or not _runner.thread.is_alive():
            _runner, _runner_pid = _LoopThread(), os.getpid()
        return _runner


def group_send(group: str, message: dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Send ``message`` to channel-layer ``group`` and wait for it to be handed to the layer.
    Returns False when no channel layer is configured. Raises what the layer raises, or
    ``TimeoutError`` after ``timeout`` seconds (the send is then cancelled)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return False
    runner = _runner_get()
    future = asyncio.run_coroutine_threadsafe(runner.send(layer, group, message), runner.loop)
    try:
        future.result(timeout=timeout)
    except FutureTimeout:
        future.cancel()
        raise TimeoutError(f"channel layer group_send to {group} took more than {timeout:g} s") from None
    return True
