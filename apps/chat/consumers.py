"""``ws/chat/<conversation_id>/``: ask questions and watch answers stream. Event protocol:
apps/chat/events.py. Every tab on a conversation joins its group, so a second agent sees the
same stream live."""

from __future__ import annotations

import asyncio
import json
import logging

from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db import close_old_connections
from django_tenants.utils import tenant_context

from apps.chat import events
from apps.core.exceptions import ApplicationError, NotFound, PermissionDeniedError
from apps.core.websocket import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED, tenant_group_name

logger = logging.getLogger(__name__)


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
        # and queue a second question instead of refusing it. Off the shared DB thread: an
        # answer may stream for seconds and must not block other sockets' database calls;
        # the worker thread sets the tenant itself.
        self.answering = asyncio.ensure_future(
            sync_to_async(self._answer, thread_sensitive=False)(
                str(content.get("content", "")), content.get("client_id")
            )
        )

    def _answer(self, question: str, client_id) -> None:
        from apps.accounts.permissions import user_has_permission
        from apps.chat.selectors import conversation_get
        from apps.chat.services import conversation_ask

        layer_send = async_to_sync(self.channel_layer.group_send)

        def emit(event: dict) -> None:
            if event["type"] == events.MESSAGE_CREATED and client_id:
                event = {**event, "client_id": client_id}
            layer_send(self.group, {"type": "chat.event", "event": event})

        user = self.scope["user"]
        try:
            with tenant_context(self.scope["tenant"]):
                if not user_has_permission(user, "conversations:create"):
                    raise PermissionDeniedError("You may not ask here.")  # to the asker only, not the group
                conversation = conversation_get(conversation_id=self.conversation_id)
                if conversation is None:  # deleted since the socket opened
                    raise NotFound("Conversation not found.", code="conversation_not_found")
                conversation_ask(conversation=conversation, actor=user, question=question, emit=emit)
        except ApplicationError as exc:
            self._send_direct({"type": events.ERROR, "code": exc.code, "message": exc.message, "message_id": None})
        except Exception:
            logger.exception("Answering failed in conversation %s", self.conversation_id)
            self._send_direct(
                {"type": events.ERROR, "code": "internal_error", "message": "The answer failed.", "message_id": None}
            )
        finally:
            close_old_connections()

    def _send_direct(self, event: dict) -> None:
        async_to_sync(self.channel_layer.send)(self.channel_name, {"type": "chat.event", "event": event})

    async def chat_event(self, message):
        await self.send_json(message["event"])
