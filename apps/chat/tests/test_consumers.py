"""``ws/chat/<conversation_id>/`` through the full ASGI application (origin check → tenant
middleware → ChatConsumer) with real sessions, Redis channel layer, PostgreSQL and Milvus
Lite. The consumer reads and writes on other threads, so everything here is committed
(``committed``) and removed afterwards."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections
from django_tenants.utils import schema_context

from apps.chat.extractive import stream_grouped
from apps.chat.models import Conversation, Message, MessageSource
from apps.chat.tests.conftest import cited_passages, event_types
from apps.chat.tests.test_services import UNKNOWN, refund_question, warranty_question
from apps.core.websocket import CLOSE_FORBIDDEN, CLOSE_TENANT_SUSPENDED, CLOSE_UNAUTHENTICATED
from config.asgi import application

STREAM = ["message.created", "answer.delta", "answer.sources", "answer.completed"]
TIMEOUT = 30  # the first answer of a run may load the embedding model


def socket(host: str, conversation_id, *, cookie: str | None = None, api_key: str | None = None):
    headers = [(b"host", host.encode()), (b"origin", f"http://{host}".encode())]
    if cookie is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    if api_key is not None:
        headers.append((b"x-api-key", api_key.encode()))
    return WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers=headers)


async def connected(comm) -> WebsocketCommunicator:
    ok, code = await comm.connect(timeout=TIMEOUT)
    assert ok, code
    return comm


async def refused(comm) -> int:
    ok, code = await comm.connect(timeout=TIMEOUT)
    assert not ok
    await comm.disconnect()
    return code


async def answer_events(comm) -> list[dict]:
    """Events up to and including ``answer.completed`` or ``error``."""
    events = []
    while True:
        event = await comm.receive_json_from(timeout=TIMEOUT)
        events.append(event)
        if event["type"] in ("answer.completed", "error"):
            return events


@database_sync_to_async
def saved(schema: str, conversation_id) -> tuple[Conversation, list[Message]]:
    with schema_context(schema):
        return (
            Conversation.objects.get(pk=conversation_id),
            list(Message.objects.filter(conversation_id=conversation_id).order_by("created_at")),
        )


@database_sync_to_async
def source_count(schema: str, message_id) -> int:
    with schema_context(schema):
        return MessageSource.objects.filter(message_id=message_id).count()


@pytest.fixture(autouse=True)
async def _close_worker_thread_connections():
    """The consumers' database calls run on asgiref's shared worker thread, where a
    connection can outlive the call (seen after a refused connect): close it, or the test
    database cannot be dropped at the end of a run that ends here."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def agent_cookie(session_cookie_for) -> str:
    return session_cookie_for("acme", "agent")


@pytest.fixture
def kb(committed_knowledge):
    return committed_knowledge("acme")


@pytest.fixture
def conversation(committed_conversation):
    """A committed acme conversation started by the agent."""
    return committed_conversation("acme")


def db(factory):
    """A (synchronous) fixture factory, callable from a test's event loop."""
    return database_sync_to_async(factory)


# --------------------------------------------------------------------------------------
# Asking and watching
# --------------------------------------------------------------------------------------
async def test_agent_asks_and_receives_the_stream_in_order(kb, conversation, agent_cookie):
    comm = await connected(socket("acme.localhost", conversation.pk, cookie=agent_cookie))
    try:
        await comm.send_json_to({"type": "question", "content": warranty_question(kb), "client_id": "tab-1:7"})
        events = await answer_events(comm)
    finally:
        await comm.disconnect()

    assert event_types(events) == STREAM
    deltas = [e for e in events if e["type"] == "answer.delta"]
    created, sources, completed = events[0], events[-2], events[-1]
    assert created["client_id"] == "tab-1:7"
    assert created["message"]["role"] == "user" and created["message"]["content"] == warranty_question(kb)
    answer = completed["message"]
    # Deltas are merged on the way (EventRelay), but never the first one, which goes out alone.
    assert len(deltas) >= 2
    assert deltas[0]["delta"] == next(stream_grouped(answer["content"]))
    assert "".join(d["delta"] for d in deltas).strip() == answer["content"]
    assert sources["message_id"] == answer["id"] and sources["sources"]
    for text, number in cited_passages(answer["content"]):
        assert text in next(s for s in sources["sources"] if s["number"] == number)["quote"]
    row, messages = await saved("acme", conversation.pk)
    assert row.message_count == 2 and [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].content == answer["content"]
    assert await source_count("acme", answer["id"]) == len(sources["sources"])


@pytest.fixture
def admin_cookie(session_cookie_for) -> str:
    return session_cookie_for("acme", "tenant_admin")


