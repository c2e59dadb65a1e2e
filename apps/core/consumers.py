from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.core.websocket import CLOSE_UNAUTHENTICATED, tenant_group_name


class PingConsumer(AsyncJsonWebsocketConsumer):
    """``ws/ping/``: the smallest tenant-aware consumer. Refuses anonymous users; answers
    ``{"type": "pong"}`` with the tenant and user it resolved, and joins the tenant's group
    so a broadcast to ``t.<schema>.ping`` reaches every socket of that tenant only."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.group = tenant_group_name(self.scope["schema_name"], "ping")
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        await self.send_json(
            {"type": "pong", "tenant": self.scope["schema_name"], "user": str(self.scope["user"]), "echo": content}
        )

    async def broadcast(self, event):
        await self.send_json({"type": "broadcast", "payload": event["payload"]})
