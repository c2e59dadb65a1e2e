"""``EventRelay``: events from the answering thread reach the channel layer in order, deltas
merged without changing a character, and the first delta of an answer is never held back.
No clocks are asserted: the window is made so long (an hour) that a held event could not
have been sent within the test, or so short (0) that nothing may be held."""

from __future__ import annotations

import asyncio
import random
import threading

from apps.chat import events
from apps.chat.streaming import DIRECT, GROUP, relay_events

HOUR = 3600.0


def delta(text: str, message_id=None) -> dict:
    return {"type": events.ANSWER_DELTA, "message_id": message_id, "delta": text}


class Recorder:
    def __init__(self, fail_on: str | None = None):
        self.sent: list[tuple[str, dict]] = []
        self.fail_on = fail_on
        self.arrived = asyncio.Event()

    async def __call__(self, target: str, event: dict) -> None:
        if self.fail_on is not None and event.get("delta") == self.fail_on:
            raise ConnectionError("redis went away")
        self.sent.append((target, event))
        self.arrived.set()


async def test_the_first_delta_goes_out_at_once_and_the_rest_wait_for_the_window():
    send = Recorder()
    relay, task = relay_events(send, window=HOUR, max_chars=10_000)
    relay.put({"type": events.MESSAGE_CREATED, "message": {"id": "q"}})
    relay.put(delta("The "))
    relay.put(delta("answer "))
    relay.put(delta("is "))
    # Sent before the answer ends (the window is an hour: nothing that waits for it is sent).
    while len(send.sent) < 2:
        send.arrived.clear()
        await asyncio.wait_for(send.arrived.wait(), 10)
    await asyncio.sleep(0.05)
    assert [e for _, e in send.sent] == [{"type": events.MESSAGE_CREATED, "message": {"id": "q"}}, delta("The ")]

    relay.put({"type": events.ANSWER_SOURCES, "message_id": "a", "sources": []})
    relay.close()
    await asyncio.wait_for(task, 10)
    assert [e for _, e in send.sent] == [
        {"type": events.MESSAGE_CREATED, "message": {"id": "q"}},
        delta("The "),
        delta("answer is "),  # merged, sent before the event that followed them
        {"type": events.ANSWER_SOURCES, "message_id": "a", "sources": []},
    ]


async def test_without_a_window_nothing_is_held():
    send = Recorder()
    relay, task = relay_events(send, window=0.0, max_chars=10_000)
    pieces = ["a", "b", "c"]
    for piece in pieces:
        relay.put(delta(piece))
        while not send.sent or send.sent[-1][1]["delta"] != piece:
            send.arrived.clear()
            await asyncio.wait_for(send.arrived.wait(), 10)
    relay.close()
    await asyncio.wait_for(task, 10)
    assert [e["delta"] for _, e in send.sent] == pieces


async def test_merged_deltas_reassemble_to_exactly_the_text_from_another_thread():
    """Pieces put from a worker thread, as the consumer does: whatever the merging, the
    concatenation is the text, character for character (spaces, CJK, markers)."""
    rng = random.Random(7)
    text = "The Vellum printer comes with a two-year warranty [1]. 退款将在三个工作日内原路退回 [2]。 " * 20
    pieces, i = [], 0
    while i < len(text):
        step = rng.randint(1, 9)
        pieces.append(text[i : i + step])
        i += step
    send = Recorder()
    relay, task = relay_events(send, window=0.002, max_chars=64)

    def produce():
        for piece in pieces:
            relay.put(delta(piece))
        relay.put({"type": events.ANSWER_COMPLETED, "message": {"content": text.strip()}})
        relay.close()

    worker = threading.Thread(target=produce)
    worker.start()
    await asyncio.wait_for(task, 30)
    worker.join()
    sent = [e for _, e in send.sent]
    deltas = [e["delta"] for e in sent if e["type"] == events.ANSWER_DELTA]
    assert "".join(deltas) == text
    assert sent[0] == delta(pieces[0])  # the first piece alone, not merged with what followed
    assert len(deltas) < len(pieces)
    assert all(len(d) < 64 + 9 for d in deltas)  # max_chars bounds a merged event
    assert sent[-1]["type"] == events.ANSWER_COMPLETED


async def test_order_is_kept_across_targets_and_a_failed_send_does_not_stop_the_rest():
    send = Recorder(fail_on="lost")
    relay, task = relay_events(send, window=HOUR, max_chars=10_000)
    relay.put(delta("first"))
    relay.put(delta("lost"), GROUP)
    relay.put({"type": events.ERROR, "code": "busy"}, DIRECT)
    relay.put(delta("after"))
    relay.close()
    await asyncio.wait_for(task, 10)
    assert send.sent == [
        (GROUP, delta("first")),
        (DIRECT, {"type": events.ERROR, "code": "busy"}),
        (GROUP, delta("after")),
    ]