async def test_a_second_tab_receives_the_same_stream(kb, conversation, agent_cookie, admin_cookie):
    asker = await connected(socket("acme.localhost", conversation.pk, cookie=agent_cookie))
    other_tab = await connected(socket("acme.localhost", conversation.pk, cookie=agent_cookie))
    # And another person (the tenant admin sees the whole queue too) watching.
    admin = await connected(socket("acme.localhost", conversation.pk, cookie=admin_cookie))
    watchers = (other_tab, admin)
    try:
        await asker.send_json_to({"type": "question", "content": refund_question(kb)})
        asked = await answer_events(asker)
        watched = [await answer_events(watcher) for watcher in watchers]
        for watcher in watchers:
            assert await watcher.receive_nothing(timeout=0.3)
    finally:
        for comm in (asker, *watchers):
            await comm.disconnect()

    assert event_types(asked) == STREAM
    assert watched == [asked, asked]


async def test_a_long_answer_reaches_every_tab_whole(kb, conversation, agent_cookie, admin_cookie, openai_provider):
    pieces = [f"w{i} " for i in range(300)]
    openai_provider().reply = [*pieces, "[1]."]
    comms = [
        await connected(socket("acme.localhost", conversation.pk, cookie=cookie))
        for cookie in (agent_cookie, agent_cookie, admin_cookie)
    ]
    try:
        await comms[0].send_json_to({"type": "question", "content": warranty_question(kb)})
        received = [await answer_events(comm) for comm in comms]
    finally:
        for comm in comms:
            await comm.disconnect()

    for events in received:
        assert event_types(events) == STREAM
        deltas = [e["delta"] for e in events if e["type"] == "answer.delta"]
        assert "".join(deltas) == "".join(pieces) + "[1]."  # merged, character for character
        assert deltas[0] == pieces[0] and len(deltas) < len(pieces)
        assert events[-1]["message"]["content"] == "".join(pieces) + "[1]."
    assert received[1] == received[2] == received[0]  # every tab saw the same events


