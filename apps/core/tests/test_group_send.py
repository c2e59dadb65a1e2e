"""``apps.core.group_send``: channel-layer sends from synchronous code through one long-lived
event loop per process, against the real Redis channel layer (a key prefix of each test's
own): delivered, in order per caller, from many threads at once, from a forked child, and
bounded by a timeout."""

from __future__ import annotations

import asyncio
import copy
import os
import threading
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.core import group_send as module
from apps.core.group_send import group_send


@pytest.fixture
def group(settings) -> str:
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["prefix"] = f"test-{uuid.uuid4().hex[:12]}"
    settings.CHANNEL_LAYERS = layers  # channels drops its cached layer on setting_changed
    return f"t.test.{uuid.uuid4().hex[:8]}"


def listen(group: str) -> str:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)
    return channel


def receive(channel: str, count: int = 1, timeout: float = 10.0) -> list[dict]:
    layer = get_channel_layer()

    async def go() -> list[dict]:
        return [await asyncio.wait_for(layer.receive(channel), timeout) for _ in range(count)]

    return async_to_sync(go)()


def test_a_message_reaches_the_group(group):
    channel = listen(group)
    assert group_send(group, {"type": "test.event", "n": 1}) is True
    [message] = receive(channel)
    assert message["type"] == "test.event" and message["n"] == 1


def test_one_loop_serves_every_send_of_the_process(group):
    channel = listen(group)
    group_send(group, {"type": "test.event", "n": 0})
    runner = module._runner
    for n in range(1, 5):
        group_send(group, {"type": "test.event", "n": n})
    assert module._runner is runner and runner.thread.is_alive()
    assert [m["n"] for m in receive(channel, 5)] == [0, 1, 2, 3, 4]


def test_many_threads_at_once_each_in_order(group):
    channel = listen(group)
    errors: list[BaseException] = []

    def sender(thread: int) -> None:
        try:
            for n in range(20):
                group_send(group, {"type": "test.event", "thread": thread, "n": n})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    messages = receive(channel, 8 * 20)
    for thread in range(8):
        assert [m["n"] for m in messages if m["thread"] == thread] == list(range(20))


def test_a_forked_child_sends_through_a_loop_of_its_own(group):
    channel = listen(group)
    group_send(group, {"type": "test.event", "who": "parent"})  # the parent's loop thread runs
    pid = os.fork()
    if pid == 0:  # the child: the parent's loop thread does not exist here
        code = 1
        try:
            group_send(group, {"type": "test.event", "who": "child"}, timeout=5)
            code = 0 if module._runner_pid == os.getpid() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [m["who"] for m in receive(channel, 2)] == ["parent", "child"]
    group_send(group, {"type": "test.event", "who": "parent again"})  # the parent's loop still works
    assert receive(channel)[0]["who"] == "parent again"


def test_a_send_that_hangs_times_out_and_the_loop_keeps_working(group, monkeypatch):
    class Stuck:
        async def group_send(self, group, message):
            await asyncio.sleep(30)

    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *a, **k: Stuck())
    with pytest.raises(TimeoutError):
        group_send(group, {"type": "test.event"}, timeout=0.2)
    monkeypatch.undo()
    channel = listen(group)
    group_send(group, {"type": "test.event", "n": 7})
    assert receive(channel)[0]["n"] == 7


def test_no_channel_layer_configured(settings):
    settings.CHANNEL_LAYERS = {}
    assert group_send("t.test.none", {"type": "test.event"}) is False
