"""Websockets through the full ASGI application (origin check → tenant middleware → router →
PingConsumer), with committed sessions and keys, since the consumer reads them on the
``database_sync_to_async`` thread."""

from __future__ import annotations

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings

from apps.core.websocket import CLOSE_TENANT_SUSPENDED, CLOSE_UNAUTHENTICATED, CLOSE_UNKNOWN_TENANT, tenant_group_name
from config.asgi import application


def communicator(
    host: str,
    *,
    cookie: str | None = None,
    api_key: str | None = None,
    origin: str | None = None,
    other_cookies: str = "",
):
    headers = [(b"host", host.encode()), (b"origin", (origin or f"http://{host}").encode())]
    if cookie is not None:
        headers.append((b"cookie", f"{other_cookies}{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    if api_key is not None:
        headers.append((b"x-api-key", api_key.encode()))
    return WebsocketCommunicator(application, "/ws/ping/", headers=headers)


async def refused(comm) -> int:
    connected, code = await comm.connect()
    assert not connected
    await comm.disconnect()  # the client goes away; the application must then finish
    return code


@pytest.fixture
def acme_cookie(session_cookie_for) -> str:
    return session_cookie_for("acme", "agent")


@pytest.fixture
def globex_cookie(session_cookie_for) -> str:
    return session_cookie_for("globex", "agent")


@pytest.fixture
def initech_cookie(session_cookie_for) -> str:
    return session_cookie_for("initech", "agent")


async def test_acme_session_gets_pong_from_acme(acme_cookie):
    comm = communicator("acme.localhost", cookie=acme_cookie)
    connected, _ = await comm.connect()
    assert connected
    try:
        await comm.send_json_to({"hello": 1})
        reply = await comm.receive_json_from()
    finally:
        await comm.disconnect()

    assert reply == {"type": "pong", "tenant": "acme", "user": "agent@acme.test", "echo": {"hello": 1}}


@pytest.mark.parametrize(
    "other_cookies",
    ["csrftoken=abc; ", "theme=dark mode; ", 'prefs={"a": 1}; ', 'quoted="unterminated; '],
)
async def test_session_cookie_is_found_among_other_cookies(acme_cookie, other_cookies):
    """Browsers send every cookie of the domain, some of which the stdlib's SimpleCookie
    rejects; the session must still be read (as Django does for HTTP)."""
    comm = communicator("acme.localhost", cookie=acme_cookie, other_cookies=other_cookies)
    connected, code = await comm.connect()
    await comm.disconnect()

    assert connected, code


async def test_acme_session_on_globex_is_anonymous(acme_cookie):
    assert await refused(communicator("globex.localhost", cookie=acme_cookie)) == CLOSE_UNAUTHENTICATED


async def test_no_cookie_is_refused(committed_db):
    assert await refused(communicator("acme.localhost")) == CLOSE_UNAUTHENTICATED


async def test_unknown_session_key_is_refused(committed_db):
    assert await refused(communicator("acme.localhost", cookie="x" * 32)) == CLOSE_UNAUTHENTICATED


async def test_unknown_tenant_host_is_refused(acme_cookie):
    assert await refused(communicator("nowhere.localhost", cookie=acme_cookie)) == CLOSE_UNKNOWN_TENANT


async def test_host_outside_allowed_hosts_is_refused_by_origin_check(acme_cookie):
    await refused(communicator("evil.example.com", cookie=acme_cookie))


async def test_foreign_origin_is_refused(acme_cookie):
    await refused(communicator("acme.localhost", cookie=acme_cookie, origin="http://evil.example.com"))


async def test_suspended_tenant_is_refused(initech_cookie):
    """A session that really exists in initech's schema is still refused."""
    assert await refused(communicator("initech.localhost", cookie=initech_cookie)) == CLOSE_TENANT_SUSPENDED


async def test_api_key_header_is_accepted(acme_api_key):
    comm = communicator("acme.localhost", api_key=acme_api_key)
    connected, _ = await comm.connect()
    assert connected
    try:
        await comm.send_json_to({})
        reply = await comm.receive_json_from()
    finally:
        await comm.disconnect()

    assert reply["type"] == "pong"
    assert reply["tenant"] == "acme"
    assert reply["user"].startswith("api_key:ws-test")


async def test_acme_api_key_is_unknown_on_globex(acme_api_key):
    assert await refused(communicator("globex.localhost", api_key=acme_api_key)) == CLOSE_UNAUTHENTICATED


async def test_invalid_api_key_is_refused(committed_db):
    comm = communicator("acme.localhost", api_key="zk_deadbeef_wrong")
    assert await refused(comm) == CLOSE_UNAUTHENTICATED


async def test_broadcast_reaches_only_its_tenant(acme_cookie, globex_cookie):
    acme_socket = communicator("acme.localhost", cookie=acme_cookie)
    globex_socket = communicator("globex.localhost", cookie=globex_cookie)
    assert (await acme_socket.connect())[0]
    assert (await globex_socket.connect())[0]
    try:
        await get_channel_layer().group_send(
            tenant_group_name("acme", "ping"), {"type": "broadcast", "payload": {"n": 42}}
        )

        assert await acme_socket.receive_json_from(timeout=3) == {"type": "broadcast", "payload": {"n": 42}}
        assert await globex_socket.receive_nothing(timeout=0.5)

        # and the other way round
        await get_channel_layer().group_send(
            tenant_group_name("globex", "ping"), {"type": "broadcast", "payload": {"n": 7}}
        )
        assert await globex_socket.receive_json_from(timeout=3) == {"type": "broadcast", "payload": {"n": 7}}
        assert await acme_socket.receive_nothing(timeout=0.5)
    finally:
        await acme_socket.disconnect()
        await globex_socket.disconnect()