async def test_the_channel_layer_holds_a_long_answer_for_many_sockets(committed):
    """Every socket of a server process shares one queue in Redis, and group_send drops what
    does not fit without a word (channels_redis' default capacity, 100, lost the ends of
    answers streaming to a few dozen sockets: they waited for answer.completed forever).
    Here: 300 events for 5 sockets of one process, queued before any is read."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    group = f"t.acme.conv.{uuid.uuid4()}"
    channels = [await layer.new_channel() for _ in range(5)]
    for channel in channels:
        await layer.group_add(group, channel)
    try:
        for number in range(300):
            await layer.group_send(group, {"type": "chat.event", "event": {"n": number}})
        for channel in channels:
            received = [(await asyncio.wait_for(layer.receive(channel), 5))["event"]["n"] for _ in range(300)]
            assert received == list(range(300))
    finally:
        for channel in channels:
            await layer.group_discard(group, channel)


async def test_unknown_topic_over_the_socket(conversation, agent_cookie):
    comm = await connected(socket("acme.localhost", conversation.pk, cookie=agent_cookie))
    try:
        await comm.send_json_to({"type": "question", "content": UNKNOWN["zh"]})
        events = await answer_events(comm)
    finally:
        await comm.disconnect()
    assert event_types(events) == STREAM
    assert events[-1]["needs_human"] is True and events[-2]["sources"] == []
    row, _ = await saved("acme", conversation.pk)
    assert (row.needs_human, row.priority) == (True, "high")


async def test_api_key_client_may_ask(conversation, committed_api_key):
    key = await db(committed_api_key)("acme", ["agent"])
    comm = await connected(socket("acme.localhost", conversation.pk, api_key=key))
    try:
        await comm.send_json_to({"type": "question", "content": UNKNOWN["en"]})
        assert event_types(await answer_events(comm)) == STREAM
    finally:
        await comm.disconnect()


async def test_an_idle_socket_stays_open(conversation, agent_cookie):
    """A consumer waits for channel messages 5 s at a time (BZPOPMIN); the Redis client's read
    timeout must outlast that wait, or an idle tab is dropped with 1011 (CHANNEL_LAYERS)."""
    comm = await connected(socket("acme.localhost", conversation.pk, cookie=agent_cookie))
    try:
        await asyncio.sleep(11)  # two full waits
        await comm.send_json_to({"type": "ping"})
        assert (await comm.receive_json_from(timeout=TIMEOUT))["code"] == "invalid_event"
    finally:
        await comm.disconnect()


# --------------------------------------------------------------------------------------
# Bad events and refused questions: an error event, the socket stays open
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "frame",
    [{"type": "answer"}, {"content": "no type"}, ["question"], "just text", "{not json", 42],
)
async def test_bad_event_is_an_invalid_event_error(conversation, agent_cookie, frame):
    comm = await connected(socket("acme.localhost", conversation.pk, cookie=agent_cookie))
    try:
        if isinstance(frame, str):
            await comm.send_to(text_data=frame)
        else:
            await comm.send_json_to(frame)
        error = await comm.receive_json_from(timeout=TIMEOUT)
        assert (error["type"], error["code"]) == ("error", "invalid_event")
        # Still open and usable.
        await comm.send_json_to({"type": "question", "content": ""})
        assert (await comm.receive_json_from(timeout=TIMEOUT))["code"] == "empty_question"
    finally:
        await comm.disconnect()
    _, messages = await saved("acme", conversation.pk)
    assert messages == []


@pytest.mark.parametrize(("content", "code"), [("   ", "empty_question"), ("x" * 4001, "question_too_long")])
async def test_invalid_question_is_an_error(conversation, agent_cookie, content, code):
    comm = await connected(socket("acme.localhost", conversation.pk, cookie=agent_cookie))
    try:
        await comm.send_json_to({"type": "question", "content": content})
        error = await comm.receive_json_from(timeout=TIMEOUT)
    finally:
        await comm.disconnect()
    assert (error["type"], error["code"], error["message_id"]) == ("error", code, None)


@pytest.fixture
def closed_conversation(conversation):
    from apps.accounts.models import User
    from apps.chat.services import conversation_transition

    with schema_context("acme"):
        agent = User.objects.get(email="agent@acme.test")
        return conversation_transition(conversation=conversation, actor=agent, action="close")


async def test_question_in_a_closed_conversation_is_an_error(closed_conversation, agent_cookie):
    conversation = closed_conversation
    comm = await connected(socket("acme.localhost", conversation.pk, cookie=agent_cookie))
    try:
        await comm.send_json_to({"type": "question", "content": "Is it still covered?"})
        error = await comm.receive_json_from(timeout=TIMEOUT)
    finally:
        await comm.disconnect()
    assert error["code"] == "conversation_not_active"
    row, messages = await saved("acme", conversation.pk)
    assert (row.status, row.message_count, messages) == ("closed", 0, [])


async def test_reader_without_create_permission_may_watch_but_not_ask(
    committed_conversation, session_cookie_for, agent_cookie
):
    conversation = await db(committed_conversation)("acme", "knowledge_manager")
    cookie = await db(session_cookie_for)("acme", "knowledge_manager")
    reader = await connected(socket("acme.localhost", conversation.pk, cookie=cookie))
    agent = await connected(socket("acme.localhost", conversation.pk, cookie=agent_cookie))
    try:
        await reader.send_json_to({"type": "question", "content": "Hello?"})
        error = await reader.receive_json_from(timeout=TIMEOUT)
        assert await agent.receive_nothing(timeout=0.5)  # the refusal is the reader's own business
    finally:
        await reader.disconnect()
        await agent.disconnect()
    assert (error["type"], error["code"], error["message_id"]) == ("error", "permission_denied", None)
    _, messages = await saved("acme", conversation.pk)
    assert messages == []


async def test_second_question_while_answering_is_busy_and_the_asker_streams_live(
    kb, conversation, agent_cookie, openai_provider
):
    """The model holds its answer after the first piece: the asker must already have that
    piece (the stream reaches the asking socket live, not at the end), and a second question
    meanwhile is refused as busy."""
    server = openai_provider()
    gate = threading.Event()

    def held(h):
        h.start()
        h.delta(f"The Vellum {kb.token} printer comes with a two-year limited warranty")
        gate.wait(TIMEOUT)
        h.delta(" [1].")
        h.finish_stream()

    server.plan = [held]
    comm = await connected(socket("acme.localhost", conversation.pk, cookie=agent_cookie))
    try:
        await comm.send_json_to({"type": "question", "content": warranty_question(kb)})
        assert (await comm.receive_json_from(timeout=TIMEOUT))["type"] == "message.created"
        first = await comm.receive_json_from(timeout=10)  # while the model still holds the rest
        assert first == {
            "type": "answer.delta",
            "message_id": None,
            "delta": f"The Vellum {kb.token} printer comes with a two-year limited warranty",
        }
        await comm.send_json_to({"type": "question", "content": "And the refund?"})
        busy = await comm.receive_json_from(timeout=TIMEOUT)
        assert (busy["type"], busy["code"]) == ("error", "busy")
        gate.set()
        rest = await answer_events(comm)
    finally:
        gate.set()
        await comm.disconnect()

    assert event_types(rest) == ["answer.delta", "answer.sources", "answer.completed"]
    assert (
        rest[-1]["message"]["content"] == f"The Vellum {kb.token} printer comes with a two-year limited warranty [1]."
    )
    _, messages = await saved("acme", conversation.pk)
    assert [m.content for m in messages if m.role == "user"] == [warranty_question(kb)]  # not the busy one


# --------------------------------------------------------------------------------------
# Refused connections
# --------------------------------------------------------------------------------------
async def test_anonymous_is_refused(conversation):
    assert await refused(socket("acme.localhost", conversation.pk)) == CLOSE_UNAUTHENTICATED
    assert await refused(socket("acme.localhost", conversation.pk, cookie="x" * 32)) == CLOSE_UNAUTHENTICATED


async def test_globex_user_cannot_open_an_acme_conversation(conversation, session_cookie_for):
    globex_cookie = await db(session_cookie_for)("globex", "agent")
    # On globex's host the acme conversation does not exist ...
    assert await refused(socket("globex.localhost", conversation.pk, cookie=globex_cookie)) == CLOSE_FORBIDDEN
    # ... and on acme's host the globex session is nobody.
    assert await refused(socket("acme.localhost", conversation.pk, cookie=globex_cookie)) == CLOSE_UNAUTHENTICATED


async def test_globex_api_key_cannot_open_an_acme_conversation(conversation, committed_api_key):
    key = await db(committed_api_key)("globex", ["agent"])
    assert await refused(socket("globex.localhost", conversation.pk, api_key=key)) == CLOSE_FORBIDDEN
    assert await refused(socket("acme.localhost", conversation.pk, api_key=key)) == CLOSE_UNAUTHENTICATED
    row, messages = await saved("acme", conversation.pk)
    assert (row.message_count, messages) == (0, [])


async def test_user_without_conversation_permissions_is_refused(conversation, committed_user, session_cookie_for):
    nobody = await db(committed_user)("acme", [])  # signed in, but no role at all
    cookie = await db(session_cookie_for)("acme", email=nobody.email)
    assert await refused(socket("acme.localhost", conversation.pk, cookie=cookie)) == CLOSE_FORBIDDEN


async def test_plain_user_cannot_open_someone_elses_conversation(
    conversation, committed_conversation, session_cookie_for
):
    own = await db(committed_conversation)("acme", "user")
    cookie = await db(session_cookie_for)("acme", "user")
    assert await refused(socket("acme.localhost", conversation.pk, cookie=cookie)) == CLOSE_FORBIDDEN
    comm = await connected(socket("acme.localhost", own.pk, cookie=cookie))
    await comm.disconnect()


async def test_unknown_conversation_is_refused(committed, agent_cookie):
    assert await refused(socket("acme.localhost", uuid.uuid4(), cookie=agent_cookie)) == CLOSE_FORBIDDEN


@pytest.fixture
def initech_conversation(committed):
    """A committed conversation in the suspended tenant (``committed`` covers acme and globex only)."""
    from apps.accounts.models import User
    from apps.audit.models import AuditLog
    from apps.chat.services import conversation_create

    with schema_context("initech"):
        conversation = conversation_create(actor=User.objects.get(email="agent@initech.test"))
    yield conversation
    with schema_context("initech"):
        AuditLog.objects.filter(resource_id=str(conversation.pk)).delete()
        Conversation.objects.filter(pk=conversation.pk).delete()


@pytest.fixture
def initech_cookie(session_cookie_for) -> str:
    return session_cookie_for("initech", "agent")


async def test_suspended_tenant_is_refused(initech_conversation, initech_cookie):
    """A session that really exists in initech's schema, on a conversation that exists there."""
    code = await refused(socket("initech.localhost", initech_conversation.pk, cookie=initech_cookie))
    assert code == CLOSE_TENANT_SUSPENDED


