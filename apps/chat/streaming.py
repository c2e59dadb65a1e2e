"""From the thread that answers to the websocket group: ``EventRelay``.

The answer pipeline (``services.conversation_ask``) is blocking code and runs on a worker
thread; its events reach the sockets through the channel layer, which is asyncio code on the
server's event loop. Before, the thread sent every event itself (``async_to_sync``) and
waited for each Redis round trip, one per token. Now the thread only hands the event to the
event loop (``put``, never blocks) and the relay sends them, in order, from the loop:

- every event keeps its place in the order it was emitted;
- ``answer.delta`` events are merged, throttled: a delta is sent at once when no delta was
  sent for ``window`` seconds (so the first delta of an answer is never held back, nor is a
  slow model's token), otherwise it waits with the ones after it until ``window`` has passed
  since the last delta went out, or until ``max_chars`` characters are waiting. Any other
  event sends what is waiting first. The deltas' texts are concatenated, never changed, so
  the merged stream reassembles to exactly the same answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from apps.chat import events

logger = logging.getLogger(__name__)

Send = Callable[[str, dict], Awaitable[None]]  # (target, event); target "group" or "direct"
GROUP = "group"
DIRECT = "direct"
_END = object()


class EventRelay:
    """One per answer. ``put`` from any thread; ``run`` on the event loop until ``close``."""

    def __init__(self, send: Send, *, window: float, max_chars: int, loop: asyncio.AbstractEventLoop | None = None):
        self._send = send
        self.window = max(0.0, window)
        self.max_chars = max(1, max_chars)
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._last_delta = float("-inf")  # when a delta was last sent

    # ---------- the answering thread's side ----------
    def put(self, event: dict, target: str = GROUP) -> None:
        """Queue an event (thread-safe, returns at once)."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (target, event))

    def close(self) -> None:
        """No more events: ``run`` sends what is waiting and returns (thread-safe)."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, _END)

    # ---------- the event loop's side ----------
    async def run(self) -> None:
        pending: dict | None = None  # merged answer.delta not sent yet
        while True:
            if pending is None:
                item = await self._queue.get()
            else:
                wait = self._last_delta + self.window - self._loop.time()
                try:
                    item = await asyncio.wait_for(self._queue.get(), max(0.0, wait))
                except TimeoutError:
                    pending = await self._flush(pending)
                    continue
            if item is _END:
                await self._flush(pending)
                return
            target, event = item
            if target == GROUP and event.get("type") == events.ANSWER_DELTA:
                if pending is not None and pending.get("message_id") == event.get("message_id"):
                    pending = {**pending, "delta": pending["delta"] + event["delta"]}
                else:
                    pending = await self._flush(pending)
                    pending = dict(event)
                if len(pending["delta"]) >= self.max_chars or self._loop.time() >= self._last_delta + self.window:
                    pending = await self._flush(pending)
                continue
            pending = await self._flush(pending)
            await self._deliver(target, event)

    async def _flush(self, pending: dict | None) -> None:
        if pending is not None:
            await self._deliver(GROUP, pending)
            self._last_delta = self._loop.time()
        return None

    async def _deliver(self, target: str, event: dict) -> None:
        try:
            await self._send(target, event)
        except Exception:  # a lost event must not stop the ones after it (or the answer's save)
            logger.exception("Could not relay a chat event (%s)", event.get("type"))


def relay_events(send: Send, *, window: float, max_chars: int) -> tuple[EventRelay, asyncio.Task[Any]]:
    """An ``EventRelay`` and the task running it."""
    relay = EventRelay(send, window=window, max_chars=max_chars)
    return relay, asyncio.ensure_future(relay.run())
