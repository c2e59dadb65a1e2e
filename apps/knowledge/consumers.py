from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django_tenants.utils import tenant_context

from apps.core.websocket import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED, tenant_group_name


class DocumentProgressConsumer(AsyncJsonWebsocketConsumer):
    """``ws/documents/``: live processing progress for the tenant's documents.

    Events (server → client): ``{"type": "document.progress", "document": {"id", "status",
    "progress", "error_code", "error_message"}}``. Needs ``docs:read``; the group is the
    tenant's own (``t.<schema>.documents``)."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(self._allowed)(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.group = tenant_group_name(self.scope["schema_name"], "documents")
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    def _allowed(self, user) -> bool:
        from apps.accounts.permissions import user_has_permission

        with tenant_context(self.scope["tenant"]):
            return user_has_permission(user, "docs:read")

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def document_progress(self, event):
        await self.send_json({"type": "document.progress", "document": event["document"]})