# --------------------------------------------------------------------------------------
# The answer threads' database connections
# --------------------------------------------------------------------------------------
def on_a_thread(work):
    """``work()`` on a thread of its own (as on an answer thread), its connection closed after."""
    from django.db import connection

    out: dict = {}

    def run():
        try:
            out["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            out["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(TIMEOUT)
    if "error" in out:
        raise out["error"]
    return out["result"]


def backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def test_an_answer_thread_keeps_a_healthy_connection_for_its_next_answer(committed_db, settings):
    from django.db import connection

    from apps.chat.consumers import answer_connection_release

    settings.CHAT_DB_CONN_MAX_AGE = 300

    def answers():
        answer_connection_release()  # start of the first answer: nothing open yet
        first = backend_pid()
        answer_connection_release()  # its end
        answer_connection_release()  # the next answer's start
        second = backend_pid()
        connection.connection.close()  # the server went away meanwhile
        answer_connection_release()
        answer_connection_release()
        third = backend_pid()  # the ping before reuse found it dead: a new connection
        return first, second, third

    first, second, third = on_a_thread(answers)
    assert first == second != third


def test_without_a_max_age_the_connection_is_closed_after_each_answer(committed_db, settings):
    from django.db import connection

    from apps.chat.consumers import answer_connection_release

    settings.CHAT_DB_CONN_MAX_AGE = 0

    def answer():
        backend_pid()
        answer_connection_release()
        return connection.connection

    assert on_a_thread(answer) is None
