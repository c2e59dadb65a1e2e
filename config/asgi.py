"""ASGI entry point: HTTP through Django (django-tenants resolves the tenant per request),
websockets through the tenant-aware middleware and the routing below."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from apps.chat.consumers import ChatConsumer  # noqa: E402
from apps.core.consumers import PingConsumer  # noqa: E402
from apps.core.websocket import TenantWebsocketMiddleware  # noqa: E402
from apps.knowledge.consumers import DocumentProgressConsumer  # noqa: E402

websocket_urlpatterns = [
    path("ws/ping/", PingConsumer.as_asgi()),
    path("ws/documents/", DocumentProgressConsumer.as_asgi()),
    path("ws/chat/<uuid:conversation_id>/", ChatConsumer.as_asgi()),
]

if settings.MODEL_WARMUP:
    from apps.core.warmup import warmup_in_background  # noqa: E402

    warmup_in_background()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(TenantWebsocketMiddleware(URLRouter(websocket_urlpatterns))),
    }
)
