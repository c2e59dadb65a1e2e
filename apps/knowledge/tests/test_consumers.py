"""``ws/documents/`` through the full ASGI application (origin check → tenant middleware →
router → DocumentProgressConsumer) with committed sessions and keys, since the consumer
reads them on the ``database_sync_to_async`` thread: a knowledge manager follows acme's
documents as they are processed; globex hears nothing of them; roles without ``docs:read``
and anonymous sockets are refused."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django_tenants.utils import schema_context

from apps.core.websocket import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from apps.knowledge import services
from apps.knowledge.models import Document
from apps.knowledge.tests.conftest import as_upload, doc
from config.asgi import application
from conftest import seed_email

EVENT_TIMEOUT = 30


def communicator(host: str, *, cookie: str | None = None, api_key: str | None = None) -> WebsocketCommunicator:
    headers = [(b"host", host.encode()), (b"origin", f"http://{host}".encode())]
    if cookie is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    if api_key is not None:
        headers.append((b"x-api-key", api_key.encode()))
    return WebsocketCommunicator(application, "/ws/documents/", headers=headers)


async def refused(comm: WebsocketCommunicator) -> int:
    connected, code = await comm.connect()
    assert not connected
    await comm.disconnect()
    return code


async def connected(comm: WebsocketCommunicator) -> WebsocketCommunicator:
    ok, code = await comm.connect()
    assert ok, code
    return comm


def push(schema: str, **fields) -> str:
    """Send one progress event for an (unsaved) document from ``schema``; returns its id."""
    document = Document(pk=uuid.uuid4(), status="processing", processing_progress=42, **fields)
    with schema_context(schema):
        services._progress_push(document)
    return str(document.pk)


@pytest.fixture(autouse=True)
def _private_channel_layer(settings) -> None:
    """Groups of this test's own (a fresh key prefix on the same Redis), so events from a
    concurrent test run on this machine cannot reach these sockets, and none of ours leak."""
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["prefix"] = f"test-{uuid.uuid4().hex[:12]}"
    settings.CHANNEL_LAYERS = layers  # channels drops its cached layer on setting_changed


@pytest.fixture
def warm_embedder() -> None:
    """Load the embedding model before any socket is open: loading it (seconds of CPU on a
    thread) would starve the event loop and time out the consumers' Redis reads."""
    from apps.knowledge.pipeline.embed import get_embedder

    get_embedder()


@pytest.fixture
def manager_cookie(session_cookie_for) -> str:
    return session_cookie_for("acme", "knowledge_manager")


@pytest.fixture
def globex_manager_cookie(session_cookie_for) -> str:
    return session_cookie_for("globex", "knowledge_manager")


@pytest.fixture
def acme_key(committed_db) -> Iterator:
    """``acme_key(roles)`` → a committed acme API key; deleted with its audit rows afterwards."""
    from apps.accounts.models import ApiKey
    from apps.accounts.services import api_key_create
    from apps.audit.models import AuditLog

    made = []

    def issue(roles: list[str]) -> str:
        with schema_context("acme"):
            issued = api_key_create(name="ws-docs-test", roles=roles, actor=None)
        made.append(issued.api_key.pk)
        return issued.key

    yield issue
    with schema_context("acme"):
        AuditLog.objects.filter(resource_type="api_key", resource_id__in=[str(pk) for pk in made]).delete()
        ApiKey.objects.filter(pk__in=made).delete()


async def test_a_knowledge_manager_receives_progress_events(manager_cookie):
    socket = await connected(communicator("acme.localhost", cookie=manager_cookie))
    try:
        document_id = await database_sync_to_async(push)("acme")
        event = await socket.receive_json_from(timeout=EVENT_TIMEOUT)
    finally:
        await socket.disconnect()

    assert event == {
        "type": "document.progress",
        "document": {"id": document_id, "status": "processing", "progress": 42, "error_code": "", "error_message": ""},
    }


async def test_processing_a_document_is_followed_live_and_only_in_acme(
    manager_cookie, globex_manager_cookie, committed_documents, celery_eager, warm_embedder
):
    acme_socket = await connected(communicator("acme.localhost", cookie=manager_cookie))
    globex_socket = await connected(communicator("globex.localhost", cookie=globex_manager_cookie))

    def upload_and_process() -> str:
        from apps.accounts.models import User

        with schema_context("acme"):
            manager = User.objects.get(email=seed_email("knowledge_manager", "acme"))
            # committed at once; the task runs on commit, eagerly, pushing progress as it goes
            result = services.document_upload(actor=manager, file=as_upload(doc("pdf/multi_page.pdf")))
            return str(result.document.pk)

    try:
        document_id = await database_sync_to_async(upload_and_process)()
        events = []
        while not events or events[-1]["status"] not in ("indexed", "failed"):
            events.append((await acme_socket.receive_json_from(timeout=EVENT_TIMEOUT))["document"])
        assert await globex_socket.receive_nothing(timeout=0.5)
    finally:
        await acme_socket.disconnect()
        await globex_socket.disconnect()

    assert {e["id"] for e in events} == {document_id}
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and len(progress) >= 2
    assert (events[-1]["status"], events[-1]["progress"]) == ("indexed", 100)
    assert all(e["status"] == "processing" for e in events[:-1])


async def test_globex_hears_nothing_of_acme_and_acme_nothing_of_globex(manager_cookie, globex_manager_cookie):
    acme_socket = await connected(communicator("acme.localhost", cookie=manager_cookie))
    globex_socket = await connected(communicator("globex.localhost", cookie=globex_manager_cookie))
    try:
        acme_id = await database_sync_to_async(push)("acme")
        assert (await acme_socket.receive_json_from(timeout=EVENT_TIMEOUT))["document"]["id"] == acme_id
        assert await globex_socket.receive_nothing(timeout=0.5)

        globex_id = await database_sync_to_async(push)("globex")
        assert (await globex_socket.receive_json_from(timeout=EVENT_TIMEOUT))["document"]["id"] == globex_id
        assert await acme_socket.receive_nothing(timeout=0.5)
    finally:
        await acme_socket.disconnect()
        await globex_socket.disconnect()


@pytest.mark.parametrize("role", ["agent", "user"])
async def test_roles_without_docs_read_are_refused(session_cookie_for, role):
    cookie = await database_sync_to_async(session_cookie_for)("acme", role)
    assert await refused(communicator("acme.localhost", cookie=cookie)) == CLOSE_FORBIDDEN


async def test_anonymous_is_refused(committed_db):
    assert await refused(communicator("acme.localhost")) == CLOSE_UNAUTHENTICATED


async def test_an_acme_session_on_globex_is_anonymous(manager_cookie):
    assert await refused(communicator("globex.localhost", cookie=manager_cookie)) == CLOSE_UNAUTHENTICATED


async def test_api_keys_follow_their_roles(acme_key):
    manager_key = await database_sync_to_async(acme_key)(["knowledge_manager"])
    agent_key = await database_sync_to_async(acme_key)(["agent"])

    assert await refused(communicator("acme.localhost", api_key=agent_key)) == CLOSE_FORBIDDEN
    socket = await connected(communicator("acme.localhost", api_key=manager_key))
    try:
        document_id = await database_sync_to_async(push)("acme", error_code="", error_message="")
        assert (await socket.receive_json_from(timeout=EVENT_TIMEOUT))["document"]["id"] == document_id
    finally:
        await socket.disconnect()
