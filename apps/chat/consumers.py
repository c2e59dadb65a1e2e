"""``ws/chat/<conversation_id>/``: ask questions and watch answers stream. Event protocol:
apps/chat/events.py. Every tab on a conversation joins its group, so a second agent sees the
same stream live."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django_tenants.utils import tenant_context

from apps.chat import events
from apps.chat.streaming import DIRECT, relay_events
from apps.core.exceptions import ApplicationError, NotFound, PermissionDeniedError
from apps.core.websocket import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED, tenant_group_name

logger = logging.getLogger(__name__)

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def answer_executor() -> ThreadPoolExecutor:
    """The threads answers run on, ``CHAT_ANSWER_THREADS`` of them per server process.

    An answer holds its thread while it waits for the database, retrieval and above all the
    model's stream (seconds): answers beyond this many wait for a thread. The event loop's
    default executor (daphne: CPUs + 4 threads unless ASGI_THREADS) was far too small for
    that and is shared with everything else that runs sync code."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=settings.CHAT_ANSWER_THREADS, thread_name_prefix="chat-answer")
        return _executor


def answer_connection_release() -> None:
    """At the start and end of an answer, on its answer thread: keep the thread's database
    connection for its next answer (``CHAT_DB_CONN_MAX_AGE`` seconds from when it was opened,
    checked with a ping before reuse); close it when it is broken, left in a transaction, or
    older than that. Opening a PostgreSQL connection took a good part of the time before the
    first token, more under load.

    Only here, not with Django's CONN_MAX_AGE: under ASGI every HTTP request runs on a thread
    of its own, which dies with its connection still open (Django ticket #33497), so that
    setting stays 0 for the web server. These threads live as long as the process and are
    ``CHAT_ANSWER_THREADS`` at most per process: so are the connections they keep."""
    from django.db import connection

    max_age = settings.CHAT_DB_CONN_MAX_AGE
    raw = connection.connection
    if raw is not None and max_age > 0 and getattr(connection, "_kept_for_answers", None) is not raw:
        connection._kept_for_answers = raw  # opened during this answer: keep it from now on
        connection.close_at = time.monotonic() + max_age
        connection.health_check_enabled = True
    connection.close_if_unusable_or_obsolete()


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.conversation_id = str(self.scope["url_route"]["kwargs"]["conversation_id"])
        if not await database_sync_to_async(self._may_open)(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.group = tenant_group_name(self.scope["schema_name"], "conv", self.conversation_id)
        self.answering: asyncio.Future | None = None
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    def _may_open(self, user) -> bool:
        from apps.accounts.permissions import user_has_permission
        from apps.chat.selectors import conversation_get, conversation_may_access

        with tenant_context(self.scope["tenant"]):
            if not (
                user_has_permission(user, "conversations:create") or user_has_permission(user, "conversations:read")
            ):
                return False
            conversation = conversation_get(conversation_id=self.conversation_id)
            return conversation is not None and conversation_may_access(actor=user, conversation=conversation)

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if getattr(self, "answering", None) is not None and not self.answering.done():
            # The asker left mid-answer: the answer still finishes (other tabs see it, and it
            # is saved). asyncio.wait, unlike await, leaves it running if this is cancelled.
            await asyncio.wait({self.answering})

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        # A frame that is not JSON text is a bad event, not a reason to drop the connection.
        try:
            content = json.loads(text_data) if text_data else None
        except ValueError:
            content = None
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict) or content.get("type") != "question":
            await self.send_json({"type": events.ERROR, "code": "invalid_event", "message": "Send {type: question}."})
            return
        if self.answering is not None and not self.answering.done():
            await self.send_json(
                {"type": events.ERROR, "code": "busy", "message": "Wait for the current answer to finish."}
            )
            return
        # Not awaited here: channels hands a consumer one message at a time, so awaiting the
        # answer would hold back this socket's own stream (the group events) until the end
        # and queue a second question instead of refusing it.
        self.answering = asyncio.ensure_future(
            self._answer_and_relay(str(content.get("content", "")), content.get("client_id"))
        )

    async def _answer_and_relay(self, question: str, client_id) -> None:
        """The answer's blocking work (database, retrieval, the model's stream) runs on the
        answer thread pool (``answer_executor``), off the shared database thread: an answer
        may stream for seconds and must not block other sockets' database calls. Its events
        go to the event loop without waiting (``EventRelay``), which sends them in order,
        merging deltas. Done when the last event has been handed to the channel layer."""
        relay, relaying = relay_events(
            self._relay_send,
            window=settings.CHAT_STREAM_FLUSH_MS / 1000,
            max_chars=settings.CHAT_STREAM_FLUSH_CHARS,
        )
        try:
            await sync_to_async(self._answer, thread_sensitive=False, executor=answer_executor())(
                question, client_id, relay.put
            )
        finally:
            relay.close()
            await relaying

    async def _relay_send(self, target: str, event: dict) -> None:
        message = {"type": "chat.event", "event": event}
        if target == DIRECT:
            await self.channel_layer.send(self.channel_name, message)
        else:
            await self.channel_layer.group_send(self.group, message)

    def _answer(self, question: str, client_id, put) -> None:
        from apps.accounts.permissions import user_has_permission
        from apps.chat.selectors import conversation_get
        from apps.chat.services import conversation_ask

        def emit(event: dict) -> None:
            if event["type"] == events.MESSAGE_CREATED and client_id:
                event = {**event, "client_id": client_id}
            put(event)

        user = self.scope["user"]
        answer_connection_release()
        try:
            with tenant_context(self.scope["tenant"]):
                if not user_has_permission(user, "conversations:create"):
                    raise PermissionDeniedError("You may not ask here.")  # to the asker only, not the group
                conversation = conversation_get(conversation_id=self.conversation_id)
                if conversation is None:  # deleted since the socket opened
                    raise NotFound("Conversation not found.", code="conversation_not_found")
                conversation_ask(conversation=conversation, actor=user, question=question, emit=emit)
        except ApplicationError as exc:
            put({"type": events.ERROR, "code": exc.code, "message": exc.message, "message_id": None}, DIRECT)
        except Exception:
            logger.exception("Answering failed in conversation %s", self.conversation_id)
            put(
                {"type": events.ERROR, "code": "internal_error", "message": "The answer failed.", "message_id": None},
                DIRECT,
            )
        finally:
            answer_connection_release()

    async def chat_event(self, message):
        await self.send_json(message["event"])
